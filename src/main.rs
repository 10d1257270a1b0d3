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
use ringcast_control_plane::webhook::Webhooks;
use ringcast_control_plane::{ApiConfig, ApiServer, ControlPlane};
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
    // never the default action that kills the process and drops its clients (1006).
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("installing signal handlers")?;
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
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let api_config = ApiConfig::from_table(raw.api.take()).map_err(anyhow::Error::msg)?;
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

    println!(
        "ringcast: listening on {addr} (workers={}, driver={})",
        running.workers(),
        running.driver()
    );
    if let Some(api) = &api_server {
        println!("ringcast: HTTP API on {} (api_listen)", api.local_addr());
    }
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

    let sig = signals.forever().next();
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
