//! Scale on the real Docker Engine (not a test: it prints figures): N containers (default 1,000)
//! × 10 secrets (5 from the local encrypted vault, 5 from OpenBao), served by the real agent
//! (release build).
//!
//! Phases: agent RSS / VmHWM / fds / threads / CPU at 0, N/4, N/2 and N containers (started
//! `DSO_BENCH_PAR` at a time, default 16) and the time from the last `docker run` to the last
//! container served; a rotation of one OpenBao secret used by all N (`bao kv put`, then
//! `dso rotate` as a backend webhook would: change → last container rewritten, backend reads);
//! an agent restart with all N served (SIGTERM, start again: start-up reconcile time, writes and
//! reloads — both must be 0) on the configured write path and then on the exec path; idle CPU and
//! wake-ups per second (context switches summed over all threads) for `DSO_BENCH_IDLE_SECS`
//! (default 300) with all N served. Every container is labelled `dso.bench=<run id>` and removed
//! at the end, also when the bench fails.
//!
//! The containers run on a private dockerd (`benches/common/dockerd.rs`: its own network
//! namespace, data root and socket, the offline image copied in), so that 1,000 containers never
//! wedge the daemon other work shares; `DSO_BENCH_DOCKERD=shared` uses the one the Docker CLI
//! reaches instead.
//!
//! Run: `scripts/test-env.sh up && . target/test-env/env && cargo bench --bench scale`.
//! `DSO_BENCH_N` (default 1000), `DSO_BENCH_PAR`, `DSO_BENCH_IDLE_SECS`, `DSO_BENCH_WRITE_MODE`
//! (`auto`, the default: direct writes; `exec`), `DSO_BENCH_DOCKERD` (`private`, the default;
//! `shared`), `DSO_BENCH_SHARD_CONCURRENCY` (`agent.shard_concurrency`, default 4: the exec-path
//! restart then measures the real daemon's exec throughput at 8 × that many execs in flight).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::agent::{Agent, ProcStats};
use common::*;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const DIR: &str = "/run/secrets/dso";
const LOCAL: usize = 5;
const BAO: usize = 5;

fn env_req(name: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            panic!("{name} is not set: run `scripts/test-env.sh up && . target/test-env/env` first")
        })
}

fn bao(bin: &str, addr: &str, token: &str, args: &[&str]) {
    let out = Command::new(bin)
        .args(args)
        .env("BAO_ADDR", addr)
        .env("BAO_TOKEN", token)
        .env("VAULT_ADDR", addr)
        .env("VAULT_TOKEN", token)
        .output()
        .expect("run bao");
    assert!(
        out.status.success(),
        "bao {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn dso(config: &Path, args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dso"))
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dso");
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(stdin.as_bytes());
    }
    let out = child.wait_with_output().expect("dso");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn row(label: &str, s: &ProcStats, cpu0: f64) {
    println!(
        "  {label:<28} RSS {:>6.1} MB  VmHWM {:>6.1} MB  fds {:>4}  threads {:>3}  CPU {:>7.2} s",
        s.rss_kb as f64 / 1024.0,
        s.hwm_kb as f64 / 1024.0,
        s.fds,
        s.threads,
        s.cpu_s - cpu0
    );
}

fn wait_metric(agent: &Agent, series: &str, at_least: f64, timeout: Duration) -> Option<f64> {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if agent.metrics().get(series) >= at_least {
            return Some(t.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    None
}

fn config(dir: &Path, scope: &str, write_mode: &str, vault_addr: &str) -> std::path::PathBuf {
    let path = dir.join("dso.toml");
    std::fs::write(
        &path,
        format!(
            "[agent]\nlisten = \"127.0.0.1:0\"\nscope = \"{scope}\"\nstate_dir = \"{state}\"\n\
             admin_socket = \"{sock}\"\nwrite_mode = \"{write_mode}\"\nshard_concurrency = {conc}\n\n\
             [providers.local]\ntype = \"file\"\npath = \"{vault}\"\nkey_file = \"{key}\"\n\n\
             [providers.bao]\ntype = \"vault\"\naddress = \"{vault_addr}\"\ntoken_env = \"DSO_BENCH_BAO_TOKEN\"\ntimeout = \"10s\"\n",
            conc = env_num("DSO_BENCH_SHARD_CONCURRENCY", 4usize),
            state = dir.join("state").display(),
            sock = dir.join("dso.sock").display(),
            vault = dir.join("vault.enc").display(),
            key = dir.join("vault.key").display(),
        ),
    )
    .expect("config");
    path
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n = env_num("DSO_BENCH_N", 1000usize).max(4);
    let par = env_num("DSO_BENCH_PAR", 16usize).max(1);
    let idle_secs = env_num("DSO_BENCH_IDLE_SECS", 300u64);
    let write_mode = env_or("DSO_BENCH_WRITE_MODE", "auto");
    let vault_addr = env_req("DSO_TEST_VAULT_ADDR");
    let vault_token = env_req("DSO_TEST_VAULT_TOKEN");
    let bao_bin = env_or("DSO_TEST_BAO_BIN", "bao");
    let image = env_or("DSO_TEST_IMAGE", "dso-test/busybox:latest");
    let uniq = format!(
        "scale{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos() % 1_000_000)
            .unwrap_or(0)
    );
    let scope = format!("dso.bench={uniq}");
    // Declared before the container guard: dropped after it (containers first, then the daemon).
    let private = (env_or("DSO_BENCH_DOCKERD", "private") == "private").then(|| {
        let d = common::dockerd::PrivateDockerd::start(&image);
        use_docker_host(d.host());
        d
    });
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "scale bench: {n} real containers × {} secrets ({LOCAL} local vault, {BAO} OpenBao), write_mode {write_mode}, {par} parallel docker runs, {} dockerd; {} cores, load average {}",
        LOCAL + BAO,
        if private.is_some() { "a private" } else { "the shared" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );

    // Containers are removed by this guard, also on panic; the agent is killed by its own Drop.
    let _cleanup = Cleanup {
        agent: None,
        scope_label: scope.clone(),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), &scope, &write_mode, &vault_addr);
    let mut labels = vec!["--label".to_string(), scope.clone()];
    for j in 0..LOCAL {
        let (ok, out) = dso(
            &cfg,
            &["secret", "set", &format!("bench/{uniq}/l{j}#v")],
            &format!("local-{j}-{uniq}"),
        );
        assert!(ok, "dso secret set: {out}");
        labels.extend([
            "--label".to_string(),
            format!("dso.secret.l{j}=local/bench/{uniq}/l{j}#v"),
        ]);
    }
    for j in 0..BAO {
        bao(
            &bao_bin,
            &vault_addr,
            &vault_token,
            &[
                "kv",
                "put",
                "-mount=secret",
                &format!("bench/{uniq}/b{j}"),
                &format!("password=bao-{j}-v0"),
            ],
        );
        labels.extend([
            "--label".to_string(),
            format!("dso.secret.b{j}=bao/bench/{uniq}/b{j}#password"),
        ]);
    }
    let mut envs = vec![("DSO_BENCH_BAO_TOKEN", vault_token.as_str())];
    if let Some(h) = docker_host() {
        envs.push(("DOCKER_HOST", h));
    }
    let log = dir.path().join("agent.log");
    let mut agent = Agent::start(env!("CARGO_BIN_EXE_dso"), &cfg, &log, &envs);
    std::thread::sleep(Duration::from_secs(2));
    let s0 = agent.stats();
    println!("\n== containers");
    row("0 containers", &s0, s0.cpu_s);

    let success = "dso_injections_total{result=\"success\"}";
    let ids = Arc::new(Mutex::new(Vec::<String>::new()));
    let next = Arc::new(AtomicUsize::new(0));
    let t_all = Instant::now();
    let mut last_start_to_ready = 0.0;
    for cp in [n / 4, n / 2, n] {
        let t = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..par {
                let (ids, next, labels, image, uniq) =
                    (ids.clone(), next.clone(), &labels, &image, &uniq);
                s.spawn(move || loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= cp {
                        next.fetch_sub(1, Ordering::SeqCst);
                        break;
                    }
                    let name = format!("dso-{uniq}-{i}");
                    // No network: a Linux bridge holds at most 1,024 ports (`exchange full`), and
                    // the other containers of the host count against docker0 too.
                    let mut args = vec![
                        "run",
                        "-d",
                        "--network",
                        "none",
                        "--name",
                        &name,
                        "--tmpfs",
                        DIR,
                    ];
                    args.extend(labels.iter().map(String::as_str));
                    args.extend([image.as_str(), "sleep", "86400"]);
                    let id = docker(&args);
                    ids.lock().expect("ids").push(id);
                });
            }
        });
        let served = wait_metric(&agent, success, cp as f64, Duration::from_secs(600));
        let s = agent.stats();
        row(&format!("{cp} containers served"), &s, s0.cpu_s);
        println!(
            "    {} ; this step {:.1} s; last `docker run` returned → last container served {}",
            if served.is_some() {
                "all served"
            } else {
                "NOT all served in 600 s"
            },
            t.elapsed().as_secs_f64(),
            served.map_or("-".to_string(), |x| format!("{x:.2} s"))
        );
        last_start_to_ready = served.unwrap_or(f64::NAN);
    }
    let total = t_all.elapsed().as_secs_f64();
    let m = agent.metrics();
    println!(
        "  {n} containers in {total:.1} s; last start → last ready {last_start_to_ready:.2} s; results {:?}; modes {:?}",
        nonzero(m.by_label("dso_injections_total{result=")),
        nonzero(m.by_label("dso_injections_by_mode_total{mode="))
    );
    // Check a few containers really hold their files.
    let ids: Vec<String> = ids.lock().expect("ids").clone();
    for id in ids.iter().step_by((n / 3).max(1)).take(3) {
        let v = docker(&[
            "exec",
            id,
            "cat",
            &format!("{DIR}/b0"),
            &format!("{DIR}/l0"),
        ]);
        assert!(
            v.contains("bao-0-v0") && v.contains("local-0-"),
            "container {id}: {v}"
        );
    }

    // Rotation of one secret used by all N.
    println!("\n== rotation of one OpenBao secret used by all {n}");
    let m0 = agent.metrics();
    let rot0 = m0.get("dso_rotations_total{result=\"success\"}");
    let req0: f64 = m0
        .by_label("dso_provider_requests_total{provider=\"bao\",result=")
        .values()
        .sum();
    let t = Instant::now();
    bao(
        &bao_bin,
        &vault_addr,
        &vault_token,
        &[
            "kv",
            "put",
            "-mount=secret",
            &format!("bench/{uniq}/b0"),
            "password=bao-0-v1",
        ],
    );
    let (ok, out) = dso(&cfg, &["rotate", &format!("bao/bench/{uniq}/b0")], "");
    assert!(ok, "dso rotate: {out}");
    let done = wait_metric(
        &agent,
        "dso_rotations_total{result=\"success\"}",
        rot0 + n as f64,
        Duration::from_secs(600),
    );
    let elapsed = t.elapsed().as_secs_f64();
    let m1 = agent.metrics();
    let req1: f64 = m1
        .by_label("dso_provider_requests_total{provider=\"bao\",result=")
        .values()
        .sum();
    println!(
        "  change → last container rewritten: {} (of it the rotation_debounce, default 2 s); rotations {:?}; OpenBao requests {}",
        if done.is_some() { format!("{elapsed:.2} s") } else { "NOT complete in 600 s".into() },
        nonzero(m1.by_label("dso_rotations_total{result=")),
        req1 - req0
    );
    for id in ids.iter().step_by((n / 3).max(1)).take(3) {
        let v = docker(&["exec", id, "cat", &format!("{DIR}/b0")]);
        assert_eq!(v, "bao-0-v1", "container {id} after the rotation");
    }

    // Restarts with everything served: nothing may be written, nothing reloaded.
    for mode in [write_mode.as_str(), "exec"] {
        let cfg = config(dir.path(), &scope, mode, &vault_addr);
        let stop = agent.stop();
        let t = Instant::now();
        agent = Agent::start(env!("CARGO_BIN_EXE_dso"), &cfg, &log, &envs);
        let done = wait_metric(
            &agent,
            "dso_injections_total{result=\"unchanged\"}",
            n as f64,
            Duration::from_secs(600),
        );
        let elapsed = t.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs(1));
        let m = agent.metrics();
        let reloads: f64 = m
            .by_label("dso_reloads_total{policy=")
            .values()
            .sum::<f64>()
            + 0.0;
        println!(
            "\n== restart on the {mode} path (SIGTERM took {:.2} s)\n  spawn → all {n} found unchanged: {} ({:.1} containers/s, shard_concurrency {}); reconcile pass (list and dispatch) {:.2} s; writes {}; reloads {reloads}; results {:?}",
            stop.as_secs_f64(),
            if done.is_some() { format!("{elapsed:.2} s") } else { "NOT in 600 s".into() },
            n as f64 / elapsed,
            env_num("DSO_BENCH_SHARD_CONCURRENCY", 4usize),
            m.get("dso_reconcile_duration_seconds_sum"),
            m.get(success),
            nonzero(m.by_label("dso_injections_total{result="))
        );
        let s = agent.stats();
        row("after restart", &s, s.cpu_s);
    }

    // Idle with everything served.
    if idle_secs > 0 {
        std::thread::sleep(Duration::from_secs(12));
        let a = agent.stats();
        let t = Instant::now();
        std::thread::sleep(Duration::from_secs(idle_secs));
        let b = agent.stats();
        let dt = t.elapsed().as_secs_f64();
        println!(
            "\n== idle with {n} served, {idle_secs} s\n  CPU {:.3} %  wake-ups {:.2}/s (context switches, all threads)  RSS {:.1} MB",
            (b.cpu_s - a.cpu_s) / dt * 100.0,
            (b.ctx_switches - a.ctx_switches) as f64 / dt,
            b.rss_kb as f64 / 1024.0
        );
    }
    // Another test restarting the shared dockerd would show here (and invalidate the figures).
    println!(
        "\n  docker reconnects seen by the last agent: {}",
        agent.metrics().get("dso_docker_reconnects_total")
    );
    agent.stop();
    for j in 0..BAO {
        let path = format!("bench/{uniq}/b{j}");
        bao(
            &bao_bin,
            &vault_addr,
            &vault_token,
            &["kv", "metadata", "delete", "-mount=secret", &path],
        );
    }
}
