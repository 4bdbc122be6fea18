//! `docker dso up -d` against a plain `docker-compose up -d` (Compose v1) of the same 5-service
//! project, timed until every service's application has read its secret (not a test: it prints
//! figures).
//!
//! The plain project is what a user writes by hand without `docker dso`: `dso.secret.*` labels, a
//! tmpfs, and a shell loop waiting for `.ready` before the application. The `dso compose` project
//! writes `dsofile://` instead (the wait is `dso-wait`, no shell). Same agent (local vault, direct
//! writes), same image, rounds alternate. Figures: the total (command start → the last service's
//! "read" log line, Docker's timestamps), the `docker-compose config` normalisation step alone,
//! and per container start (`State.StartedAt`) → the entrypoint sees its file.
//!
//! Run: `scripts/test-env.sh up && . target/test-env/env && cargo bench --bench compose`.
//! `DSO_BENCH_N` rounds (default 5).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SERVICES: usize = 5;

/// Seconds since the epoch of Docker's RFC 3339 timestamps (`2026-11-30T17:05:36.123456789Z`).
fn rfc3339(ts: &str) -> Option<f64> {
    let (date, time) = ts.trim().split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let time = time.trim_end_matches('Z');
    let mut t = time.splitn(3, ':');
    let (h, min, s) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3600.0 + min * 60.0 + s)
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    percentile(&v, 0.5)
}

fn run_ok(c: &mut Command) {
    let out = c.output().expect("spawn");
    assert!(
        out.status.success(),
        "{c:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until every container of `project` logged "read-secret"; returns (the last line's
/// time, each container's StartedAt → its line).
fn wait_read(project: &str) -> (f64, Vec<f64>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let filter = format!("label=com.docker.compose.project={project}");
        let ids = docker(&["ps", "-q", "--filter", &filter]);
        let ids: Vec<&str> = ids.split_whitespace().collect();
        let mut seen = Vec::new();
        for id in &ids {
            let (_, out, _) = docker_try(&["logs", "-t", id]);
            if let Some(line) = out.lines().find(|l| l.contains("read-secret")) {
                let at = line.split_whitespace().next().and_then(rfc3339);
                let started = rfc3339(&docker(&["inspect", "-f", "{{.State.StartedAt}}", id]));
                if let (Some(at), Some(started)) = (at, started) {
                    seen.push((at, at - started));
                }
            }
        }
        if ids.len() == SERVICES && seen.len() == SERVICES {
            let last = seen.iter().map(|s| s.0).fold(f64::MIN, f64::max);
            return (last, seen.into_iter().map(|s| s.1).collect());
        }
        assert!(
            Instant::now() < deadline,
            "{project}: not every service read its secret"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn write_projects(dir: &Path, image: &str, scope: &str) {
    let mut plain = String::from("services:\n");
    let mut dso = String::from("services:\n");
    for i in 0..SERVICES {
        plain.push_str(&format!(
            "  s{i}:\n    image: {image}\n    labels:\n      dso.bench: {scope}\n      \
             dso.secret.pw: local/bench/db#password\n    tmpfs: [/run/secrets/dso]\n    \
             command: [\"sh\", \"-c\", \"until [ -e /run/secrets/dso/.ready ]; do sleep 0.05; done; \
             test -s /run/secrets/dso/pw && echo read-secret; trap 'exit 0' TERM; while :; do sleep 1; done\"]\n"
        ));
        dso.push_str(&format!(
            "  s{i}:\n    image: {image}\n    labels:\n      dso.bench: {scope}\n    \
             environment:\n      PW_FILE: dsofile://local/bench/db#password\n    \
             command: [\"sh\", \"-c\", \"test -s \\\"$$PW_FILE\\\" && echo read-secret; trap 'exit 0' TERM; while :; do sleep 1; done\"]\n"
        ));
    }
    std::fs::create_dir_all(dir.join("plain")).unwrap();
    std::fs::create_dir_all(dir.join("dso")).unwrap();
    std::fs::write(dir.join("plain/docker-compose.yml"), plain).unwrap();
    std::fs::write(dir.join("dso/docker-compose.yml"), dso).unwrap();
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rounds: usize = env_num("DSO_BENCH_N", 5);
    let image = env_or("DSO_TEST_IMAGE", "dso-test/busybox:latest");
    let dir = tempfile::tempdir().expect("tempdir");
    let scope = format!("cbench{}", std::process::id());
    let cfg = dir.path().join("dso.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nlisten = \"127.0.0.1:0\"\nscope = \"dso.bench={scope}\"\nreconcile_interval = \"0s\"\n\
             state_dir = \"{}\"\nadmin_socket = \"{}\"\n[providers.local]\ntype = \"file\"\npath = \"{}\"\nkey_file = \"{}\"\n",
            dir.path().join("state").display(),
            dir.path().join("dso.sock").display(),
            dir.path().join("v.enc").display(),
            dir.path().join("v.key").display()
        ),
    )
    .expect("config");
    let bin = env!("CARGO_BIN_EXE_dso");
    let mut set = Command::new(bin)
        .arg("--config")
        .arg(&cfg)
        .args(["secret", "set", "bench/db#password"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("dso secret set");
    set.stdin.take().map(|mut s| s.write_all(b"bench-password"));
    assert!(set.wait().expect("wait").success());
    let wait_bin = String::from_utf8(
        Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/build-wait"))
            .output()
            .expect("scripts/build-wait")
            .stdout,
    )
    .expect("path")
    .trim()
    .to_string();

    let agent = Command::new(bin)
        .arg("--config")
        .arg(&cfg)
        .arg("agent")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent");
    let _cleanup = Cleanup {
        agent: Some(agent),
        scope_label: format!("dso.bench={scope}"),
    };
    std::thread::sleep(Duration::from_secs(2));
    write_projects(dir.path(), &image, &scope);
    let (plain_name, dso_name) = (format!("{scope}plain"), format!("{scope}dso"));

    let compose = |project_dir: &Path, args: &[&str]| {
        let mut c = Command::new("docker-compose");
        c.args(args)
            .current_dir(project_dir)
            .env("COMPOSE_PROJECT_NAME", project_dir.file_name().unwrap())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    };
    // Project names from the directory names.
    let plain_dir = dir.path().join(&plain_name);
    let dso_dir = dir.path().join(&dso_name);
    std::fs::rename(dir.path().join("plain"), &plain_dir).unwrap();
    std::fs::rename(dir.path().join("dso"), &dso_dir).unwrap();

    let (mut plain_total, mut dso_total, mut config_step) = (vec![], vec![], vec![]);
    let (mut plain_start, mut dso_start) = (vec![], vec![]);
    for round in 0..rounds {
        // Plain docker-compose.
        let t0 = now();
        run_ok(&mut compose(&plain_dir, &["up", "-d"]));
        let (last, starts) = wait_read(&plain_name);
        plain_total.push(last - t0);
        plain_start.extend(starts);
        run_ok(&mut compose(&plain_dir, &["down", "-t", "1"]));

        // docker dso (the same binary the plugin links to).
        let t0 = now();
        run_ok(
            Command::new(bin)
                .arg("--config")
                .arg(&cfg)
                .args(["compose", "up", "-d"])
                .current_dir(&dso_dir)
                .env("DSO_WAIT_BIN", &wait_bin)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let (last, starts) = wait_read(&dso_name);
        dso_total.push(last - t0);
        dso_start.extend(starts);
        run_ok(&mut compose(&dso_dir, &["down", "-t", "1"]));

        // The normalisation step alone.
        let t = Instant::now();
        run_ok(&mut compose(&dso_dir, &["config"]));
        config_step.push(t.elapsed().as_secs_f64());
        eprintln!(
            "round {round}: plain {:.2} s, docker dso {:.2} s",
            plain_total[round], dso_total[round]
        );
    }
    let (p, d) = (median(plain_total), median(dso_total));
    println!("5 services, Compose v1, {rounds} rounds, until every app has read its secret:");
    println!("  plain docker-compose up -d (labels + shell wait loop)  median {p:>6.2} s");
    println!("  docker dso up -d (dsofile://, dso-wait)                median {d:>6.2} s");
    println!(
        "  ratio dso / plain                                      {:>6.2}x (target <= 1.2x)",
        d / p
    );
    println!(
        "  of which `docker-compose config` (normalisation)       median {:>6.2} s",
        median(config_step)
    );
    println!(
        "  container start -> entrypoint sees its file: plain median {:.0} ms, dso median {:.0} ms",
        median(plain_start) * 1000.0,
        median(dso_start) * 1000.0
    );
}
