//! Chaos on the real daemon: Docker Engine restarted under the agent. A separate test binary, so
//! that it runs alone (cargo runs test binaries one after another) — restarting the daemon would
//! break every other test running at the same time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "it/support.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const DIR: &str = "/run/secrets/dso";

fn dockerd_pid() -> Option<u32> {
    let (ok, out, _) = run(Command::new("pidof").arg("dockerd"));
    ok.then(|| out.split_whitespace().next()?.parse().ok())
        .flatten()
}

/// Stops dockerd (SIGTERM, as a service manager would) and starts it again with the same
/// command line; keeps `scripts/test-env.sh`'s pid file pointing at the new daemon.
fn restart_dockerd() {
    let pid = dockerd_pid().expect("dockerd is running");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("dockerd cmdline");
    let argv: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    // SAFETY: kill(2) on a pid we just read.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "dockerd did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Started through a shell that exits at once: the daemon is re-parented to init, as a
    // service manager's would be, and outlives this test.
    let log = concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-env/dockerd.log");
    let out = Command::new("sh")
        .arg("-c")
        .arg("log=\"$1\"; shift; mkdir -p \"${log%/*}\"; \"$@\" >>\"$log\" 2>&1 </dev/null & echo $!")
        .arg("sh")
        .arg(log)
        .args(&argv)
        // The daemon is the shared service, not a leftover of this run (`scripts/test` fails
        // when a process carrying its DSO_TEST_RUN mark outlives the tests).
        .env_remove("DSO_TEST_RUN")
        .stdin(Stdio::null())
        .output()
        .expect("start dockerd again");
    let new_pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let pid_file = concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-env/dockerd.pid");
    if std::path::Path::new(pid_file).exists() {
        let _ = std::fs::write(pid_file, format!("{new_pid}\n"));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !docker_try(&["info"]).0 {
        assert!(Instant::now() < deadline, "dockerd did not come back");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_docker_daemon_restart_leaves_no_labelled_container_without_its_secrets() {
    let ws = Workspace::new();
    ws.write_config("");
    ws.set_secret("chaos#k", "chaos-value");
    let agent = Agent::start(&ws.config());
    let before: Vec<Container> = (0..3)
        .map(|_| {
            ws.container(&[
                "--restart",
                "always",
                "--tmpfs",
                DIR,
                "--label",
                "dso.secret.k=local/chaos#k",
            ])
        })
        .collect();
    for c in &before {
        c.wait_for(&format!("{DIR}/.ready"), &agent);
    }

    restart_dockerd();
    // Containers starting right after the daemon is back, while the agent is reconnecting.
    let after: Vec<Container> = (0..3)
        .map(|_| {
            ws.container(&[
                "--restart",
                "always",
                "--tmpfs",
                DIR,
                "--label",
                "dso.secret.k=local/chaos#k",
            ])
        })
        .collect();

    for c in before.iter().chain(after.iter()) {
        eventually(
            &agent,
            &format!(
                "{} running with its secret after the daemon restart",
                c.name
            ),
            || (c.read(&format!("{DIR}/k")).as_deref() == Some("chaos-value")).then_some(()),
        );
        c.assert_not_on_disk("chaos-value");
    }
    let logs = agent.wait_log("docker event stream reconnected");
    assert!(
        agent.metric("dso_docker_reconnects_total").unwrap_or(0.0) >= 1.0,
        "{logs}"
    );
    let (status, body) = agent.get("/readyz");
    assert_eq!(status, 200, "{body}");
}
