//! Where the API runs. [`ControlPlane`] implements the engine's [`HttpService`]: plain HTTP
//! connections arriving on the public port are served on the accepting core. [`ApiServer`]
//! runs the same service on its own listener and thread(s), each with its own monoio runtime
//! (`--api-listen`); the public port then gets [`ControlPlane::health_only`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use futures_channel::oneshot;
use ringcast_engine::{reuseport_listener, EngineHandle, HttpService, HttpServing, TlsAcceptor};

use crate::api::{system_clock, Api, Clock, Endpoint, Scope};
use crate::config::ApiConfig;
use crate::http::{self, Request, Response};

/// The control plane: the HTTP API over an engine handle. Cheap to clone.
#[derive(Clone)]
pub struct ControlPlane {
    api: Arc<Api>,
}

impl ControlPlane {
    /// With the system clock.
    pub fn new(engine: EngineHandle, config: ApiConfig) -> ControlPlane {
        ControlPlane::with_clock(engine, config, system_clock())
    }

    /// With an injected clock (seconds since the Unix epoch), for tests.
    pub fn with_clock(engine: EngineHandle, config: ApiConfig, clock: Clock) -> ControlPlane {
        ControlPlane {
            api: Arc::new(Api::new(engine, config, clock)),
        }
    }

    /// Serves the webhook delivery log and redelivery, and exports the sender's counters.
    pub fn attach_webhooks(&self, hooks: Arc<crate::webhook::Webhooks>) {
        let _ = self.api.webhooks.set(hooks);
    }

    /// Serves `/api` and `/dashboard` with this management plane.
    pub fn attach_management(&self, m: Arc<crate::mgmt::Management>) {
        let api = Arc::downgrade(&self.api);
        m.set_api_calls_source(move || {
            api.upgrade()
                .map(|a| a.rest_metrics().per_app())
                .unwrap_or_default()
        });
        if let Some(w) = self.api.webhooks.get() {
            m.attach_webhooks(w.clone());
        }
        let _ = self.api.mgmt.set(m);
    }

    pub fn api(&self) -> &Arc<Api> {
        &self.api
    }

    /// The service for the public port when the API has its own listener: `/health` only.
    pub fn health_only(&self) -> Arc<dyn HttpService> {
        Arc::new(HealthOnly {
            api: self.api.clone(),
        })
    }

    /// Serves one connection (keep-alive loop) with the given scope.
    pub async fn serve_connection(
        &self,
        stream: ringcast_engine::ClientStream,
        initial: Vec<u8>,
        scope: Scope,
    ) {
        serve(self.api.clone(), stream, initial, scope).await;
    }
}

async fn serve(
    api: Arc<Api>,
    stream: ringcast_engine::ClientStream,
    initial: Vec<u8>,
    scope: Scope,
) -> Option<(ringcast_engine::ClientStream, Vec<u8>)> {
    let limits = api.config().limits();
    let timeouts = api.config().timeouts();
    let h = Serving { api, scope };
    http::serve(&h, stream, initial, limits, timeouts).await
}

struct Serving {
    api: Arc<Api>,
    scope: Scope,
}

impl http::Handler for Serving {
    fn admit(&self, head: &http::RequestHead) -> Result<Option<http::BodyPermit>, Response> {
        self.api.admit(head, self.scope)
    }

    fn handle(&self, req: &Request) -> impl Future<Output = Response> {
        self.api.handle(req, self.scope)
    }

    fn observe_http_error(&self, status: u16) {
        self.api
            .rest_metrics()
            .record(Endpoint::Other, status, None);
    }

    /// On the public port an SSE stream is the engine core's (engine/src/sse.rs), also when
    /// it arrives on a kept-alive connection; the API listener answers it with a 404 that
    /// says where streams are served.
    fn hands_back(&self, req: &Request) -> bool {
        !matches!(self.scope, Scope::Full)
            && req.method == "GET"
            && crate::dialect::sse::is_stream_path(&req.path)
    }
}

impl HttpService for ControlPlane {
    fn serve(
        &self,
        stream: ringcast_engine::ClientStream,
        buffered: Vec<u8>,
        client: Option<std::net::IpAddr>,
    ) -> HttpServing {
        Box::pin(serve(
            self.api.clone(),
            stream,
            buffered,
            Scope::Public { peer: client },
        ))
    }
}

/// The public port's service when the API is elsewhere: answers `/health`, 404 otherwise.
struct HealthOnly {
    api: Arc<Api>,
}

impl HttpService for HealthOnly {
    fn serve(
        &self,
        stream: ringcast_engine::ClientStream,
        buffered: Vec<u8>,
        _client: Option<std::net::IpAddr>,
    ) -> HttpServing {
        Box::pin(serve(self.api.clone(), stream, buffered, Scope::HealthOnly))
    }
}

/// The API on its own listener (`--api-listen`): `threads` threads, each with its own monoio
/// runtime and an SO_REUSEPORT listener on the same address.
pub struct ApiServer {
    local_addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl ApiServer {
    /// Binds `addr` (port 0 picks one) and starts serving.
    pub fn start(
        addr: SocketAddr,
        control_plane: &ControlPlane,
        threads: usize,
    ) -> std::io::Result<ApiServer> {
        // `[api.tls]`: a certificate or key that does not load stops the start here.
        let tls = match &control_plane.api.config().tls {
            Some(files) => Some(
                TlsAcceptor::load(files)
                    .map_err(|e| std::io::Error::other(format!("[api.tls]: {e}")))?,
            ),
            None => None,
        };
        if let Some(t) = &tls {
            let _ = control_plane.api.api_tls.set(t.clone());
        }
        let first = reuseport_listener(addr)?;
        let local_addr = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..threads.max(1) {
            listeners.push(reuseport_listener(local_addr)?);
        }
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let mut server = ApiServer {
            local_addr,
            tls: tls.clone(),
            stops: Vec::new(),
            threads: Vec::new(),
        };
        for (i, listener) in listeners.into_iter().enumerate() {
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let api = control_plane.api.clone();
            let ready = ready_tx.clone();
            let tls = tls.clone();
            let t = std::thread::Builder::new()
                .name(format!("ringcast-api{i}"))
                .spawn(move || {
                    let rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                        .enable_timer()
                        .build();
                    let mut rt = match rt {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = ready.send(Err(format!("api thread {i}: runtime: {e}")));
                            return;
                        }
                    };
                    rt.block_on(async move {
                        let listener = match monoio::net::TcpListener::from_std(listener) {
                            Ok(l) => l,
                            Err(e) => {
                                let _ = ready.send(Err(format!("api thread {i}: listener: {e}")));
                                return;
                            }
                        };
                        let _ = ready.send(Ok(()));
                        accept_loop(api, listener, tls, stop_rx).await
                    });
                })?;
            server.stops.push(stop_tx);
            server.threads.push(t);
        }
        drop(ready_tx);
        for _ in 0..server.threads.len() {
            match ready_rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(std::io::Error::other(e)),
                Err(_) => {
                    return Err(std::io::Error::other(
                        "an api thread died or hung during start-up",
                    ))
                }
            }
        }
        tracing::info!(addr = %local_addr, threads = server.threads.len(), "HTTP API listening");
        Ok(server)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The listener's TLS acceptor (`[api.tls]`), for certificate reloads.
    pub fn tls(&self) -> Option<TlsAcceptor> {
        self.tls.clone()
    }

    /// Stops accepting, drops in-flight connections and joins the threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        for s in self.stops.drain(..) {
            let _ = s.send(());
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept_loop(
    api: Arc<Api>,
    listener: monoio::net::TcpListener,
    tls: Option<TlsAcceptor>,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        monoio::select! {
            _ = &mut stop => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => match &tls {
                    None => {
                        monoio::spawn(serve(api.clone(), stream.into(), Vec::new(), Scope::Full));
                    }
                    Some(acceptor) => {
                        // The handshake bounded by the head timeout; failures are counted.
                        let (api, acceptor) = (api.clone(), acceptor.clone());
                        monoio::spawn(async move {
                            let limit = api.config().timeouts().head;
                            if let Ok(s) = acceptor.accept(stream, limit).await {
                                serve(api, s, Vec::new(), Scope::Full).await;
                            }
                        });
                    }
                },
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("api accept failed: {e}");
                    monoio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}
