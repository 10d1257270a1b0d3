//! `ringcast`: the composition root. Reads the config (or uses the embedded default), binds the
//! engine, wires the control plane into it, prints the listening line, and shuts down
//! gracefully on SIGINT/SIGTERM.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ringcast_cluster::{Bridge, ClusterConfig, ClusterOverrides};
use ringcast_control_plane::mgmt::{Management, RawManagementConfig};
use ringcast_control_plane::webhook::Webhooks;
use ringcast_control_plane::{system_clock, ApiConfig, ApiServer, ControlPlane};
use ringcast_engine::{Engine, HttpService, RawConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Ringcast: a realtime fan-out server speaking the Pusher Channels protocol.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// TOML config file (apps, limits). Without one, an embedded default app is served:
    /// id `app-id`, key `app-key`, secret `app-secret`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address for WebSocket (and, by default, REST) clients. Overrides `listen`.
    #[arg(long)]
    listen: Option<String>,
    /// Serve the REST API on this separate address instead of the public port. Overrides `api_listen`.
    #[arg(long)]
    api_listen: Option<String>,
    /// Worker threads (one per core by default). Overrides `workers`.
    #[arg(long)]
    workers: Option<usize>,
    /// Directory of the management store (apps and API tokens created through `/api`).
    /// Overrides `[management] data_dir`; default `./ringcast-data`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Join a cluster over this broker: redis://host:port, redis-cluster://h:p,h:p or
    /// nats://h:p[,nats://h:p]. Overrides `[cluster] url`.
    #[arg(long)]
    cluster: Option<String>,
    /// This node's id in the cluster (generated when absent). Overrides `[cluster] node_id`.
    #[arg(long)]
    node_id: Option<String>,
    /// A node silent this long is dead (ms, default 10000). Overrides `[cluster] lease_ms`.
    #[arg(long)]
    cluster_lease_ms: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // Signal handlers first, before anything can report readiness: a SIGINT/SIGTERM that
    // arrives at any point from here on is queued and handled as a graceful shutdown (4200),
    // never the default action that kills the process and drops its clients (1006); a SIGHUP
    // is queued and handled (config re-read) once the server runs.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .context("installing signal handlers")?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut raw = read_config(&cli)?;
    let api_config = ApiConfig::from_table(raw.api.take()).map_err(anyhow::Error::msg)?;
    let mgmt_config = RawManagementConfig::from_table(raw.management.take())
        .map_err(anyhow::Error::msg)?
        .resolve(
            cli.data_dir.clone(),
            std::env::var(ringcast_control_plane::mgmt::defaults::ADMIN_TOKEN_ENV).ok(),
        );
    let cluster_config = ClusterConfig::resolve(
        raw.cluster.take(),
        &ClusterOverrides {
            url: cli.cluster.clone(),
            node_id: cli.node_id.clone(),
            lease_ms: cli.cluster_lease_ms,
        },
    )
    .map_err(anyhow::Error::msg)?;
    let config = raw.resolve(cores)?;
    let grace = config.shutdown_grace;
    let api_listen = config.api_listen;
    if api_config.tls.is_some() && api_listen.is_none() {
        anyhow::bail!(
            "[api.tls] is for the separate API listener: set api_listen (or --api-listen); \
             the public port's TLS is [tls]"
        );
    }
    // Webhooks: the engine reports channel events to this observer on its cores (non-blocking);
    // the sender threads deliver them.
    let webhooks = Webhooks::start(&config.apps);
    let engine = Engine::bind(config, Some(webhooks.observer())).context("binding the listener")?;
    let addr = engine.local_addr();
    // Clustered: the cores report to the link; the bridge starts once the engine runs.
    let cluster_link = cluster_config.as_ref().map(|c| {
        let link = ringcast_cluster::link_for(c, engine.handle().workers());
        engine.attach_cluster(link.clone());
        link
    });

    // The control plane serves the HTTP API on the public port, or on its own listener with
    // --api-listen (the public port then answers only WebSocket upgrades and /health).
    let control_plane = ControlPlane::new(engine.handle(), api_config);
    control_plane.attach_webhooks(webhooks.clone());
    // The management plane: opens the store (a corrupt one stops the start here), applies the
    // stored apps next to the config file's, and serves /api and /dashboard.
    let mut generated_token = None;
    let management: Option<Arc<Management>> = match mgmt_config {
        Some(mc) => {
            let dir = mc.data_dir.clone();
            let started = Management::start(engine.handle(), mc, system_clock())
                .with_context(|| format!("opening the management store in {}", dir.display()))?;
            if let Some(t) = &started.generated_admin_token {
                // Printed after the listening line (which stays the first line of stdout).
                generated_token = Some(format!(
                    "ringcast: generated the first admin API token (shown once, stored hashed in {}): {t}",
                    started.management.store_path().display()
                ));
            }
            control_plane.attach_management(started.management.clone());
            Some(started.management)
        }
        None => None,
    };
    // Clustered with the management plane on: every management write is published through the
    // bridge and the other nodes' writes are applied here (docs/management.md, "In a cluster").
    let mgmt_port = match (&cluster_config, &management) {
        (Some(cfg), Some(m)) => {
            let (outbox, port) =
                ringcast_cluster::management::channel(Arc::new(ReplicatedManagement(m.clone())));
            m.attach_cluster(cfg.node_id.clone(), move |records| {
                outbox.send(records.into());
            });
            Some(port)
        }
        _ => None,
    };
    let api_server = match api_listen {
        Some(a) => Some(
            ApiServer::start(a, &control_plane, 1)
                .with_context(|| format!("binding the API listener {a}"))?,
        ),
        None => None,
    };
    let http: Arc<dyn HttpService> = if api_server.is_some() {
        control_plane.health_only()
    } else {
        Arc::new(control_plane.clone())
    };
    let running = engine.start(Some(http)).context("starting workers")?;

    // One write: the listening line first, then the API address and a generated admin token,
    // so a reader that sees the listening line already has the rest.
    let mut ready = format!(
        "ringcast: listening on {addr} (workers={}, driver={})\n",
        running.workers(),
        running.driver()
    );
    if let Some(api) = &api_server {
        ready.push_str(&format!(
            "ringcast: HTTP API on {} (api_listen)\n",
            api.local_addr()
        ));
    }
    if let Some(line) = generated_token {
        ready.push_str(&line);
        ready.push('\n');
    }
    std::io::stdout().lock().write_all(ready.as_bytes()).ok();
    std::io::stdout().flush().ok();
    let bridge = match (cluster_config, cluster_link) {
        (Some(cfg), Some(link)) => {
            let line = format!(
                "ringcast: cluster {} node {}",
                cfg.backend.name(),
                cfg.node_id
            );
            Some(
                Bridge::start(
                    cfg,
                    running.handle(),
                    link,
                    mgmt_port,
                    Box::new(move || {
                        println!("{line}");
                        std::io::stdout().flush().ok();
                    }),
                )
                .context("starting the cluster bridge")?,
            )
        }
        _ => None,
    };

    let mut sig = None;
    for s in signals.forever() {
        if s == signal_hook::consts::SIGHUP {
            let tls = TlsListeners {
                public: running.handle().tls().cloned(),
                api: api_server.as_ref().and_then(|a| a.tls()),
            };
            reload(&cli, cores, management.as_deref(), &tls);
            continue;
        }
        sig = Some(s);
        break;
    }
    tracing::info!(?sig, "shutting down: closing clients with 4200");
    // Watchdog: the process exits within the grace period plus a margin, whatever happens.
    std::thread::spawn(move || {
        std::thread::sleep(grace + Duration::from_secs(5));
        eprintln!("ringcast: shutdown deadline passed, exiting");
        std::process::exit(1);
    });
    if let Some(api) = api_server {
        api.shutdown();
    }
    if let Some(m) = &management {
        m.shutdown();
    }
    running.shutdown_and_join();
    // After the engine: the leaves of the closed connections are queued; then Bye, so the
    // other nodes drop this node's share at once.
    if let Some(b) = bridge {
        b.stop();
    }
    // After the engine: vacated/member_removed events of the closed connections are queued by
    // now; whatever cannot be sent is counted and logged with its body.
    webhooks.shutdown_graceful(Duration::from_secs(2));
    tracing::info!("bye");
    Ok(())
}

/// The management plane as the cluster bridge sees it: records in, snapshots out, both
/// handed to the management thread without waiting.
struct ReplicatedManagement(Arc<Management>);

impl ringcast_cluster::ManagementPeer for ReplicatedManagement {
    fn apply(&self, from: &str, records: ringcast_cluster::management::Records) {
        self.0.apply_replicated(from.to_owned(), records.to_vec());
    }

    fn snapshot(
        &self,
        max_bytes: usize,
        reply: Box<dyn FnOnce(Vec<ringcast_cluster::management::Records>) + Send>,
    ) {
        self.0.replication_snapshot(
            max_bytes,
            Box::new(move |parts| reply(parts.into_iter().map(Into::into).collect())),
        );
    }
}

/// The config file (or the embedded default) with the command line's overrides.
fn read_config(cli: &Cli) -> anyhow::Result<RawConfig> {
    let mut raw = match &cli.config {
        Some(path) => RawConfig::from_file(path)?,
        None => RawConfig::default(),
    };
    if cli.listen.is_some() {
        raw.listen = cli.listen.clone();
    }
    if cli.api_listen.is_some() {
        raw.api_listen = cli.api_listen.clone();
    }
    if cli.workers.is_some() {
        raw.workers = cli.workers;
    }
    Ok(raw)
}

/// The TLS listeners whose certificates SIGHUP re-reads.
struct TlsListeners {
    public: Option<ringcast_engine::TlsAcceptor>,
    api: Option<ringcast_engine::TlsAcceptor>,
}

/// SIGHUP, certificates: re-reads `[tls]` and `[api.tls]` (their paths as the file names them
/// now). A pair that loads is swapped in (new handshakes use it, established connections keep
/// their sessions); one that does not is rejected with the reason logged and the old one stays.
/// Turning TLS on or off needs a restart.
fn reload_certificates(raw: &mut ringcast_engine::RawConfig, tls: &TlsListeners) {
    let api_tls = match ApiConfig::from_table(raw.api.take()) {
        Ok(c) => c.tls,
        Err(e) => {
            tracing::error!("SIGHUP: [api] rejected, the API certificate stays: {e}");
            None
        }
    };
    for (name, acceptor, files) in [
        ("[tls]", &tls.public, raw.tls.as_ref()),
        ("[api.tls]", &tls.api, api_tls.as_ref()),
    ] {
        match (acceptor, files) {
            (Some(a), Some(f)) => match a.reload(f) {
                Ok(()) => tracing::info!(
                    cert = %f.cert.display(),
                    "SIGHUP: {name} certificate re-read; new handshakes use it"
                ),
                Err(e) => {
                    tracing::error!("SIGHUP: {name} certificate rejected, the old one stays: {e}")
                }
            },
            (Some(_), None) => tracing::warn!(
                "SIGHUP: {name} is gone from the config; turning TLS off needs a restart"
            ),
            (None, Some(_)) => tracing::warn!(
                "SIGHUP: {name} was added to the config; turning TLS on needs a restart"
            ),
            (None, None) => {}
        }
    }
}

/// SIGHUP: re-reads the config file: the TLS certificates (see [`reload_certificates`]), and
/// its apps, applied the way a management change is applied (swap, closes). A file that does
/// not parse or resolve is rejected with the reason logged, and the running config stays.
/// Settings other than the apps and certificates need a restart.
fn reload(cli: &Cli, cores: usize, management: Option<&Management>, tls: &TlsListeners) {
    let Some(path) = &cli.config else {
        tracing::warn!("SIGHUP: no --config file to re-read");
        return;
    };
    let mut raw = match read_config(cli) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(file = %path.display(), "SIGHUP: config rejected, the old one stays: {e:#}");
            return;
        }
    };
    reload_certificates(&mut raw, tls);
    let Some(m) = management else {
        tracing::warn!("SIGHUP: the management plane is disabled; apps cannot change at runtime");
        return;
    };
    let apps = match raw.resolve(cores) {
        Ok(c) => c.apps,
        Err(e) => {
            tracing::error!(file = %path.display(), "SIGHUP: config rejected, the old one stays: {e:#}");
            return;
        }
    };
    match m.reload_config_apps(apps) {
        Ok(version) => tracing::info!(
            file = %path.display(),
            version,
            "SIGHUP: config re-read and applied (apps; other settings need a restart)"
        ),
        Err(e) => {
            tracing::error!(file = %path.display(), "SIGHUP: config rejected, the old one stays: {e}")
        }
    }
}
