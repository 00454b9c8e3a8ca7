//! `supa-realtime-bench`: loopback benchmarks of supa-realtime, one command, one run.
//!
//! ```sh
//! scripts/bench.sh            # release build, full run, writes BENCHMARKS.md and bench/*.png
//! scripts/bench.sh --quick    # small sizes, < 60 s (CI keeps the harness working with it)
//! ```
//!
//! Every figure is measured in this run next to its reference from the same run: the raw
//! WebSocket fan-out server (tokio-tungstenite, same frames, same socket count, no protocol)
//! for the server, the official Python client for ours. Servers run as separate processes
//! (their RSS and CPU read from /proc). Nothing here asserts a time: the report says where
//! each target stands.
#![allow(unreachable_pub)]
#![allow(clippy::unwrap_used)]

mod baseline;
mod burst;
mod charts;
mod cluster;
mod common;
mod conns;
mod fanout;
mod pg;
mod presence;
mod python;
mod report;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use common::*;
use fanout::{FanoutParams, Target};

#[derive(Parser)]
#[command(
    about = "Loopback benchmarks of supa-realtime; writes BENCHMARKS.md and charts",
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    /// Small sizes (CI): the harness works, the figures mean little.
    #[arg(long)]
    quick: bool,
    /// The report to write.
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,
    /// Where the PNG charts (and raw results.json) go.
    #[arg(long, default_value = "bench")]
    charts: PathBuf,
    /// The server binary (release build).
    #[arg(long, default_value = "target/release/supa-realtime-server")]
    server_bin: PathBuf,
    /// Python with `realtime` (and `supa_realtime`) installed.
    #[arg(long, default_value = ".venv/bin/python")]
    python: PathBuf,
    /// The Python client driver.
    #[arg(long, default_value = "bench/py_client.py")]
    py_script: PathBuf,
    /// The Python burst driver.
    #[arg(long, default_value = "bench/py_burst.py")]
    py_burst_script: PathBuf,
    /// Override the burst size (200,000 in a full run).
    #[arg(long)]
    burst: Option<usize>,
    /// PostgreSQL for postgres_changes and database broadcast (skipped without one).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Run only these scenarios (comma list of: fanout, connections, python, postgres, presence,
    /// burst, presence-clients, cluster).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Record a `perf` profile of the server during this fan-out or scenario name
    /// (e.g. `fanout-100x100-v1`, `presence`, `postgres`); written to `bench/perf-<name>.txt`.
    #[arg(long)]
    perf: Option<String>,
    /// Override the number of presence clients (1,000 in a full run).
    #[arg(long)]
    presence_clients: Option<usize>,
    /// Run the postgres scenario against this server binary too (before the one measured),
    /// e.g. a build of the previous commit: the report shows both and their ratio.
    #[arg(long)]
    pg_reference_bin: Option<PathBuf>,
    /// A note put at the top of the report (e.g. the load when the run started).
    #[arg(long, default_value = "")]
    note: String,
}

#[derive(Subcommand)]
enum Sub {
    /// The raw WebSocket fan-out server (the baseline), run as its own process.
    BaselineServer {
        #[arg(long)]
        addr: String,
    },
    /// The raw burst sender (see `burst`), run as its own process.
    BurstServer {
        #[arg(long)]
        addr: String,
        #[arg(long)]
        n: usize,
    },
}

/// Sizes of one run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sizes {
    pub quick: bool,
    pub fan_1: usize,
    pub fan_channels: usize,
    pub fan_subs: usize,
    pub measure_s: f64,
    pub connections: usize,
    pub py_flood_s: f64,
    pub py_rtts: usize,
    pub pg_latency: usize,
    pub pg_changes: usize,
    pub pg_subs: usize,
    pub presence: usize,
    pub burst: usize,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                quick,
                fan_1: 100,
                fan_channels: 10,
                fan_subs: 10,
                measure_s: 1.0,
                connections: 500,
                py_flood_s: 1.0,
                py_rtts: 50,
                pg_latency: 50,
                pg_changes: 1000,
                pg_subs: 10,
                presence: 50,
                burst: 5000,
            }
        } else {
            Sizes {
                quick,
                fan_1: 1000,
                fan_channels: 100,
                fan_subs: 100,
                measure_s: 5.0,
                connections: 10_000,
                py_flood_s: 5.0,
                py_rtts: 500,
                pg_latency: 1000,
                pg_changes: 20_000,
                pg_subs: 100,
                presence: 1000,
                burst: 200_000,
            }
        }
    }
}

/// Everything measured; a scenario that failed holds its error.
#[derive(Default, serde::Serialize)]
pub struct Results {
    pub sizes: Option<Sizes>,
    pub fanout: Vec<(String, Result<fanout::FanoutResult, String>)>,
    pub conns_baseline: Option<Result<conns::ConnsResult, String>>,
    pub conns_server: Option<Result<conns::ConnsResult, String>>,
    pub python: Option<Result<python::PyResult, String>>,
    pub pg: Option<Result<pg::PgResult, String>>,
    /// The postgres scenario against `--pg-reference-bin`.
    pub pg_reference: Option<Result<pg::PgResult, String>>,
    pub presence: Option<Result<presence::PresenceResult, String>>,
    pub burst: Option<Result<burst::BurstResult, String>>,
    pub presence_clients: Option<Result<presence::ClientPresenceResult, String>>,
    /// Fan-out 1 x N: one node, one node through Redis, three nodes through Redis.
    pub cluster_fanout: Vec<(String, Result<fanout::FanoutResult, String>)>,
    /// Presence: one node, three nodes.
    pub cluster_presence: Vec<(String, Result<presence::PresenceResult, String>)>,
    pub perf: Option<String>,
    pub load_before: String,
    pub load_after: String,
    pub started: String,
    pub secs: f64,
}

struct Ctx {
    cli: Cli,
    bar: ProgressBar,
    self_exe: PathBuf,
    logs: PathBuf,
}

impl Ctx {
    fn wants(&self, s: &str) -> bool {
        self.cli.only.is_empty() || self.cli.only.iter().any(|o| o == s)
    }

    async fn baseline(&self) -> Res<Proc> {
        let addr = format!("127.0.0.1:{}", free_port());
        Proc::start(
            "baseline",
            &self.self_exe,
            &["baseline-server".into(), "--addr".into(), addr.clone()],
            &[],
            addr,
            None,
        )
        .await
    }

    async fn server(&self, extra: &[String], env: &[(&str, String)], tag: &str) -> Res<Proc> {
        let bin = self.cli.server_bin.clone();
        self.server_from(&bin, extra, env, tag).await
    }

    async fn server_from(
        &self,
        bin: &std::path::Path,
        extra: &[String],
        env: &[(&str, String)],
        tag: &str,
    ) -> Res<Proc> {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut args: Vec<String> = [
            "serve",
            "--addr",
            &addr,
            "--max-events-per-second",
            "1000000000",
            "--max-joins-per-second",
            "1000000",
            "--max-concurrent-users",
            "1000000",
            "--max-channels-per-client",
            "1000",
            "--max-presence-events-per-second",
            "1000000000",
            "--client-presence-max-calls",
            "1000",
            "--idle-timeout-ms",
            "3600000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().cloned());
        if !extra.iter().any(|a| a == "--log-level") {
            // BENCH_SERVER_LOG_LEVEL: e.g. `debug` when a scenario fails (logs in
            // $TMPDIR/supa-realtime-bench-logs/)
            let level = std::env::var("BENCH_SERVER_LOG_LEVEL").unwrap_or_else(|_| "warn".into());
            args.extend(["--log-level".to_string(), level]);
        }
        let p = Proc::start(
            "server",
            bin,
            &args,
            env,
            addr,
            Some(self.logs.join(format!("server-{tag}.log"))),
        )
        .await?;
        Ok(p)
    }

    /// Start `perf record` on `pid` when this scenario is the one asked for.
    fn perf_start(&self, name: &str, pid: u32) -> Option<std::process::Child> {
        if self.cli.perf.as_deref() != Some(name) {
            return None;
        }
        perf_record(&self.cli.charts, name, pid)
    }

    fn perf_stop(&self, name: &str, child: Option<std::process::Child>, results: &mut Results) {
        if let Some(p) = perf_finish(&self.cli.charts, name, child) {
            results.perf = Some(p);
        }
    }
}

/// `perf record` of `pid` with DWARF stacks: `cpu-clock` samples (this VM has no hardware
/// counters), or the event in BENCH_PERF_EVENT (`page-faults` shows where memory is first
/// touched: a memory profile).
pub fn perf_record(dir: &std::path::Path, name: &str, pid: u32) -> Option<std::process::Child> {
    let data = dir.join(format!("perf-{name}.data"));
    let event = std::env::var("BENCH_PERF_EVENT").unwrap_or_else(|_| "cpu-clock".into());
    let mut cmd = std::process::Command::new("perf");
    cmd.args(["record", "-e", &event]);
    if event == "cpu-clock" {
        cmd.args(["-F", "499"]);
    }
    cmd.args(["--call-graph", "dwarf,16384", "-p", &pid.to_string(), "-o"])
        .arg(&data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()
}

/// Stop the recording and write `perf-<name>.txt` (flat profile by symbol) and
/// `perf-<name>-inclusive.txt` (time under each symbol); the path of the flat profile.
pub fn perf_finish(
    dir: &std::path::Path,
    name: &str,
    child: Option<std::process::Child>,
) -> Option<String> {
    let mut child = child?;
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let data = dir.join(format!("perf-{name}.data"));
    let flat = std::process::Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "--percent-limit",
            "0.5",
            "--sort",
            "dso,symbol",
            "-g",
            "none",
            "-i",
        ])
        .arg(&data)
        .output()
        .ok()?;
    let txt = dir.join(format!("perf-{name}.txt"));
    std::fs::write(&txt, &flat.stdout).ok()?;
    // inclusive time by symbol: which of our frames (or the libraries') the cost sits under
    if let Ok(o) = std::process::Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--children",
            "--percent-limit",
            "1",
            "--sort",
            "symbol",
            "-g",
            "none",
            "-i",
        ])
        .arg(&data)
        .output()
    {
        let _ = std::fs::write(dir.join(format!("perf-{name}-inclusive.txt")), &o.stdout);
    }
    let _ = std::fs::remove_file(&data);
    Some(format!("{name}: {}", txt.display()))
}

/// A line for the log: above the progress bar on a terminal, plain stderr otherwise (CI).
pub fn say(bar: &ProgressBar, msg: impl AsRef<str>) {
    if bar.is_hidden() {
        eprintln!("{}", msg.as_ref());
    } else {
        bar.println(msg);
    }
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Some(Sub::BurstServer { addr, n }) = &cli.command {
        return match burst::serve(addr, *n) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("burst server: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    if let Some(Sub::BaselineServer { addr }) = &cli.command {
        return match baseline::run(addr) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("baseline server: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let limit = raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let code = rt.block_on(async move {
        let self_exe = std::env::current_exe().expect("current exe");
        let _ = std::fs::create_dir_all(&cli.charts);
        let logs = std::env::temp_dir().join("supa-realtime-bench-logs");
        let _ = std::fs::create_dir_all(&logs);
        let bar = ProgressBar::new(1);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        let ctx = Ctx {
            cli,
            bar,
            self_exe,
            logs,
        };
        let mut r = Results {
            load_before: load(),
            started: report::now_utc(),
            ..Default::default()
        };
        let t0 = std::time::Instant::now();
        run_all(&ctx, &mut r, limit).await;
        r.secs = t0.elapsed().as_secs_f64();
        r.load_after = load();
        ctx.bar.finish_with_message("done");
        match report::write(&ctx.cli.out, &ctx.cli.charts, &r, &ctx.cli.note) {
            Ok(()) => {
                eprintln!(
                    "wrote {} and charts in {}",
                    ctx.cli.out.display(),
                    ctx.cli.charts.display()
                );
                report::print_summary(&r);
                0
            }
            Err(e) => {
                eprintln!("cannot write the report: {e}");
                1
            }
        }
    });
    std::process::ExitCode::from(code)
}

fn fmt_err<T>(r: Res<T>) -> Result<T, String> {
    r.map_err(|e| e.to_string())
}

async fn run_all(ctx: &Ctx, r: &mut Results, nofile: u64) {
    let mut s = Sizes::new(ctx.cli.quick);
    if let Some(n) = ctx.cli.presence_clients {
        s.presence = n;
    }
    if let Some(n) = ctx.cli.burst {
        s.burst = n;
    }
    r.sizes = Some(s.clone());
    let bar = &ctx.bar;
    let mut steps = 0;
    if ctx.wants("fanout") {
        steps += 6;
    }
    if ctx.wants("connections") {
        steps += 2;
    }
    if ctx.wants("python") {
        steps += 1;
    }
    if ctx.wants("postgres") {
        steps += 1;
    }
    if ctx.wants("presence") {
        steps += 1;
    }
    if ctx.wants("burst") {
        steps += 1;
    }
    if ctx.wants("presence-clients") {
        steps += 1;
    }
    if ctx.wants("cluster") {
        steps += 5;
    }
    bar.set_length(steps);
    if nofile < s.connections as u64 + 1000 {
        crate::say(
            bar,
            format!("warning: open-file limit {nofile}: connection counts may fail"),
        );
    }
    let measure = Duration::from_secs_f64(s.measure_s);
    let params = |channels: usize, subs: usize| FanoutParams {
        channels,
        subs,
        warmup: Duration::from_millis(if s.quick { 300 } else { 1000 }),
        measure,
        window: (16 * subs as u64).max(16_000),
        paced_rate: None,
        paced: Duration::from_secs_f64(s.measure_s.min(3.0)),
        pad: 48,
    };

    if ctx.wants("fanout") {
        let shapes = [(1usize, s.fan_1), (s.fan_channels, s.fan_subs)];
        for (ch, subs) in shapes {
            let mut p = params(ch, subs);
            let shape = format!("{ch}x{subs}");
            for target in [
                Target::Baseline,
                Target::Server { v2: false },
                Target::Server { v2: true },
            ] {
                let name = match target {
                    Target::Baseline => format!("fanout-{shape}-baseline"),
                    Target::Server { v2 } => {
                        format!("fanout-{shape}-{}", if v2 { "v2" } else { "v1" })
                    }
                };
                bar.set_message(name.clone());
                let res: Res<fanout::FanoutResult> = async {
                    let mut proc = match target {
                        Target::Baseline => ctx.baseline().await?,
                        Target::Server { .. } => ctx.server(&[], &[], &name).await?,
                    };
                    let perf = ctx.perf_start(&name, proc.pid());
                    let out = fanout::run(target, &proc, &[], &p, bar).await;
                    ctx.perf_stop(&name, perf, r);
                    proc.stop();
                    out
                }
                .await;
                crate::say(bar, report::line_fanout(&name, &res));
                if let (Target::Baseline, Ok(b)) = (target, &res) {
                    // the servers' latency is measured at the target rate: half the ceiling
                    p.paced_rate = Some((b.deliveries_per_sec * 0.5) as u64);
                }
                r.fanout.push((name, fmt_err(res)));
                bar.inc(1);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    if ctx.wants("connections") {
        for server in [false, true] {
            let name = if server {
                "connections-server"
            } else {
                "connections-baseline"
            };
            bar.set_message(name);
            let res: Res<conns::ConnsResult> = async {
                let mut proc = if server {
                    ctx.server(&[], &[], name).await?
                } else {
                    ctx.baseline().await?
                };
                let perf = ctx.perf_start(name, proc.pid());
                let out =
                    conns::run(&proc, server, s.connections, Duration::from_secs(25), bar).await;
                ctx.perf_stop(name, perf, r);
                proc.stop();
                out
            }
            .await;
            crate::say(
                bar,
                format!(
                    "{name}: {}",
                    match &res {
                        Ok(c) => format!(
                            "{:.0} bytes/connection over {} connections",
                            c.bytes_per_conn, c.connections
                        ),
                        Err(e) => format!("failed: {e}"),
                    }
                ),
            );
            if server {
                r.conns_server = Some(fmt_err(res));
            } else {
                r.conns_baseline = Some(fmt_err(res));
            }
            bar.inc(1);
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
    }

    if ctx.wants("python") {
        bar.set_message("python clients");
        let res: Res<python::PyResult> = async {
            let mut proc = ctx
                .server(
                    &[
                        "--slow-consumer-policy".into(),
                        "drop".into(),
                        "--log-level".into(),
                        "error".into(),
                    ],
                    &[],
                    "python",
                )
                .await?;
            let perf = ctx.perf_start("python", proc.pid());
            let py_perf = ctx
                .cli
                .perf
                .clone()
                .filter(|p| p.starts_with("python-"))
                .map(|p| (p, ctx.cli.charts.clone()));
            let out = python::run(
                &proc,
                &ctx.cli.python,
                &ctx.cli.py_script,
                Duration::from_secs_f64(s.py_flood_s),
                s.py_rtts,
                py_perf,
                bar,
            )
            .await;
            ctx.perf_stop("python", perf, r);
            proc.stop();
            out
        }
        .await;
        crate::say(
            bar,
            format!(
                "python: {}",
                match &res {
                    Ok(p) => format!(
                        "ours {:.0}/s, official {:.0}/s; rtt p50 ours {:.2} ms, official {:.2} ms",
                        p.ours.per_sec, p.official.per_sec, p.ours.rtt.p50, p.official.rtt.p50
                    ),
                    Err(e) => format!("failed: {e}"),
                }
            ),
        );
        r.python = Some(fmt_err(res));
        bar.inc(1);
    }

    if ctx.wants("postgres") {
        bar.set_message("postgres_changes");
        if let Some(reference) = ctx.cli.pg_reference_bin.clone() {
            // the same scenario against another build (e.g. the previous release), first
            let res = pg::scenario(ctx, &reference, &s, r, bar).await;
            crate::say(
                bar,
                format!("postgres (reference build): {}", pg::summary(&res)),
            );
            r.pg_reference = Some(res);
        }
        let bin = ctx.cli.server_bin.clone();
        let res = pg::scenario(ctx, &bin, &s, r, bar).await;
        crate::say(bar, format!("postgres: {}", pg::summary(&res)));
        r.pg = Some(res);
        bar.inc(1);
    }

    if ctx.wants("presence") {
        bar.set_message("presence");
        let res: Res<presence::PresenceResult> = async {
            let mut proc = ctx.server(&[], &[], "presence").await?;
            let perf = ctx.perf_start("presence", proc.pid());
            let out = presence::run(&proc, &[], s.presence, bar).await;
            ctx.perf_stop("presence", perf, r);
            proc.stop();
            out
        }
        .await;
        crate::say(
            bar,
            format!(
                "presence: {}",
                match &res {
                    Ok(p) => format!(
                        "{} clients tracked in {:.2} s, full state everywhere in {:.2} s",
                        p.clients, p.track_secs, p.full_state_secs
                    ),
                    Err(e) => format!("failed: {e}"),
                }
            ),
        );
        r.presence = Some(fmt_err(res));
        bar.inc(1);
    }

    if ctx.wants("burst") {
        bar.set_message("burst");
        let res: Res<burst::BurstResult> = async {
            let addr = format!("127.0.0.1:{}", free_port());
            let mut proc = Proc::start(
                "burst-server",
                &ctx.self_exe,
                &[
                    "burst-server".into(),
                    "--addr".into(),
                    addr.clone(),
                    "--n".into(),
                    s.burst.to_string(),
                ],
                &[],
                addr,
                Some(ctx.logs.join("burst-server.log")),
            )
            .await?;
            let out = burst::run(
                &proc,
                &ctx.cli.python,
                &ctx.cli.py_burst_script,
                s.burst,
                bar,
            )
            .await;
            proc.stop();
            out
        }
        .await;
        r.burst = Some(fmt_err(res));
        bar.inc(1);
    }

    if ctx.wants("presence-clients") {
        bar.set_message("presence-clients");
        let res: Res<presence::ClientPresenceResult> = async {
            let mut proc = ctx.server(&[], &[], "presence-clients").await?;
            let out = presence::run_clients(&proc, s.presence, bar).await;
            proc.stop();
            out
        }
        .await;
        crate::say(
            bar,
            format!(
                "presence (Rust clients): {}",
                match &res {
                    Ok(p) => format!(
                        "{} clients all see the full state in {:.2} s; peak RSS {} MiB",
                        p.clients,
                        p.full_state_secs,
                        p.peak_rss_kb / 1024
                    ),
                    Err(e) => format!("failed: {e}"),
                }
            ),
        );
        r.presence_clients = Some(fmt_err(res));
        bar.inc(1);
    }
    if ctx.wants("cluster") {
        cluster::run(ctx, &s, params(1, s.fan_1), r).await;
    }
}
