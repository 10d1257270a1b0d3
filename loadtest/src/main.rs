//! `ringcast-loadtest`: thin command-line front end; the work is in the library.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use ringcast_loadtest::floor::{self, FloorChild};
use ringcast_loadtest::gen::GenConfig;
use ringcast_loadtest::net::{self, Target};
use ringcast_loadtest::procfs;
use ringcast_loadtest::report;
use ringcast_loadtest::scenario::connect::{self, ConnectPlan};
use ringcast_loadtest::scenario::fanout::{
    FanoutPlan, Part, PhaseResult, PublishMode, ReceiveMode, Session,
};
use ringcast_loadtest::scenario::presence::{self, PresencePlan};
use ringcast_loadtest::scenario::rest::Pipelining;
use ringcast_loadtest::serverwatch::{self, Sampler};

/// Open-loop load generator for any Pusher-protocol server (Ringcast, Soketi, Sockudo, Pusher).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// S subscribers over C channels, R events/s, P-byte payloads, T seconds.
    Fanout(FanoutArgs),
    /// Fan-out over a grid of rates (and subscriber counts); reports the knee.
    Sweep(SweepArgs),
    /// Open N connections, measure setup latency and server memory per idle connection.
    Connect(ConnectArgs),
    /// Join/leave churn on presence channels: latency and correctness.
    Presence(PresenceArgs),
    /// Attack the server (slow-loris, idle, slow consumers, floods, bad frames, bad signatures,
    /// churn...) one attack after another and then all at once, beside an honest fan-out;
    /// reports honest p99/loss against a quiet run, server RSS/files and refusals by reason.
    Abuse(AbuseArgs),
    /// Hours-long stability run: fan-out at a fixed rate with connection churn and presence
    /// joins/leaves; RSS, open files and CPU per delivery sampled; flatness checks.
    Soak(SoakArgs),
    /// Run the built-in minimal WebSocket fan-out server (the floor).
    Floor(FloorArgs),
    /// Print JSON result files (from --json) side by side.
    Report(ReportArgs),
    /// Build one side-by-side report (Markdown + SVG charts) from a grid run by
    /// loadtest/compare.sh (results of several servers under --out).
    Compare(CompareArgs),
    /// A child process of `--procs` (driven over stdin/stdout; not for direct use).
    #[command(hide = true)]
    Worker,
}

#[derive(Args, Debug)]
struct CompareArgs {
    /// The directory loadtest/compare.sh filled (meta.json and one directory per server).
    #[arg(long)]
    out: PathBuf,
    /// The p99 budget the knees were found with, milliseconds.
    #[arg(long, default_value_t = 200.0)]
    p99_budget: f64,
}

#[derive(Args, Debug)]
struct ReportArgs {
    /// JSON files written with --json (any scenario); one column per result.
    files: Vec<PathBuf>,
    /// Also (re)draw the sweep chart of the fan-out results in these files to this SVG file.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// p99 budget line for --svg, milliseconds.
    #[arg(long, default_value_t = 200.0)]
    p99_budget: f64,
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// WebSocket base URL of the server under test. Give several (repeat the option or
    /// separate with commas) to spread connections round-robin over the nodes of a cluster.
    /// `wss://` connects over TLS (trusting the system's roots and --tls-ca).
    #[arg(long, value_delimiter = ',', default_value = "ws://127.0.0.1:6001")]
    ws_url: Vec<String>,
    /// REST API base URL (default: the first WebSocket URL's host and port, over https when
    /// it is wss://).
    #[arg(long)]
    api_url: Option<String>,
    /// Extra CA certificates (PEM) to trust for wss:// and https:// targets, beside the
    /// system's roots (e.g. the test CA of a self-signed setup).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    #[arg(long, default_value = "app-id")]
    app_id: String,
    #[arg(long, default_value = "app-key")]
    key: String,
    #[arg(long, default_value = "app-secret")]
    secret: String,
    /// Generator threads (default: one per --cpus entry, else one per online CPU).
    #[arg(long)]
    threads: Option<usize>,
    /// Pin generator threads to these CPUs, e.g. `0,1` or `2-3`.
    #[arg(long)]
    cpus: Option<String>,
    /// Loopback source addresses to spread connections over (127.0.0.1 .. 127.0.0.N).
    #[arg(long, default_value_t = 4)]
    source_addrs: u8,
    /// PID of the server, for its CPU and memory (/proc/PID).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Name of the server in tables and files.
    #[arg(long, default_value = "server")]
    label: String,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
    /// Per-operation timeout for connection setup, seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

impl Common {
    fn gen(&self) -> anyhow::Result<GenConfig> {
        let cpus = self
            .cpus
            .as_deref()
            .map(procfs::parse_cpu_list)
            .transpose()?;
        let threads = self
            .threads
            .unwrap_or_else(|| cpus.as_ref().map_or_else(procfs::cpus, Vec::len))
            .max(1);
        Ok(GenConfig { threads, cpus })
    }

    fn target(&self) -> anyhow::Result<Target> {
        let ws = self
            .ws_url
            .iter()
            .map(|u| net::WsEndpoint::parse(u).with_context(|| format!("--ws-url {u}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(!ws.is_empty(), "give at least one --ws-url");
        let api = self.api_url.clone().unwrap_or_else(|| {
            let scheme = if ws[0].tls { "https" } else { "http" };
            format!("{scheme}://{}{}", ws[0].host, ws[0].path_prefix)
        });
        let api_tls = net::is_tls_url(&api);
        let (api_addr, api_host, api_path_prefix) =
            net::parse_url(&api, if api_tls { 443 } else { 80 })?;
        if let Some(ca) = &self.tls_ca {
            anyhow::ensure!(ca.is_file(), "--tls-ca {}: no such file", ca.display());
        }
        Ok(Target {
            ws,
            api_addr,
            api_host,
            api_path_prefix,
            api_tls,
            tls_ca: self.tls_ca.clone(),
            app_id: self.app_id.clone(),
            key: self.key.clone(),
            secret: self.secret.clone(),
            source_addrs: self.source_addrs.max(1),
        })
    }
}

#[derive(Args, Debug, Clone)]
struct LoadArgs {
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    #[arg(long, default_value_t = 1)]
    channels: usize,
    /// Payload (event data) size in bytes.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// How events are published: client events (works on any server with client events on)
    /// or signed REST triggers.
    #[arg(long, value_enum, default_value_t = PublishMode::Client)]
    publish: PublishMode,
    /// Publishing connections (client mode: WebSocket; REST mode: HTTP keep-alive).
    #[arg(long, default_value_t = 2)]
    publishers: usize,
    /// REST mode: most requests in flight per publisher: pipelined on one connection, or one
    /// per connection over this many connections when the server does not pipeline.
    #[arg(long, default_value_t = 64)]
    rest_inflight: usize,
    /// REST mode: pipeline requests? `auto` probes the server during setup.
    #[arg(long, value_enum, default_value_t = Pipelining::Auto)]
    rest_pipelining: Pipelining,
    /// REST mode: seconds to wait for one answer before abandoning the connection (its
    /// unanswered requests are sent again).
    #[arg(long, default_value_t = 10.0)]
    rest_timeout: f64,
    /// Channel name prefix (default `private-lt-` for client events, `lt-` for REST).
    #[arg(long)]
    channel_prefix: Option<String>,
    /// Read buffer per connection, bytes (the task receive path and connection setup).
    #[arg(long, default_value_t = 8192)]
    read_buf: usize,
    /// How subscriber sockets are read. `epoll`: one epoll instance per generator thread,
    /// `recv` of up to 64 KiB per ready socket into one buffer, frames parsed in place (the
    /// way the minimal C client of bench/fanfloor reads; least generator CPU per delivery).
    /// `tasks`: one runtime task per connection. TLS subscribers always use tasks.
    #[arg(long, value_enum, default_value_t = ReceiveMode::Epoll)]
    receive: ReceiveMode,
    /// Connection handshakes in flight per generator thread during setup.
    #[arg(long, default_value_t = 64)]
    setup_concurrency: usize,
    /// Seconds to wait for late deliveries after the schedule ends.
    #[arg(long, default_value_t = 3.0)]
    drain: f64,
    /// Also run the same load against the built-in floor server (spawned as a child process
    /// with --floor-workers workers) and report every figure as a ratio to it.
    #[arg(long)]
    floor: bool,
    #[arg(long, default_value_t = 2)]
    floor_workers: usize,
    /// A phase whose publishers ran more than this many milliseconds behind their schedule
    /// (p99, while the server was not holding them back) is the generator's fault (not valid).
    #[arg(long, default_value_t = ringcast_loadtest::scenario::fanout::BEHIND_MS)]
    max_publish_lag_ms: f64,
    /// Run the connections in this many child processes (a process may open only so many
    /// files); the results are merged exactly.
    #[arg(long, default_value_t = 1)]
    procs: usize,
    /// CPUs for the floor server's workers (e.g. `0,1`).
    #[arg(long)]
    floor_cpus: Option<String>,
    /// Run the publishers on the subscriber-reading threads, as before the publisher thread
    /// existed. By default they get a generator thread of their own (beside the --threads
    /// subscriber threads; pinned to the next --cpus entry in turn), so that reading thousands
    /// of sockets on busy cores does not start them late.
    #[arg(long)]
    publishers_on_receiver_threads: bool,
    /// Nice value the publisher thread asks for (0: unchanged). Raising the priority needs
    /// root or CAP_SYS_NICE; without it the run goes on at the default priority and says so
    /// in its notes. A publisher thread mostly sleeps, so this costs the server nothing but
    /// lets it start on time when the cores are busy.
    #[arg(long, default_value_t = -10, allow_hyphen_values = true)]
    publisher_nice: i32,
}

impl LoadArgs {
    fn plan(&self, c: &Common, target: Target, subscribers: usize) -> anyhow::Result<FanoutPlan> {
        let prefix = self
            .channel_prefix
            .clone()
            .unwrap_or_else(|| match self.publish {
                PublishMode::Client => "private-lt-".into(),
                PublishMode::Rest => "lt-".into(),
            });
        Ok(FanoutPlan {
            target,
            subscribers,
            channels: self.channels,
            channel_prefix: prefix,
            payload: self.payload,
            mode: self.publish,
            publishers: self.publishers,
            rest_inflight: self.rest_inflight,
            rest_pipelining: self.rest_pipelining,
            rest_timeout: Duration::from_secs_f64(self.rest_timeout.max(0.001)),
            part: Part::default(),
            max_publish_lag_ms: self.max_publish_lag_ms,
            read_buf: self.read_buf,
            receive: self.receive,
            setup_concurrency: self.setup_concurrency,
            setup_timeout: Duration::from_secs(c.timeout),
            gen: c.gen()?,
            publisher_thread: !self.publishers_on_receiver_threads,
            publisher_nice: self.publisher_nice,
        })
    }
}

#[derive(Args, Debug)]
struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    load: LoadArgs,
    /// Events per second (over all channels).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
}

#[derive(Args, Debug)]
struct SweepArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    load: LoadArgs,
    /// Event rates to try, ascending (events/s over all channels).
    #[arg(long, value_delimiter = ',', default_value = "10,20,50,100,200,400")]
    rates: Vec<f64>,
    /// Subscriber counts to try (default: --subscribers).
    #[arg(long, value_delimiter = ',')]
    subscriber_counts: Vec<usize>,
    /// Seconds per point.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// The knee is the highest rate whose p99 stays within this many milliseconds.
    #[arg(long, default_value_t = 200.0)]
    p99_budget: f64,
    /// Stop a series after this many consecutive points over budget.
    #[arg(long, default_value_t = 2)]
    stop_after: usize,
    /// Directory for sweep.csv, sweep.json and sweep.svg.
    #[arg(long, default_value = "sweep-out")]
    out: PathBuf,
}

#[derive(Args, Debug)]
struct ConnectArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Connections per second (open loop); 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Seconds to hold the connections idle after measuring.
    #[arg(long, default_value_t = 5.0)]
    hold: f64,
    /// Also measure the floor server with the same connections.
    #[arg(long)]
    floor: bool,
    /// Hold the connections in this many child processes (a process may open only so many
    /// files: 20,000 here).
    #[arg(long, default_value_t = 1)]
    procs: usize,
}

#[derive(Args, Debug)]
struct PresenceArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 1)]
    channels: usize,
    /// Members that stay joined for the whole run, per channel.
    #[arg(long, default_value_t = 10)]
    residents: usize,
    /// Connections that join and leave, per channel.
    #[arg(long, default_value_t = 20)]
    churners: usize,
    /// Joins per second over all channels.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Milliseconds a churner stays joined.
    #[arg(long, default_value_t = 200)]
    hold_ms: u64,
}

#[derive(Args, Debug)]
struct AbuseArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    load: LoadArgs,
    /// Honest events per second (over all channels).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Seconds per phase (the quiet run, each attack, all together).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Attacks to run, in this order (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    attacks: Vec<ringcast_loadtest::scenario::abuse::Attack>,
    /// Skip the final phase with every attack at once.
    #[arg(long)]
    no_together: bool,
    /// Abusive connections (or request loops) per attack at once.
    #[arg(long, default_value_t = 50)]
    abuse_connections: usize,
    /// Connections of the half-open and of the idle attack (opened over the first half of
    /// the phase).
    #[arg(long, default_value_t = 2000)]
    idle_connections: usize,
    /// Messages or requests per second per flooding connection.
    #[arg(long, default_value_t = 1000.0)]
    flood_rate: f64,
    /// Abusers connect from 127.0.0.FIRST .. (not the honest clients' 127.0.0.1..N).
    #[arg(long, default_value_t = 64)]
    abuse_source_first: u8,
    /// How many loopback source addresses the abusers use (split evenly between the attacks
    /// when there are at least as many as attacks; 120 = 10 each, so 2,000 idle connections
    /// opened over 5 s stay under 50 new connections per address per second).
    #[arg(long, default_value_t = 120)]
    abuse_sources: u8,
    /// Goal: honest p99 at most this many times the quiet run's.
    #[arg(long, default_value_t = 2.0)]
    max_p99_ratio: f64,
    /// Goal: server peak RSS, MiB.
    #[arg(long, default_value_t = 1024)]
    max_rss_mb: u64,
    /// Goal: server peak open files (default: only the return to the baseline is checked).
    #[arg(long)]
    max_open_files: Option<u64>,
    /// Milliseconds between two readings of the server's RSS and open files.
    #[arg(long, default_value_t = 100)]
    sample_ms: u64,
    /// Pin the abusers' thread to these CPUs (e.g. `1` or `2-3`), apart from the server's.
    #[arg(long)]
    attack_cpus: Option<String>,
    /// Pin the honest clients' generator threads to these CPUs (one thread per CPU unless
    /// --threads); replaces --cpus for this command.
    #[arg(long)]
    honest_cpus: Option<String>,
}

#[derive(Args, Debug)]
struct SoakArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    load: LoadArgs,
    /// Minutes of soak.
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// Events per second over all channels. Issue 12's soak is half the 10,000-subscriber
    /// knee: `--subscribers 10000 --rate 5` on the machine of docs/benchmarks.md (knee 10/s);
    /// use half the knee measured on yours.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Seconds between samples (each sample interval is one fan-out phase).
    #[arg(long, default_value_t = 10.0)]
    sample_secs: f64,
    /// Samples before this many seconds are warm-up (not in the RSS flatness check).
    #[arg(long, default_value_t = 60.0)]
    warmup_secs: f64,
    /// Connections opened, established and closed per second (churn).
    #[arg(long, default_value_t = 20.0)]
    churn_rate: f64,
    /// Presence joins (each followed by a leave) per second.
    #[arg(long, default_value_t = 10.0)]
    presence_rate: f64,
    /// Presence channels the joins go to.
    #[arg(long, default_value_t = 4)]
    presence_channels: usize,
    /// Milliseconds a presence member stays joined.
    #[arg(long, default_value_t = 500)]
    presence_hold_ms: u64,
    /// RSS after the warm-up may move by at most this fraction of its first value.
    #[arg(long, default_value_t = 0.10)]
    rss_tolerance: f64,
    /// Directory for soak.json, soak.csv and soak.svg.
    #[arg(long, default_value = "soak-out")]
    out: PathBuf,
}

#[derive(Args, Debug)]
struct FloorArgs {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    #[arg(long, default_value_t = 2)]
    workers: usize,
    #[arg(long)]
    cpus: Option<String>,
    /// Exit by itself after this many seconds.
    #[arg(long, default_value_t = 3600)]
    max_secs: u64,
}

fn main() -> anyhow::Result<()> {
    raise_nofile();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Fanout(a) => fanout(a),
        Cmd::Sweep(a) => sweep(a),
        Cmd::Connect(a) => connect_cmd(a),
        Cmd::Presence(a) => presence_cmd(a),
        Cmd::Abuse(a) => abuse_cmd(a),
        Cmd::Soak(a) => soak_cmd(a),
        Cmd::Worker => ringcast_loadtest::procs::worker_main(),
        Cmd::Compare(a) => {
            let md = ringcast_loadtest::compare::write(&a.out, a.p99_budget)?;
            print!("{md}");
            println!(
                "wrote {}/report.md and the charts beside it",
                a.out.display()
            );
            Ok(())
        }
        Cmd::Floor(a) => floor::serve(floor::FloorConfig {
            listen: a.listen.parse().context("--listen")?,
            workers: a.workers,
            cpus: a.cpus.as_deref().map(procfs::parse_cpu_list).transpose()?,
            max_secs: a.max_secs,
        }),
        Cmd::Report(a) => {
            let mut docs = Vec::new();
            for f in &a.files {
                let text = std::fs::read_to_string(f)
                    .with_context(|| format!("reading {}", f.display()))?;
                docs.push(
                    serde_json::from_str(&text)
                        .with_context(|| format!("parsing {}", f.display()))?,
                );
            }
            print!("{}", report::side_by_side(&docs));
            if let Some(svg) = &a.svg {
                let mut rows: Vec<PhaseResult> = Vec::new();
                for d in &docs {
                    for r in d
                        .get("results")
                        .and_then(|v| v.as_array())
                        .into_iter()
                        .flatten()
                    {
                        if let Ok(p) = serde_json::from_value::<PhaseResult>(r.clone()) {
                            rows.push(p);
                        }
                    }
                }
                anyhow::ensure!(!rows.is_empty(), "no fan-out results to draw");
                let title = format!(
                    "fan-out sweep: {} channel(s), {}-byte payloads, {:?} publishing, p99 budget {} ms",
                    rows[0].channels, rows[0].payload, rows[0].mode, a.p99_budget
                );
                std::fs::write(svg, report::svg(&rows, a.p99_budget, &title))?;
            }
            Ok(())
        }
    }
}

/// Each connection is a file descriptor: raise the soft limit to the hard limit.
fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit read and write only the struct on our stack.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

fn floor_target(t: &Target, addr: std::net::SocketAddr) -> Target {
    let mut f = t.clone();
    f.ws = vec![net::WsEndpoint::at(addr)];
    f.api_addr = addr;
    f.api_host = addr.to_string();
    f.api_path_prefix = String::new();
    f.api_tls = false;
    f
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map(|v| format!("{v:.2}x")).unwrap_or_else(|| "-".into())
}

fn fanout(a: FanoutArgs) -> anyhow::Result<()> {
    let c = &a.common;
    let target = c.target()?;
    let dur = Duration::from_secs_f64(a.duration);
    let drain = Duration::from_secs_f64(a.load.drain);
    let mut rows: Vec<PhaseResult> = Vec::new();
    if a.load.floor {
        let fl = FloorChild::spawn(a.load.floor_workers, a.load.floor_cpus.as_deref(), 3600)?;
        let plan = a
            .load
            .plan(c, floor_target(&target, fl.addr), a.load.subscribers)?;
        let mut s = Session::start(plan, a.load.procs, Some(fl.pid()), "floor", c.quiet)?;
        rows.push(s.run_phase(a.rate, dur, drain)?);
        s.finish();
    }
    let plan = a.load.plan(c, target, a.load.subscribers)?;
    let mut s = Session::start(plan, a.load.procs, c.server_pid, &c.label, c.quiet)?;
    rows.push(s.run_phase(a.rate, dur, drain)?);
    s.finish();
    print!("{}", report::phase_table(&rows));
    let mut ratios = serde_json::Value::Null;
    if rows.len() == 2 {
        let (f, r) = (&rows[0], &rows[1]);
        let d = ratio(Some(r.deliveries_per_sec), Some(f.deliveries_per_sec));
        let p = ratio(Some(r.latency.p99_ms), Some(f.latency.p99_ms));
        let cpu = ratio(r.server_cpu_us_per_delivery, f.server_cpu_us_per_delivery);
        println!(
            "ratio to floor: deliveries/s {}  p99 {}  server CPU per delivery {}",
            fmt_ratio(d),
            fmt_ratio(p),
            fmt_ratio(cpu)
        );
        ratios =
            serde_json::json!({"deliveries_per_sec": d, "p99": p, "server_cpu_per_delivery": cpu});
    }
    for r in &rows {
        if r.gen_saturated {
            println!(
                "WARNING: [{}] the generator was saturated: the run is not valid",
                r.server
            );
        }
    }
    if let Some(p) = &c.json {
        report::write_json(
            p,
            &serde_json::json!({"scenario": "fanout", "results": rows, "ratio_to_floor": ratios}),
        )?;
    }
    let bad = rows.iter().any(|r| !r.loss.is_exact());
    if bad {
        println!("LOSS: delivered != expected (see the table)");
    }
    Ok(())
}

fn sweep_series(
    a: &SweepArgs,
    target: &Target,
    subs: usize,
    pid: Option<u32>,
    label: &str,
    rows: &mut Vec<PhaseResult>,
) -> anyhow::Result<()> {
    let c = &a.common;
    let plan = a.load.plan(c, target.clone(), subs)?;
    let mut s = Session::start(plan, a.load.procs, pid, label, c.quiet)?;
    let mut over = 0;
    for &rate in &a.rates {
        let r = s.run_phase(
            rate,
            Duration::from_secs_f64(a.duration),
            Duration::from_secs_f64(a.load.drain),
        )?;
        eprint!("{}", report::phase_table(std::slice::from_ref(&r)));
        let failed =
            r.latency.p99_ms > a.p99_budget || !r.loss.is_exact() || r.connections_closed > 0;
        rows.push(r);
        if failed {
            over += 1;
            if over >= a.stop_after {
                break;
            }
        } else {
            over = 0;
        }
        // Stop if connections died (a slow-consumer close ends the series).
        if !s.errors().is_empty() && rows.last().is_some_and(|r| r.connections_closed > 0) {
            eprintln!("[{label}] connections were closed by the server; ending this series");
            break;
        }
    }
    s.finish();
    Ok(())
}

fn sweep(a: SweepArgs) -> anyhow::Result<()> {
    let c = &a.common;
    let target = c.target()?;
    let counts = if a.subscriber_counts.is_empty() {
        vec![a.load.subscribers]
    } else {
        a.subscriber_counts.clone()
    };
    let mut rows = Vec::new();
    for &subs in &counts {
        if a.load.floor {
            let fl = FloorChild::spawn(a.load.floor_workers, a.load.floor_cpus.as_deref(), 3600)?;
            sweep_series(
                &a,
                &floor_target(&target, fl.addr),
                subs,
                Some(fl.pid()),
                "floor",
                &mut rows,
            )?;
        }
        sweep_series(&a, &target, subs, c.server_pid, &c.label, &mut rows)?;
    }
    std::fs::create_dir_all(&a.out)?;
    std::fs::write(a.out.join("sweep.csv"), report::csv(&rows))?;
    let title = format!(
        "fan-out sweep: {} channel(s), {}-byte payloads, {:?} publishing, p99 budget {} ms",
        a.load.channels, a.load.payload, a.load.publish, a.p99_budget
    );
    std::fs::write(
        a.out.join("sweep.svg"),
        report::svg(&rows, a.p99_budget, &title),
    )?;
    println!("{}", report::phase_table(&rows));
    let mut knees = Vec::new();
    for &subs in &counts {
        let mut floor_knee = None;
        for server in ["floor", c.label.as_str()] {
            let series: Vec<&PhaseResult> = rows
                .iter()
                .filter(|r| r.server == server && r.subscribers == subs)
                .collect();
            if series.is_empty() {
                continue;
            }
            let k = report::knee(&series, a.p99_budget);
            let kd = k.as_ref().map(|k| k.deliveries_per_sec);
            if server == "floor" {
                floor_knee = kd;
            }
            let vs = if server != "floor" {
                ratio(kd, floor_knee)
            } else {
                None
            };
            println!(
                "knee [{server}, {subs} subscribers]: {} (p99 budget {} ms){}",
                match &k {
                    Some(k) => format!(
                        "{} events/s = {} deliveries/s, p99 {:.2} ms",
                        k.rate,
                        report::fmt_rate(k.deliveries_per_sec),
                        k.latency.p99_ms
                    ),
                    None => "none (even the lowest rate missed the budget or lost events)".into(),
                },
                a.p99_budget,
                if vs.is_some() {
                    format!(", {} of the floor's knee", fmt_ratio(vs))
                } else {
                    String::new()
                }
            );
            knees.push(serde_json::json!({
                "server": server, "subscribers": subs, "knee_rate": k.as_ref().map(|k| k.rate),
                "knee_deliveries_per_sec": kd, "ratio_to_floor": vs,
            }));
        }
    }
    let doc = serde_json::json!({"scenario": "sweep", "p99_budget_ms": a.p99_budget, "knees": knees, "results": rows});
    report::write_json(&a.out.join("sweep.json"), &doc)?;
    if let Some(p) = &c.json {
        report::write_json(p, &doc)?;
    }
    println!("wrote {}/sweep.csv, sweep.json, sweep.svg", a.out.display());
    Ok(())
}

fn connect_cmd(a: ConnectArgs) -> anyhow::Result<()> {
    let c = &a.common;
    let target = c.target()?;
    let mk = |t: Target| -> anyhow::Result<ConnectPlan> {
        Ok(ConnectPlan {
            target: t,
            connections: a.connections,
            rate: a.rate,
            concurrency: a.concurrency,
            hold: Duration::from_secs_f64(a.hold),
            timeout: Duration::from_secs(c.timeout),
            gen: c.gen()?,
            part: Part::default(),
            t0_ns: 0,
        })
    };
    let mut rows = Vec::new();
    if a.floor {
        let fl = FloorChild::spawn(2, None, 3600)?;
        rows.push(connect::run(
            mk(floor_target(&target, fl.addr))?,
            a.procs,
            Some(fl.pid()),
            "floor",
            c.quiet,
        )?);
    }
    rows.push(connect::run(
        mk(target)?,
        a.procs,
        c.server_pid,
        &c.label,
        c.quiet,
    )?);
    print!("{}", connect::table(&rows));
    for r in &rows {
        if !r.errors.is_empty() {
            println!(
                "[{}] first errors: {:?}",
                r.server,
                &r.errors[..r.errors.len().min(3)]
            );
        }
    }
    if let Some(p) = &c.json {
        report::write_json(
            p,
            &serde_json::json!({"scenario": "connect", "results": rows}),
        )?;
    }
    Ok(())
}

fn presence_cmd(a: PresenceArgs) -> anyhow::Result<()> {
    let c = &a.common;
    let plan = PresencePlan {
        target: c.target()?,
        channels: a.channels,
        residents: a.residents,
        churners: a.churners,
        rate: a.rate,
        duration: Duration::from_secs_f64(a.duration),
        hold: Duration::from_millis(a.hold_ms),
        timeout: Duration::from_secs(c.timeout),
        gen: c.gen()?,
    };
    let r = presence::run(plan, &c.label, c.quiet)?;
    print!("{}", presence::table(&r));
    if let Some(p) = &c.json {
        report::write_json(
            p,
            &serde_json::json!({"scenario": "presence", "results": [r]}),
        )?;
    }
    Ok(())
}

/// The server's pid: given, or the process listening on the first WebSocket port.
fn server_pid(c: &Common, target: &Target) -> Option<u32> {
    c.server_pid.or_else(|| {
        let pid = serverwatch::find_listener(target.ws[0].addr.port());
        if let Some(p) = pid {
            if !c.quiet {
                eprintln!(
                    "server pid {p} (listening on port {})",
                    target.ws[0].addr.port()
                );
            }
        }
        pid
    })
}

fn abuse_cmd(a: AbuseArgs) -> anyhow::Result<()> {
    use ringcast_loadtest::scenario::abuse::{self, AbusePlan, Attack};
    use ringcast_loadtest::scenario::abuse_run::{self, AbuseRun};
    anyhow::ensure!(
        a.common.cpus.is_none() || a.honest_cpus.is_none(),
        "give --honest-cpus or --cpus, not both (they both pin the honest clients)"
    );
    let mut common = a.common.clone();
    if a.honest_cpus.is_some() {
        common.cpus = a.honest_cpus.clone();
    }
    let c = &common;
    let attack_cpus = a
        .attack_cpus
        .as_deref()
        .map(procfs::parse_cpu_list)
        .transpose()?;
    let target = c.target()?;
    let pid = server_pid(c, &target);
    let sampler = pid.map(|p| Sampler::start(p, Duration::from_millis(a.sample_ms.max(10))));
    let plan = a.load.plan(c, target.clone(), a.load.subscribers)?;
    let honest_cpus = plan.gen.cpus.clone();
    let honest_channels = (0..plan.channels).map(|i| plan.channel(i)).collect();
    let attacks = if a.attacks.is_empty() {
        Attack::ALL.to_vec()
    } else {
        a.attacks.clone()
    };
    let run = AbuseRun {
        plan: AbusePlan {
            target: target.clone(),
            sources: abuse::loopback_sources(a.abuse_source_first, a.abuse_sources),
            connections: a.abuse_connections,
            idle_connections: a.idle_connections,
            flood_rate: a.flood_rate,
            honest_channels,
            timeout: Duration::from_secs(c.timeout),
            cpus: attack_cpus,
        },
        attacks,
        together: !a.no_together,
        rate: a.rate,
        duration: Duration::from_secs_f64(a.duration),
        drain: Duration::from_secs_f64(a.load.drain),
        max_p99_ratio: a.max_p99_ratio,
        max_rss_bytes: a.max_rss_mb << 20,
        max_open_files: a.max_open_files,
        honest_cpus,
        quiet: c.quiet,
    };
    let mut s = Session::start(plan, a.load.procs, pid, &c.label, c.quiet)?;
    let rep = abuse_run::run(&run, &mut s, sampler.as_ref());
    s.finish();
    let rep = rep?;
    print!("{}", abuse_run::text(&rep));
    if let Some(p) = &c.json {
        report::write_json(p, &serde_json::json!({"scenario": "abuse", "report": rep}))?;
    }
    Ok(())
}

fn soak_cmd(a: SoakArgs) -> anyhow::Result<()> {
    use ringcast_loadtest::scenario::soak::{self, SoakRun};
    let c = &a.common;
    let target = c.target()?;
    let pid = server_pid(c, &target);
    let plan = a.load.plan(c, target.clone(), a.load.subscribers)?;
    let run = SoakRun {
        target,
        duration: Duration::from_secs_f64(a.minutes * 60.0),
        rate: a.rate,
        sample: Duration::from_secs_f64(a.sample_secs),
        warmup: Duration::from_secs_f64(a.warmup_secs),
        drain: Duration::from_secs_f64(a.load.drain),
        churn_rate: a.churn_rate,
        presence_rate: a.presence_rate,
        presence_channels: a.presence_channels,
        presence_hold: Duration::from_millis(a.presence_hold_ms),
        rss_tolerance: a.rss_tolerance,
        timeout: Duration::from_secs(c.timeout),
        quiet: c.quiet,
    };
    let mut s = Session::start(plan, a.load.procs, pid, &c.label, c.quiet)?;
    let rep = soak::run(&run, &mut s, pid);
    s.finish();
    let rep = rep?;
    std::fs::create_dir_all(&a.out)?;
    std::fs::write(a.out.join("soak.csv"), soak::csv(&rep))?;
    std::fs::write(a.out.join("soak.svg"), soak::svg(&rep))?;
    let doc = serde_json::json!({"scenario": "soak", "report": rep});
    report::write_json(&a.out.join("soak.json"), &doc)?;
    if let Some(p) = &c.json {
        report::write_json(p, &doc)?;
    }
    print!("{}", soak::text(&rep));
    println!("wrote {}/soak.csv, soak.json, soak.svg", a.out.display());
    Ok(())
}
