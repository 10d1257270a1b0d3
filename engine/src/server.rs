//! Start-up and shutdown: binds one SO_REUSEPORT listener per worker, builds the mesh, spawns
//! one pinned thread per worker running a monoio runtime (io_uring, or the legacy epoll driver
//! where io_uring is unavailable).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{defaults, Config};
use crate::core::Core;
use crate::handle::EngineHandle;
use crate::mesh::{self, MeshRx, MeshShared, MeshTx};
use crate::shared::{EngineObserver, Placement, Shared};

/// Serves a plain-HTTP (non-WebSocket) connection that arrived on the public port. Installed by
/// the composition root (the control plane implements it); the engine knows nothing of routes.
/// `stream` is plaintext or, on a `[tls]` port, TLS (already handshaken).
/// `buffered` holds every byte read so far, starting with the request head. `client` is the
/// client's address (behind a trusted proxy: the one its PROXY header or `X-Forwarded-For`
/// names; `None` if unknown). The future runs on the accepting core and must not block it.
pub trait HttpService: Send + Sync + 'static {
    /// Serves the connection (keep-alive). Returns it when a later request on it belongs to
    /// the engine (an SSE stream, `GET /apps/{id}/stream`, on a kept-alive connection), with
    /// that request's head as bytes: the core then serves it as it would a fresh one.
    fn serve(
        &self,
        stream: crate::tls::ClientStream,
        buffered: Vec<u8>,
        client: Option<std::net::IpAddr>,
    ) -> HttpServing;
}

/// What `HttpService::serve` returns: the connection handed back with a request's head, or
/// `None` when it is done.
pub type HttpServing = Pin<Box<dyn Future<Output = Option<(crate::tls::ClientStream, Vec<u8>)>>>>;

/// A bound, not yet running engine.
pub struct Engine {
    shared: Arc<Shared>,
    listeners: Vec<std::net::TcpListener>,
    wiring: Vec<(MeshTx, MeshRx)>,
    local_addr: SocketAddr,
}

/// A running engine.
pub struct RunningEngine {
    handle: EngineHandle,
    threads: Vec<JoinHandle<()>>,
    local_addr: SocketAddr,
    driver: &'static str,
}

/// Binds a TCP listener with SO_REUSEPORT so every worker can accept on the same port.
pub fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

/// Raises the open-file soft limit to the hard limit (each connection is a file descriptor).
fn raise_nofile_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass, which lives on our stack.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

impl Engine {
    /// Binds the listeners (so the port is known before start) and builds the core mesh.
    pub fn bind(
        config: Config,
        observer: Option<Arc<dyn EngineObserver>>,
    ) -> std::io::Result<Engine> {
        raise_nofile_limit();
        // `[tls]`: a certificate or key that does not load stops the start here.
        let tls = match &config.tls {
            Some(files) => Some(
                crate::tls::TlsAcceptor::load(files)
                    .map_err(|e| std::io::Error::other(format!("[tls]: {e}")))?,
            ),
            None => None,
        };
        let workers = config.workers;
        let first = reuseport_listener(config.listen)?;
        let local_addr = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..workers {
            listeners.push(reuseport_listener(local_addr)?);
        }
        let mesh_shared = Arc::new(MeshShared::new(workers, defaults::INJECT_QUEUE_CAPACITY));
        let wiring = mesh::build(
            workers,
            config.mesh_queue_capacity,
            config.mesh_overflow_limit,
            mesh_shared.clone(),
        );
        let placement = Placement::random()?;
        let shared = Arc::new(Shared::new(config, mesh_shared, observer, placement));
        if let Some(t) = tls {
            let _ = shared.tls.set(t);
        }
        Ok(Engine {
            shared,
            listeners,
            wiring,
            local_addr,
        })
    }

    pub fn handle(&self) -> EngineHandle {
        EngineHandle {
            shared: self.shared.clone(),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Attaches the cluster seam (before `start`): the cores then report their channel shares
    /// and locally originated events to it, and accept remote updates.
    pub fn attach_cluster(&self, link: Arc<crate::cluster::ClusterLink>) {
        let _ = self.shared.cluster.set(link);
    }

    /// Spawns the worker threads. `http` serves non-WebSocket requests on the public port
    /// (without one, only `/health` is answered there).
    pub fn start(self, http: Option<Arc<dyn HttpService>>) -> std::io::Result<RunningEngine> {
        if let Some(h) = http {
            let _ = self.shared.http.set(h);
        }
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<&'static str, String>>();
        let mut threads = Vec::new();
        for (idx, (listener, (tx, rx))) in self.listeners.into_iter().zip(self.wiring).enumerate() {
            let shared = self.shared.clone();
            let pin = cores.get(idx % cores.len().max(1)).copied();
            let ready = ready_tx.clone();
            let t = std::thread::Builder::new()
                .name(format!("ringcast-w{idx}"))
                .spawn(move || {
                    if let Some(c) = pin {
                        core_affinity::set_for_current(c);
                    }
                    let rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                        .with_entries(4096)
                        .enable_timer()
                        .build();
                    let mut rt = match rt {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ =
                                ready.send(Err(format!("worker {idx}: cannot build runtime: {e}")));
                            return;
                        }
                    };
                    let seed = (std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_nanos() as u64)
                        .unwrap_or(0))
                        ^ ((idx as u64 + 1) << 48);
                    // Report the driver this worker really got (FusionDriver picks io_uring
                    // when the kernel allows it). Deciding here, not by probing on the
                    // caller's thread, keeps the embedding process's threads free of
                    // io_uring state.
                    let driver = match &rt {
                        monoio::FusionRuntime::Uring(_) => "io_uring",
                        monoio::FusionRuntime::Legacy(_) => "epoll (legacy fallback)",
                    };
                    let core = Rc::new(Core::new(idx, shared.clone(), tx, rx, seed));
                    // A second handle on the listening socket, to take it out of the port's
                    // SO_REUSEPORT group however this worker ends (monoio may defer closing
                    // its own handle while an accept is in flight).
                    let listening = match listener.try_clone() {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready.send(Err(format!("worker {idx}: listener: {e}")));
                            return;
                        }
                    };
                    let _ = ready.send(Ok(driver));
                    // Panic policy: every task of this core is polled inside this `block_on`
                    // (monoio does not catch a task's panic), so one catch here covers them all.
                    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        rt.block_on(worker_main(core, listener, &listening))
                    }));
                    // However the worker ended, its socket leaves the SO_REUSEPORT group (after
                    // a panic the runtime cannot be relied on to close the listener: an
                    // in-flight io_uring accept keeps its fd open), so new connections go to
                    // live cores; a core is reported stopped only after that and after its
                    // runtime is gone.
                    stop_listening(&listening);
                    match run {
                        Err(panic) => on_core_panic(&shared, idx, panic.as_ref(), rt),
                        Ok(()) => drop(rt),
                    }
                    shared.core_stopped[idx].store(true, std::sync::atomic::Ordering::Release);
                })?;
            threads.push(t);
        }
        drop(ready_tx);
        let mut driver = "io_uring";
        for _ in 0..threads.len() {
            match ready_rx.recv() {
                Ok(Ok(d)) => {
                    if d != "io_uring" {
                        driver = d;
                    }
                }
                Ok(Err(e)) => return Err(std::io::Error::other(e)),
                Err(_) => {
                    return Err(std::io::Error::other(
                        "a worker thread died during start-up",
                    ))
                }
            }
        }
        tracing::info!(workers = threads.len(), driver, addr = %self.local_addr, "ringcast engine started");
        Ok(RunningEngine {
            handle: EngineHandle {
                shared: self.shared,
            },
            threads,
            local_addr: self.local_addr,
            driver,
        })
    }
}

/// The panic policy: a panic in any task on a core aborts the whole process, so that a
/// supervisor (systemd, Kubernetes, ...) restarts it. Containing it instead would leave the
/// core's state half-updated (a `RefCell` mid-change, owner counts that other cores rely on)
/// and its connections and owned channels dead while the process still looked alive. The
/// panic message is already on stderr (the default panic hook runs first).
fn on_core_panic(shared: &Shared, idx: usize, panic: &(dyn std::any::Any + Send), rt: impl Sized) {
    let msg = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic payload)".into());
    if shared
        .abort_on_panic
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        tracing::error!(
            core = idx,
            "a task on core {idx} panicked: {msg}; aborting the process (panic policy)"
        );
        eprintln!("ringcast: a task on core {idx} panicked: {msg}; aborting (panic policy)");
        std::process::abort();
    }
    // Test hook only: the core stays stopped. Dropping its runtime closes its sockets (the
    // listener too, so new connections go to the other cores).
    tracing::error!(
        core = idx,
        "a task on core {idx} panicked: {msg}; core stopped (abort disabled by a test hook)"
    );
    drop(rt);
}

/// One worker: the mesh drain task plus the accept loop; returns after shutdown once its
/// connections are gone or the grace period ends.
/// Takes a listening socket out of service at once: pending and future connections go to the
/// other workers' listeners (or are refused), never wait in a backlog nobody accepts from.
fn stop_listening(l: &std::net::TcpListener) {
    let _ = socket2::SockRef::from(l).shutdown(std::net::Shutdown::Both);
}

async fn worker_main(
    core: Rc<Core>,
    listener: std::net::TcpListener,
    listening: &std::net::TcpListener,
) {
    monoio::spawn(core.clone().drain_loop());
    monoio::spawn(core.clone().tick_loop());
    monoio::spawn(crate::flush::flush_loop(core.clone()));
    let listener = match monoio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(core = core.idx, "cannot register listener: {e}");
            return;
        }
    };
    loop {
        let c = core.clone();
        let stop = std::future::poll_fn(move |cx| {
            if c.shutting_down.get() {
                Poll::Ready(())
            } else {
                *c.shutdown_waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        });
        monoio::select! {
            _ = stop => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    monoio::spawn(crate::conn::handle(core.clone(), stream));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(core = core.idx, "accept failed: {e}");
                    monoio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    drop(listener);
    stop_listening(listening);
    let grace = core.shared.config.shutdown_grace;
    let until = Instant::now() + grace;
    while !core.conns.borrow().is_empty() && Instant::now() < until {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl RunningEngine {
    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// "io_uring" or "epoll (legacy fallback)".
    pub fn driver(&self) -> &'static str {
        self.driver
    }

    pub fn workers(&self) -> usize {
        self.threads.len()
    }

    /// Shuts down and waits for the workers (each bounded by the configured grace period).
    pub fn shutdown_and_join(self) {
        self.handle.shutdown();
        for t in self.threads {
            let _ = t.join();
        }
    }
}
