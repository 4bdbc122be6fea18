//! Injection benchmark against the real Docker Engine (not a test: it prints figures).
//!
//! Starts the real agent on a local vault holding 10 secrets, warms the cache with one container,
//! then starts N labelled containers one after another and reads each injection's duration
//! (event received → files in place, the same figure `dso_injection_duration_seconds` observes)
//! from the agent's JSON logs. Beside it, in the same run: one `docker exec` per secret (the
//! reference implementation's mechanism) and a no-op `docker exec` (the floor of the exec path).
//!
//! Run: `scripts/test-env.sh up && . target/test-env/env && cargo bench --bench inject`.
//! `DSO_BENCH_N` sets N (default 30), `DSO_BENCH_WRITE_MODE` the write mode. Another engine: the
//! agent, the `docker` CLI and the baselines follow `DOCKER_HOST` (and `DOCKER_TLS_VERIFY`,
//! `DOCKER_CERT_PATH`), e.g. a Podman socket or a TLS dockerd; `DSO_BENCH_RUN_ARGS` adds
//! `docker run` arguments.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dso::docker::BollardEngine;
use dso_actors::engine::ContainerEngine;

const SECRETS: usize = 10;
const DIR: &str = "/run/secrets/dso";

fn summary(name: &str, mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let med = percentile(&v, 0.5);
    println!(
        "{name:<44} n={:<4} median={:>7.1} ms  p99={:>7.1} ms  min={:>7.1} ms",
        v.len(),
        med,
        percentile(&v, 0.99),
        v.first().copied().unwrap_or(f64::NAN)
    );
    med
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("DSO_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let image =
        std::env::var("DSO_TEST_IMAGE").unwrap_or_else(|_| "dso-test/busybox:latest".into());
    // `agent.write_mode`: `auto` (direct writes through /proc/<pid>/root) or `exec`.
    let write_mode = std::env::var("DSO_BENCH_WRITE_MODE").unwrap_or_else(|_| "auto".into());
    // Extra `docker run` arguments (Podman on these VMs: `--ulimit nofile=1024:1024 --ulimit
    // nproc=4096:4096`).
    let run_args = std::env::var("DSO_BENCH_RUN_ARGS").unwrap_or_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let scope = format!("bench{}", std::process::id());
    let cfg = dir.path().join("dso.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nlisten = \"127.0.0.1:0\"\nscope = \"dso.bench={scope}\"\nreconcile_interval = \"0s\"\nstate_dir = \"{}\"\nadmin_socket = \"{}\"\nwrite_mode = \"{write_mode}\"\n\
             [providers.local]\ntype = \"file\"\npath = \"{}\"\nkey_file = \"{}\"\n",
            dir.path().join("state").display(),
            dir.path().join("dso.sock").display(),
            dir.path().join("v.enc").display(),
            dir.path().join("v.key").display()
        ),
    )
    .expect("config");
    let bin = env!("CARGO_BIN_EXE_dso");
    for i in 0..SECRETS {
        let mut c = Command::new(bin)
            .args([
                "--config",
                cfg.to_str().unwrap_or_default(),
                "secret",
                "set",
            ])
            .arg(format!("bench/s{i}#v"))
            .stdin(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dso secret set");
        c.stdin
            .take()
            .map(|mut s| s.write_all(format!("value-{i}-{}", "x".repeat(32)).as_bytes()));
        assert!(c.wait().expect("wait").success());
    }

    // The agent, release build, JSON logs collected.
    let mut agent = Command::new(bin)
        .args([
            "--config",
            cfg.to_str().unwrap_or_default(),
            "agent",
            "--log-format",
            "json",
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("agent");
    let pid = agent.id();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    if let Some(err) = agent.stderr.take() {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                if let Ok(mut v) = lines.lock() {
                    v.push(l);
                }
            }
        });
    }
    let wait_lines = |pred: &dyn Fn(&[String]) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if lines.lock().map(|l| pred(&l)).unwrap_or(false) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!(
            "agent did not get there; logs:\n{}",
            lines.lock().map(|l| l.join("\n")).unwrap_or_default()
        );
    };
    wait_lines(&|l| {
        l.iter()
            .any(|x| x.contains("docker event stream connected"))
    });

    let mut labels = vec![
        "--label".to_string(),
        format!("dso.bench={scope}"),
        "--tmpfs".into(),
        DIR.into(),
    ];
    for i in 0..SECRETS {
        labels.push("--label".into());
        labels.push(format!("dso.secret.s{i}=local/bench/s{i}#v"));
    }
    let injected = |l: &[String]| l.iter().filter(|x| x.contains("secrets injected")).count();
    let mut ids = Vec::new();
    let start_one = |ids: &mut Vec<String>| {
        let mut args: Vec<&str> = vec!["run", "-d"];
        args.extend(run_args.split_whitespace());
        args.extend(labels.iter().map(String::as_str));
        args.extend([image.as_str(), "/bin/sleep", "600"]);
        ids.push(docker(&args));
    };
    // Warm-up: fills the cache.
    start_one(&mut ids);
    wait_lines(&|l| injected(l) >= 1);
    let warm_base = 1;
    for k in 0..n {
        start_one(&mut ids);
        wait_lines(&|l| injected(l) > warm_base + k);
    }
    let durations: Vec<f64> = lines
        .lock()
        .map(|l| {
            l.iter()
                .filter(|x| x.contains("secrets injected"))
                .skip(warm_base)
                .filter_map(|x| {
                    serde_json::from_str::<serde_json::Value>(x)
                        .ok()?
                        .get("duration_us")?
                        .as_f64()
                })
                .map(|us| us / 1000.0)
                .collect()
        })
        .unwrap_or_default();
    let rss_kb = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0);

    // Baselines through the same Engine API client, on the last container.
    let target = ids.last().cloned().unwrap_or_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (noop, per_secret) = rt.block_on(async {
        // The engine the agent uses (DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH).
        let endpoint = dso::config::AgentConfig::default()
            .engine_endpoint()
            .expect("engine endpoint");
        let (engine, _) = BollardEngine::connect(&endpoint)
            .expect("docker")
            .negotiate()
            .await
            .expect("negotiate");
        let mut noop = Vec::new();
        for _ in 0..n.max(20) {
            let t = Instant::now();
            let out = engine
                .exec(&target, &["true".to_string()], b"")
                .await
                .expect("exec");
            assert_eq!(out.exit_code, Some(0));
            noop.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let mut per_secret = Vec::new();
        for _ in 0..(n / 3).max(5) {
            let t = Instant::now();
            for i in 0..SECRETS {
                let cmd = vec![
                    "sh".to_string(),
                    "-c".to_string(),
                    format!("cat > {DIR}/base{i}"),
                ];
                let out = engine
                    .exec(&target, &cmd, format!("value-{i}").as_bytes())
                    .await
                    .expect("exec");
                assert_eq!(out.exit_code, Some(0));
            }
            per_secret.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        (noop, per_secret)
    });

    let _ = agent.kill();
    let _ = agent.wait();
    for id in &ids {
        let _ = Command::new("docker").args(["rm", "-f", id]).output();
    }

    println!("\nDSO injection benchmark: {n} containers × {SECRETS} secrets, warm cache, sequential starts, write_mode = \"{write_mode}\"");
    let dso_med = summary(
        // A tcp:// engine always uses the exec path, whatever write_mode says.
        if write_mode == "exec"
            || std::env::var("DOCKER_HOST").is_ok_and(|h| h.starts_with("tcp://"))
        {
            "dso: event → 10 files in place (one exec)"
        } else {
            "dso: event → 10 files in place (direct)"
        },
        durations,
    );
    let noop_med = summary("no-op docker exec (floor)", noop);
    let base_med = summary("baseline: one docker exec per secret (×10)", per_secret);
    println!(
        "agent peak RSS (VmHWM)                       {:.1} MiB",
        rss_kb as f64 / 1024.0
    );
    println!(
        "ratios (medians): dso / no-op exec = {:.2}   baseline / dso = {:.1}×",
        dso_med / noop_med,
        base_med / dso_med
    );
}
