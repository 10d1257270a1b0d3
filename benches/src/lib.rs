//! Support code for Ringcast's criterion benchmarks (`cargo bench -p ringcast-benches`).
//!
//! - [`CountingAlloc`]: a global allocator wrapper that counts allocations, installed by the
//!   bench binaries to report allocations per event.
//! - The in-memory fan-out bench calls the engine's own delivery loop through
//!   `ringcast_engine::bench_support::LocalFanout` (no copy of it lives here any more).
//! - [`client`]: blocking loopback WebSocket subscribers for end-to-end benches against an
//!   in-process engine.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counts every allocation and reallocation made through it.
pub struct CountingAlloc;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static LIVE_BYTES: AtomicU64 = AtomicU64::new(0);
/// Live allocations by size class: class `i` holds sizes in `(2^(i-1), 2^i]`.
static LIVE_BY_CLASS: [AtomicU64; 40] = [const { AtomicU64::new(0) }; 40];

fn class(size: usize) -> usize {
    (usize::BITS - size.saturating_sub(1).leading_zeros()).min(39) as usize
}

/// Live allocations by exact size, for sizes below 16 KiB.
static LIVE_BY_SIZE: [AtomicU64; 16384] = [const { AtomicU64::new(0) }; 16384];

fn track_alloc(size: usize) {
    if size < 16384 {
        LIVE_BY_SIZE[size].fetch_add(1, Relaxed);
    }
    ALLOCS.fetch_add(1, Relaxed);
    LIVE_BYTES.fetch_add(size as u64, Relaxed);
    LIVE_BY_CLASS[class(size)].fetch_add(1, Relaxed);
}

fn track_free(size: usize) {
    if size < 16384 {
        LIVE_BY_SIZE[size].fetch_sub(1, Relaxed);
    }
    LIVE_BYTES.fetch_sub(size as u64, Relaxed);
    LIVE_BY_CLASS[class(size)].fetch_sub(1, Relaxed);
}

/// Bytes currently allocated (requested sizes, all threads).
pub fn live_bytes() -> u64 {
    LIVE_BYTES.load(Relaxed)
}

/// Live allocation counts by exact size (index = size, below 16 KiB).
pub fn live_by_size() -> Vec<u64> {
    LIVE_BY_SIZE.iter().map(|c| c.load(Relaxed)).collect()
}

/// Live allocation counts per power-of-two size class (`(2^(i-1), 2^i]`).
pub fn live_by_class() -> Vec<u64> {
    LIVE_BY_CLASS.iter().map(|c| c.load(Relaxed)).collect()
}

// SAFETY: every method forwards to the system allocator unchanged; the counter has no effect on
// the memory handed out.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        track_alloc(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track_free(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        track_alloc(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        track_free(layout.size());
        track_alloc(new_size);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Allocations so far (all threads).
pub fn allocations() -> u64 {
    ALLOCS.load(Relaxed)
}

pub mod client {
    //! Blocking loopback WebSocket subscribers (no allocation per received frame: frames are
    //! scanned in place by the load generator's `FrameReader`).

    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;

    use ringcast_loadtest::wsframe::{Frame, FrameReader};

    pub struct Sub {
        pub stream: TcpStream,
        reader: FrameReader,
        pub socket_id: String,
        buf: Box<[u8]>,
    }

    impl Sub {
        /// Connects, upgrades, waits for `connection_established`.
        pub fn connect(addr: SocketAddr, key: &str) -> std::io::Result<Sub> {
            let mut stream = TcpStream::connect(addr)?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            write!(
                stream,
                "GET /app/{key}?protocol=7&client=bench&version=1 HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )?;
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if stream.read(&mut b)? == 0 || head.len() > 8192 {
                    return Err(std::io::Error::other("upgrade failed"));
                }
                head.push(b[0]);
            }
            if !head.starts_with(b"HTTP/1.1 101") {
                return Err(std::io::Error::other("upgrade refused"));
            }
            let mut s = Sub {
                stream,
                reader: FrameReader::new(64 * 1024),
                socket_id: String::new(),
                buf: vec![0u8; 64 * 1024].into_boxed_slice(),
            };
            let text = s.next_text()?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(std::io::Error::other)?;
            let data: serde_json::Value = serde_json::from_str(v["data"].as_str().unwrap_or("{}"))
                .map_err(std::io::Error::other)?;
            s.socket_id = data["socket_id"].as_str().unwrap_or("").to_string();
            Ok(s)
        }

        /// Core index of this connection: the engine makes `socket_id.lo % workers == core`.
        pub fn core(&self, workers: u64) -> Option<u64> {
            let lo: u64 = self.socket_id.split('.').nth(1)?.parse().ok()?;
            Some(lo % workers)
        }

        pub fn send_text(&mut self, text: &str) -> std::io::Result<()> {
            let mut out = Vec::new();
            ringcast_loadtest::wsframe::client_text(text.as_bytes(), 7, &mut out);
            self.stream.write_all(&out)
        }

        /// Next text message (setup path; allocates).
        pub fn next_text(&mut self) -> std::io::Result<String> {
            loop {
                let mut got = None;
                self.reader
                    .drain(|f| {
                        if let Frame::Text(t) = f {
                            got = Some(String::from_utf8_lossy(t).into_owned());
                            return false;
                        }
                        true
                    })
                    .map_err(std::io::Error::other)?;
                if let Some(t) = got {
                    return Ok(t);
                }
                let n = self.stream.read(&mut self.buf)?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                self.reader.extend(&self.buf[..n]);
            }
        }

        /// Waits until `n` text frames arrived (hot path: no allocation per frame).
        pub fn recv_frames(&mut self, mut n: usize) -> std::io::Result<()> {
            loop {
                self.reader
                    .drain(|f| {
                        if matches!(f, Frame::Text(_)) && n > 0 {
                            n -= 1;
                        }
                        true
                    })
                    .map_err(std::io::Error::other)?;
                if n == 0 {
                    return Ok(());
                }
                let k = self.stream.read(&mut self.buf)?;
                if k == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                self.reader.extend(&self.buf[..k]);
            }
        }

        /// Subscribes to a public channel and waits for the acknowledgement.
        pub fn subscribe(&mut self, channel: &str) -> std::io::Result<()> {
            self.send_text(&format!(
                "{{\"event\":\"pusher:subscribe\",\"data\":{{\"auth\":\"\",\"channel\":\"{channel}\"}}}}"
            ))?;
            loop {
                let t = self.next_text()?;
                if t.contains("subscription_succeeded") {
                    return Ok(());
                }
                if t.contains("pusher:error") {
                    return Err(std::io::Error::other(t));
                }
            }
        }
    }
}
