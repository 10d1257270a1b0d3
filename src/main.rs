//! `ringcast`: the composition root. Reads the config (or uses the embedded default), binds the
//! engine, wires the control plane into it, prints the listening line, and shuts down
//! gracefully on SIGINT/SIGTERM.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ringcast_engine::{Engine, RawConfig};

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
    let config = raw.resolve(cores)?;
    let grace = config.shutdown_grace;
    let engine = Engine::bind(config, None).context("binding the listener")?;
    let addr = engine.local_addr();
    let running = engine.start(None).context("starting workers")?;

    println!(
        "ringcast: listening on {addr} (workers={}, driver={})",
        running.workers(),
        running.driver()
    );
    std::io::stdout().flush().ok();

    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("installing signal handlers")?;
    let sig = signals.forever().next();
    tracing::info!(?sig, "shutting down: closing clients with 4200");
    // Watchdog: the process exits within the grace period plus a margin, whatever happens.
    std::thread::spawn(move || {
        std::thread::sleep(grace + Duration::from_secs(3));
        eprintln!("ringcast: shutdown deadline passed, exiting");
        std::process::exit(1);
    });
    running.shutdown_and_join();
    tracing::info!("bye");
    Ok(())
}
