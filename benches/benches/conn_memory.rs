//! User-space heap held per idle connection by the in-process engine: live bytes (requested
//! sizes, counted by a global allocator wrapper) before and after opening N idle WebSocket
//! connections, with the live allocations broken down by power-of-two size class. The client
//! side uses plain blocking sockets and holds no heap per connection beyond its `Vec` slot.
//!
//! `cargo bench -p ringcast-benches --bench conn_memory` (N = 2000; RINGCAST_BENCH_CONNS to change).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use ringcast_benches::{live_by_class, live_by_size, live_bytes, CountingAlloc};
use ringcast_engine::{Engine, RawConfig};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn open(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(
        b"GET /app/app-key?protocol=7&client=bench&version=1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .expect("write");
    // Read the 101 head and the connection_established frame (both small).
    let mut buf = [0u8; 1024];
    let mut got = 0;
    loop {
        let n = s.read(&mut buf[got..]).expect("read");
        assert!(n > 0, "closed during handshake");
        got += n;
        let text = &buf[..got];
        if let Some(end) = text.windows(4).position(|w| w == b"\r\n\r\n") {
            if text[end + 4..]
                .windows(22)
                .any(|w| w == b"connection_established")
            {
                return s;
            }
        }
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("RINGCAST_BENCH_CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let raw =
        RawConfig::from_toml("listen = \"127.0.0.1:0\"\nworkers = 2\nshutdown_grace_ms = 200\n")
            .expect("config");
    let e = Engine::bind(raw.resolve(2).expect("resolve"), None)
        .expect("bind")
        .start(None)
        .expect("start");
    let addr = e.local_addr();
    // Warm up: the first connections grow per-core tables; measure the steady-state increment.
    let mut warm: Vec<TcpStream> = (0..200).map(|_| open(addr)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut conns: Vec<TcpStream> = Vec::with_capacity(n);
    let b0 = live_bytes();
    let c0 = live_by_class();
    let s0 = live_by_size();
    for _ in 0..n {
        conns.push(open(addr));
    }
    std::thread::sleep(Duration::from_millis(500));
    let b1 = live_bytes();
    let c1 = live_by_class();
    let s1 = live_by_size();
    println!("conn_memory: {n} idle connections");
    println!(
        "  user-space heap per idle connection: {:.0} bytes (live, requested sizes; allocator overhead and kernel socket memory not included)",
        (b1 as f64 - b0 as f64) / n as f64
    );
    println!("  live allocations per connection by size class:");
    for (i, (a, b)) in c0.iter().zip(&c1).enumerate() {
        let d = *b as f64 - *a as f64;
        if d.abs() / n as f64 >= 0.05 {
            let lo = if i == 0 { 0 } else { (1u64 << (i - 1)) + 1 };
            println!(
                "    {:>6}..={:<6} bytes: {:.2}",
                lo,
                1u64 << i,
                d / n as f64
            );
        }
    }
    println!("  exact sizes of 256 bytes and more held per connection:");
    for (size, (a, b)) in s0.iter().zip(&s1).enumerate().skip(256) {
        let d = *b as f64 - *a as f64;
        if d / n as f64 >= 0.5 {
            println!("    {size:>6} bytes: {:.2}", d / n as f64);
        }
    }
    drop(conns);
    warm.clear();
    e.shutdown_and_join();
}
