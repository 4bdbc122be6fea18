//! Scale and event storms against a simulated Docker Engine (benches/sim): figures, not a test.
//!
//! The real agent binary (`CARGO_BIN_EXE_dso`, release build under `cargo bench`) talks through
//! bollard to the simulator on a Unix socket; secrets come from a `process` provider that is this
//! bench binary itself (`DSO_SIM_PROVIDER=1`: every path resolves to a value derived from it),
//! so no backend limits what is measured. Simulated containers have no process, so every write
//! takes the **exec path** (`agent.write_mode = "exec"`); each exec costs `DSO_SIM_EXEC_MS`
//! (default 50 ms, what a real `docker exec` costs here). No dockerd is needed.
//!
//! Scenarios (`DSO_SIM_SCENARIOS`, comma-separated, default `idle,shared,distinct,storm`):
//! - `idle`: the agent with nothing to do for `DSO_SIM_IDLE_SECS` (default 60): CPU and wake-ups
//!   per second (context switches summed over all its threads, from `/proc/<pid>/task/*/status`).
//! - `shared` / `distinct`: `DSO_SIM_CONTAINERS` (default 10,000) containers × 10 secrets, the same
//!   10 secrets for all (`shared`) or 10 of their own each (`distinct`: `cache.max_entries` raised
//!   to 200,000 and the provider's `rate_limit` set to 0 — unlimited — as an operator would).
//!   Agent RSS at 1k / 5k / 10k (linear?), idle wake-ups with all of them served, then an agent
//!   restart: start-up reconcile time, writes and reloads (both must be 0).
//! - `storm`: for each rate of `DSO_SIM_RATES` (events/min, default `10000,50000,100000,200000`),
//!   `DSO_SIM_STORM_SECS` (default 30) of `start`/`die`/`destroy` events, half of the containers
//!   labelled (10 shared secrets) and half not (each unlabelled start still costs an inspect);
//!   every container lives `DSO_SIM_LIFETIME_SECS` (default 10). Reports events the watcher
//!   received against those emitted, `dso_events_dropped_total`, labelled containers injected
//!   against started, duplicate writes, event→write latency p50/p99, reconcile repairs, and the
//!   agent's CPU-seconds per 1,000 events. `DSO_SIM_PERF=1` records the agent with `perf` during
//!   each storm and prints the top of `perf report`.
//! - `faults`: a 10,000 events/min storm while the event stream is cut every second, then one with
//!   inspect answering after 10 s (`DSO_SIM_FAULT_INSPECT_SECS`), then one whose event stream
//!   stalls (events held back, then delivered) for `DSO_SIM_FAULT_STALL_SECS` (default 10) from
//!   2 s in, while nearly every event is a start (also alone: `stall`).
//!
//! Agent settings are the defaults unless `DSO_SIM_SHARDS`, `DSO_SIM_SHARD_CONCURRENCY`,
//! `DSO_SIM_EXEC_CONCURRENCY`, `DSO_SIM_QUEUE` are set. `DSO_SIM_NICE=-10` runs the simulator and the agent at a higher
//! priority on a shared host (printed with the figures). Run: `cargo bench --bench storm` (no test
//! environment needed).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod sim;

use common::agent::{proc_stats, Agent, ProcStats};
use common::*;
use sim::{Sim, SimConfig};

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const DIR: &str = "/run/secrets/dso";
const SECRETS: usize = 10;

/// The `process` provider mode of this binary: JSON-RPC on stdin/stdout, every path exists.
fn provider_main() {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let Ok(req) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let id = req.get("id").cloned().unwrap_or(serde_json::Value::Null);
        let path = req
            .pointer("/params/path")
            .and_then(|p| p.as_str())
            .unwrap_or("");
        let result = match req.get("method").and_then(|m| m.as_str()) {
            Some("initialize") => {
                serde_json::json!({"protocol": 1, "capabilities": {"version": true}})
            }
            Some("resolve") => {
                serde_json::json!({"value": format!("value-of-{path}"), "version": "1"})
            }
            Some("version") => serde_json::json!({"version": "1"}),
            Some("shutdown") => {
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::json!({"jsonrpc": "2.0", "id": id, "result": null})
                );
                let _ = out.flush();
                return;
            }
            _ => serde_json::Value::Null,
        };
        let _ = writeln!(
            out,
            "{}",
            serde_json::json!({"jsonrpc": "2.0", "id": id, "result": result})
        );
        let _ = out.flush();
    }
}

/// Agent settings a scenario changes.
#[derive(Clone)]
struct Opts {
    cache_max_entries: usize,
    rate_limit: u32,
    refresh: &'static str,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            cache_max_entries: 10_000,
            rate_limit: 100,
            refresh: "1m",
        }
    }
}

/// A simulator and an agent on it, in a temporary directory.
struct Rig {
    // Field order = drop order: the agent goes before the simulator.
    agent: Agent,
    sim: Sim,
    config: PathBuf,
    dir: tempfile::TempDir,
}

fn write_config(dir: &Path, docker_host: &str, opts: &Opts) -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let mut agent = format!(
        "[agent]\nlisten = \"127.0.0.1:0\"\ndocker_host = \"{docker_host}\"\nwrite_mode = \"exec\"\n\
         reconcile_interval = \"0s\"\nstate_dir = \"{}\"\nadmin_socket = \"{}\"\n",
        dir.join("state").display(),
        dir.join("dso.sock").display()
    );
    for (env, key) in [
        ("DSO_SIM_SHARDS", "shards"),
        ("DSO_SIM_SHARD_CONCURRENCY", "shard_concurrency"),
        ("DSO_SIM_EXEC_CONCURRENCY", "exec_concurrency"),
        ("DSO_SIM_QUEUE", "queue_capacity"),
    ] {
        if let Ok(v) = std::env::var(env) {
            agent.push_str(&format!("{key} = {v}\n"));
        }
    }
    let cfg = format!(
        "{agent}\n[cache]\nmax_entries = {}\n\n[providers.sim]\ntype = \"process\"\ncommand = \"{}\"\n\
         env = {{ DSO_SIM_PROVIDER = \"1\" }}\nrate_limit = {}\nrefresh_interval = \"{}\"\ntimeout = \"30s\"\n",
        opts.cache_max_entries,
        exe.display(),
        opts.rate_limit,
        opts.refresh
    );
    let path = dir.join("dso.toml");
    std::fs::write(&path, cfg).expect("config");
    path
}

fn rig(sim_config: SimConfig, opts: &Opts) -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = Sim::start(&dir.path().join("docker.sock"), sim_config);
    let config = write_config(dir.path(), &sim.docker_host(), opts);
    let agent = start_agent(&config, dir.path());
    Rig {
        agent,
        sim,
        config,
        dir,
    }
}

fn start_agent(config: &Path, dir: &Path) -> Agent {
    Agent::start(
        env!("CARGO_BIN_EXE_dso"),
        config,
        &dir.join("agent.log"),
        &[("DSO_LOG", "info")],
    )
}

/// Labels of a container with 10 secrets: shared paths, or paths of its own (`distinct`).
fn labels(i: usize, distinct: bool) -> BTreeMap<String, String> {
    (0..SECRETS)
        .map(|j| {
            let path = if distinct {
                format!("c{i}/s{j}")
            } else {
                format!("shared/s{j}")
            };
            (format!("dso.secret.s{j}"), format!("sim/{path}"))
        })
        .collect()
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// Wake-ups per second and CPU % of `pid` over `secs`.
fn idle(pid: u32, secs: u64) -> (f64, f64) {
    let a = proc_stats(pid);
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let b = proc_stats(pid);
    let dt = t.elapsed().as_secs_f64();
    (
        (b.ctx_switches - a.ctx_switches) as f64 / dt,
        (b.cpu_s - a.cpu_s) / dt * 100.0,
    )
}

/// Waits until `f()` holds (polling every 50 ms) or `timeout`; returns whether it held.
fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

fn print_stats(label: &str, s: &ProcStats) {
    println!(
        "  {label:<34} RSS {:>6.1} MB  VmHWM {:>6.1} MB  threads {:>3}  fds {:>4}  CPU {:>7.2} s",
        mb(s.rss_kb),
        mb(s.hwm_kb),
        s.threads,
        s.fds,
        s.cpu_s
    );
}

fn scenario_idle(secs: u64) {
    println!("\n== idle: the agent with nothing to do (no container) for {secs} s");
    let r = rig(SimConfig::default(), &Opts::default());
    // Let start-up finish (probe, reconcile, blocking-pool threads that idle out after 10 s).
    std::thread::sleep(Duration::from_secs(12));
    let (wakeups, cpu) = idle(r.agent.pid, secs);
    print_stats("idle, 0 containers", &r.agent.stats());
    println!(
        "  idle: {wakeups:.2} wake-ups/s (context switches, all threads), CPU {cpu:.3} %   [target < 1/s, < 0.1 %]"
    );
}

fn scenario_containers(n: usize, distinct: bool, start_rate: f64, idle_secs: u64) {
    let mode = if distinct { "distinct" } else { "shared" };
    let opts = if distinct {
        Opts {
            cache_max_entries: 200_000,
            rate_limit: 0,
            ..Opts::default()
        }
    } else {
        Opts::default()
    };
    println!(
        "\n== {mode}: {n} simulated containers × {SECRETS} secrets ({}), exec path, exec {} ms",
        if distinct {
            "10 of their own each; cache.max_entries = 200000, rate_limit = 0 (unlimited)"
        } else {
            "the same 10 for all"
        },
        exec_ms()
    );
    let mut r = rig(sim_config(), &opts);
    std::thread::sleep(Duration::from_secs(1));
    let s0 = r.agent.stats();
    print_stats("0 containers", &s0);
    let mut checkpoints: Vec<usize> = [1_000, 5_000, 10_000]
        .into_iter()
        .filter(|c| *c < n)
        .collect();
    checkpoints.push(n);
    let mut rows: Vec<(usize, ProcStats)> = vec![(0, s0)];
    let mut started = 0usize;
    let t_all = Instant::now();
    for &cp in &checkpoints {
        let t = Instant::now();
        let base = started;
        while started < cp {
            // Pace the starts at `start_rate` per second.
            let due = base + (t.elapsed().as_secs_f64() * start_rate) as usize + 1;
            while started < cp.min(due) {
                r.sim
                    .start_container(&format!("sim-{started}"), labels(started, distinct), &[DIR]);
                started += 1;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let last_start = Instant::now();
        let ok = wait_for(Duration::from_secs(600), || r.sim.ready_count().0 >= cp);
        let ready_after = last_start.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs(2));
        let s = r.agent.stats();
        print_stats(&format!("{cp} containers served"), &s);
        println!(
            "    all {cp} ready: {} ({:.1} s for this step, last start → last ready {ready_after:.2} s)",
            if ok { "yes" } else { "NO" },
            t.elapsed().as_secs_f64()
        );
        rows.push((cp, s));
    }
    println!(
        "  total {:.1} s for {n} containers",
        t_all.elapsed().as_secs_f64()
    );
    // Linearity: KB per container between checkpoints.
    for w in rows.windows(2) {
        let (n0, a) = w[0];
        let (n1, b) = w[1];
        println!(
            "    {n0:>6} → {n1:>6}: {:+.2} KB RSS per container",
            (b.rss_kb as f64 - a.rss_kb as f64) / (n1 - n0) as f64
        );
    }
    let m = r.agent.metrics();
    println!(
        "  injections {:?}, cache entries {}, provider requests ok {}",
        nonzero(m.by_label("dso_injections_total{result=")),
        m.get("dso_cache_entries"),
        m.get("dso_provider_requests_total{provider=\"sim\",result=\"ok\"}")
    );
    if idle_secs > 0 {
        let (w, cpu) = idle(r.agent.pid, idle_secs);
        println!(
            "  idle with {n} served (refresh_interval 1m): {w:.2} wake-ups/s, CPU {cpu:.3} % over {idle_secs} s"
        );
    }

    // Restart: every container already holds its secrets.
    let stop = r.agent.stop();
    r.sim.reset_counters();
    let t = Instant::now();
    r.agent = start_agent(&r.config, r.dir.path());
    let ok = wait_for(Duration::from_secs(600), || {
        r.agent
            .metrics()
            .get("dso_injections_total{result=\"unchanged\"}")
            >= n as f64
    });
    let reconcile = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let execs = r.sim.execs();
    let writes = execs.iter().filter(|e| e.exit_code == 0).count();
    let m = r.agent.metrics();
    let reloads: f64 = m
        .by_label("dso_reloads_total{policy=")
        .values()
        .sum::<f64>()
        + 0.0;
    println!(
        "  restart (SIGTERM took {:.2} s): {} in {reconcile:.2} s after spawn (exec path), execs {}, writes {writes}, reloads {reloads}, results {:?}   [target < 5 s for 1,000 on the direct path; 0 writes, 0 reloads]",
        stop.as_secs_f64(),
        if ok { "all unchanged" } else { "NOT all unchanged" },
        execs.len(),
        nonzero(m.by_label("dso_injections_total{result="))
    );
    print_stats("after restart", &r.agent.stats());
}

fn exec_ms() -> u64 {
    env_num("DSO_SIM_EXEC_MS", 50u64)
}

fn sim_config() -> SimConfig {
    SimConfig {
        exec_latency: Duration::from_millis(exec_ms()),
        ..SimConfig::default()
    }
}

/// What one storm measured.
struct StormResult {
    rate: u64,
    emitted: u64,
    received: f64,
    dropped: BTreeMap<String, f64>,
    labelled: usize,
    injected: usize,
    dup_writes: usize,
    redundant_execs: usize,
    p50: f64,
    p99: f64,
    max: f64,
    /// Exec create → exit as the simulator saw it, p50 and p99.
    exec_p50: f64,
    exec_p99: f64,
    /// CPU of the bench process (the simulator and the event generator), fraction of a core.
    sim_cpu_frac: f64,
    /// Most events emitted but not yet received by the watcher, sampled every second.
    max_lag: f64,
    /// Fraction of the storm the agent was runnable but waiting for a CPU.
    agent_wait_frac: f64,
    /// The same for the bench process (simulator and generator threads, summed).
    sim_wait_frac: f64,
    repairs: f64,
    cpu_per_k: f64,
    agent_cpu_frac: f64,
    inspects: u64,
    /// The agent's own view: event received → files in place, mean over the writes
    /// (`dso_injection_duration_seconds`), against the simulator's start event → exec exit.
    agent_mean: f64,
}

/// A fault of the event stream during a storm: from 2 s in (while nearly every event is a start:
/// the first deaths come after one lifetime), held back for this long.
type Stall = Option<Duration>;

fn storm(
    rate_per_min: u64,
    secs: u64,
    lifetime: Duration,
    sim_config: SimConfig,
    perf: bool,
    stall: Stall,
) -> StormResult {
    let r = rig(sim_config, &Opts::default());
    let stall_from = Duration::from_secs(2);
    let mut stalled = false;
    std::thread::sleep(Duration::from_secs(1));
    let before = r.agent.stats();
    let sim_cpu0 = proc_cpu_secs(std::process::id());
    let sim_wait0 = proc_stats(std::process::id()).run_wait_s;
    let m0 = r.agent.metrics();
    let recv0: f64 = m0
        .by_label("dso_events_received_total{action=")
        .values()
        .sum();
    let perf_child = perf.then(|| {
        std::process::Command::new("perf")
            .args([
                "record",
                "-F",
                "499",
                "-g",
                "-p",
                &r.agent.pid.to_string(),
                "-o",
            ])
            .arg(perf_data(rate_per_min))
            .args(["--", "sleep", &secs.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()
    });
    let per_sec = rate_per_min as f64 / 60.0;
    let t = Instant::now();
    let mut emitted = 0u64;
    let mut alive: VecDeque<(Instant, String)> = VecDeque::new();
    let mut dead: VecDeque<String> = VecDeque::new();
    let mut labelled: HashSet<String> = HashSet::new();
    let mut n = 0usize;
    let gen_end = Duration::from_secs(secs);
    // Watcher lag: events emitted but not yet counted by the agent, sampled every second.
    let mut max_lag = 0f64;
    let mut next_sample = Duration::from_secs(1);
    while t.elapsed() < gen_end {
        if let Some(d) = stall {
            let in_stall = t.elapsed() >= stall_from && t.elapsed() < stall_from + d;
            if in_stall != stalled {
                r.sim.stall_events(in_stall);
                stalled = in_stall;
            }
        }
        if t.elapsed() >= next_sample {
            next_sample += Duration::from_secs(1);
            let recv: f64 = r
                .agent
                .metrics()
                .by_label("dso_events_received_total{action=")
                .values()
                .sum();
            max_lag = max_lag.max(emitted as f64 - (recv - recv0));
        }
        let due = (t.elapsed().as_secs_f64() * per_sec) as u64;
        while emitted < due {
            let now = Instant::now();
            if let Some(id) = dead.pop_front() {
                r.sim.destroy(&id);
            } else if alive.front().is_some_and(|(at, _)| *at <= now) {
                let (_, id) = alive.pop_front().expect("front");
                r.sim.die(&id);
                dead.push_back(id);
            } else {
                let with = n % 2 == 0;
                let l = if with {
                    labels(n, false)
                } else {
                    BTreeMap::from([("app".to_string(), "noise".to_string())])
                };
                let id = r.sim.start_container(&format!("storm-{n}"), l, &[DIR]);
                if with {
                    labelled.insert(id.clone());
                }
                alive.push_back((now + lifetime, id));
                n += 1;
            }
            emitted += 1;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    if stalled {
        r.sim.stall_events(false);
    }
    let during = proc_stats(r.agent.pid);
    let agent_cpu_frac = (during.cpu_s - before.cpu_s) / t.elapsed().as_secs_f64();
    let agent_wait_frac = (during.run_wait_s - before.run_wait_s) / t.elapsed().as_secs_f64();
    let sim_cpu_frac = (proc_cpu_secs(std::process::id()) - sim_cpu0) / t.elapsed().as_secs_f64();
    let sim_wait_frac =
        (proc_stats(std::process::id()).run_wait_s - sim_wait0) / t.elapsed().as_secs_f64();
    // Tail: the remaining containers die at their time (slower than the rate: they are few).
    while let Some((at, id)) = alive.pop_front() {
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        r.sim.die(&id);
        r.sim.destroy(&id);
        emitted += 2;
    }
    for id in dead.drain(..) {
        r.sim.destroy(&id);
        emitted += 1;
    }
    // Quiet: the watcher has received every event and no exec is running.
    let mut last = (0.0, usize::MAX);
    wait_for(Duration::from_secs(120), || {
        let m = r.agent.metrics();
        let recv: f64 = m
            .by_label("dso_events_received_total{action=")
            .values()
            .sum();
        let now = (recv, r.sim.exec_count());
        let settled = recv - recv0 >= emitted as f64 && now == last;
        last = now;
        std::thread::sleep(Duration::from_millis(500));
        settled
    });
    let after = r.agent.stats();
    let m = r.agent.metrics();
    let received: f64 = m
        .by_label("dso_events_received_total{action=")
        .values()
        .sum::<f64>()
        - recv0;
    let execs = r.sim.execs();
    let mut writes: HashMap<(&str, &str), usize> = HashMap::new();
    let mut lat: Vec<f64> = Vec::new();
    let mut injected: HashSet<&str> = HashSet::new();
    let mut redundant = 0;
    let mut durations: Vec<f64> = execs.iter().map(|e| e.duration.as_secs_f64()).collect();
    durations.sort_by(|a, b| a.total_cmp(b));
    for e in &execs {
        match e.exit_code {
            0 => {
                *writes.entry((&e.container, &e.digest)).or_insert(0) += 1;
                lat.push(e.latency.as_secs_f64());
                if labelled.contains(&e.container) {
                    injected.insert(&e.container);
                }
            }
            10 => redundant += 1,
            _ => {}
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    if let Some(Some(mut p)) = perf_child {
        let _ = p.wait();
        println!(
            "  perf (agent only, {rate_per_min}/min; `perf report -i {}`):",
            perf_data(rate_per_min).display()
        );
        for (sort, lines) in [("dso", 5), ("sym", 20)] {
            let Ok(out) = std::process::Command::new("perf")
                .args([
                    "report",
                    "--stdio",
                    "--no-children",
                    "-g",
                    "none",
                    "--sort",
                    sort,
                    "-i",
                ])
                .arg(perf_data(rate_per_min))
                .output()
            else {
                continue;
            };
            for l in String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .take(lines)
            {
                println!("    {l}");
            }
        }
    }
    let inspects = r.sim.requests().get("inspect").copied().unwrap_or(0);
    StormResult {
        rate: rate_per_min,
        emitted,
        received,
        dropped: nonzero(m.by_label("dso_events_dropped_total{reason=")),
        labelled: labelled.len(),
        injected: injected.len(),
        dup_writes: writes.values().map(|c| c - 1).sum(),
        redundant_execs: redundant,
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        max: lat.last().copied().unwrap_or(f64::NAN),
        exec_p50: percentile(&durations, 0.5),
        exec_p99: percentile(&durations, 0.99),
        sim_cpu_frac,
        max_lag,
        agent_wait_frac,
        sim_wait_frac,
        repairs: m.get("dso_reconcile_repairs_total"),
        cpu_per_k: (after.cpu_s - before.cpu_s) / (emitted as f64 / 1000.0),
        agent_cpu_frac,
        inspects,
        agent_mean: (m.get("dso_injection_duration_seconds_sum")
            - m0.get("dso_injection_duration_seconds_sum"))
            / (m.get("dso_injection_duration_seconds_count")
                - m0.get("dso_injection_duration_seconds_count")),
    }
}

/// Where a storm's `perf record` goes (kept for `perf report -i`).
fn perf_data(rate: u64) -> PathBuf {
    std::env::temp_dir().join(format!("dso-storm-{rate}.perf.data"))
}

fn print_storm(s: &StormResult) {
    println!(
        "  {:>7}/min: emitted {:>7} received {:>7} (lag ≤ {:.0}) dropped {:?} | labelled {:>6} injected {:>6} missed {:>5} dup-writes {} redundant-execs {} | latency p50 {:>6.0} ms p99 {:>6.0} ms max {:.0} ms (exec {:.0}/{:.0} ms; agent's received → written mean {:.0} ms) | repairs {} | inspects {} | agent {:.3} CPU-s/1k events, {:.0} % of a core while storming, runnable but waiting for a CPU {:.0} % of the time (simulator {:.0} % of a core, waiting {:.0} %)",
        s.rate,
        s.emitted,
        s.received,
        s.max_lag,
        s.dropped,
        s.labelled,
        s.injected,
        s.labelled - s.injected,
        s.dup_writes,
        s.redundant_execs,
        s.p50 * 1000.0,
        s.p99 * 1000.0,
        s.max * 1000.0,
        s.exec_p50 * 1000.0,
        s.exec_p99 * 1000.0,
        s.agent_mean * 1000.0,
        s.repairs,
        s.inspects,
        s.cpu_per_k,
        s.agent_cpu_frac * 100.0,
        s.agent_wait_frac * 100.0,
        s.sim_cpu_frac * 100.0,
        s.sim_wait_frac * 100.0
    );
}

/// A 10,000 events/min storm whose event stream stalls (events held back, then delivered).
fn stall_fault(storm_secs: u64, lifetime: Duration) {
    let d = Duration::from_secs(env_num("DSO_SIM_FAULT_STALL_SECS", 10));
    print!(
        "  stream stalls {} s (events held, then delivered):",
        d.as_secs()
    );
    print_storm(&storm(
        10_000,
        storm_secs,
        lifetime,
        sim_config(),
        false,
        Some(d),
    ));
}

fn main() {
    if std::env::var_os("DSO_SIM_PROVIDER").is_some() {
        provider_main();
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let scenarios = env_or("DSO_SIM_SCENARIOS", "idle,shared,distinct,storm");
    let n = env_num("DSO_SIM_CONTAINERS", 10_000usize).max(1);
    let idle_secs = env_num("DSO_SIM_IDLE_SECS", 60u64);
    let start_rate = env_num("DSO_SIM_START_RATE", 500.0f64);
    let storm_secs = env_num("DSO_SIM_STORM_SECS", 30u64);
    let lifetime = Duration::from_secs(env_num("DSO_SIM_LIFETIME_SECS", 10u64));
    let perf = std::env::var_os("DSO_SIM_PERF").is_some();
    // On a shared machine: a higher priority for the simulator and the agent (inherited), so that
    // other work on the host weighs less on the figures. Printed with them.
    let nice = env_num("DSO_SIM_NICE", 0i32);
    if nice != 0 {
        // SAFETY: setpriority(2) on this process only.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
        assert_eq!(rc, 0, "setpriority({nice}) failed (needs root for < 0)");
    }
    let (cores, load) = (
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default(),
    );
    println!(
        "storm bench: simulated Docker Engine (exec path), exec latency {} ms; {cores} cores, load average {}, nice {nice}",
        exec_ms(),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    for s in scenarios.split(',').map(str::trim) {
        match s {
            "idle" => scenario_idle(idle_secs),
            "shared" => scenario_containers(n, false, start_rate, idle_secs.min(30)),
            "distinct" => scenario_containers(n, true, start_rate, idle_secs.min(30)),
            "storm" => {
                let rates = env_or("DSO_SIM_RATES", "10000,50000,100000,200000");
                println!(
                    "\n== storm: {storm_secs} s per rate, half the containers labelled (10 shared secrets), lifetime {} s, exec {} ms",
                    lifetime.as_secs(),
                    exec_ms()
                );
                for rate in rates
                    .split(',')
                    .filter_map(|r| r.trim().parse::<u64>().ok())
                {
                    let s = storm(rate, storm_secs, lifetime, sim_config(), perf, None);
                    print_storm(&s);
                }
            }
            "faults" => {
                println!("\n== faults: 10,000 events/min for {storm_secs} s");
                let cut = SimConfig {
                    cut_events_every: Some(Duration::from_secs(1)),
                    ..sim_config()
                };
                print!("  stream cut every 1 s:");
                print_storm(&storm(10_000, storm_secs, lifetime, cut, false, None));
                let slow = SimConfig {
                    inspect_latency: Duration::from_secs(env_num("DSO_SIM_FAULT_INSPECT_SECS", 10)),
                    ..sim_config()
                };
                print!("  inspect answers after 10 s:");
                print_storm(&storm(
                    10_000,
                    storm_secs,
                    Duration::from_secs(60),
                    slow,
                    false,
                    None,
                ));
                stall_fault(storm_secs, lifetime);
            }
            "stall" => stall_fault(storm_secs, lifetime),
            other => println!(
                "unknown scenario `{other}` (idle, shared, distinct, storm, faults, stall)"
            ),
        }
    }
}
