//! Podman through its Docker-compatible API (`podman system service`), with the agent's core
//! behaviours run against it in both write modes: labelled container served, the direct path
//! proving the pid through Podman's cgroup layout, stop and removal seen through Podman's event
//! names, rotation with a signal reload, and the event stream replayed after the service restarts.
//! Skipped (with a message) where `podman` is not installed.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::rotation::HUP_COUNTER;
use crate::support::*;

const DIR: &str = "/run/secrets/dso";

/// A private `podman system service` socket; its containers and the service removed on drop.
struct Podman {
    dir: tempfile::TempDir,
    service: Option<Child>,
    scope: String,
}

impl Podman {
    fn start(scope: &str) -> Option<Podman> {
        if !run(Command::new("podman").arg("--version")).0 {
            eprintln!("podman is not installed: skipping (scripts/test-env.sh up installs it)");
            return None;
        }
        let mut p = Podman {
            dir: tempfile::Builder::new()
                .prefix("dso-podman-")
                .tempdir()
                .expect("tempdir"),
            service: None,
            scope: scope.to_string(),
        };
        p.start_service();
        // The offline test image, from Docker.
        if !run(Command::new("podman").args(["image", "exists", &image()])).0 {
            copy_test_image(Command::new("podman").args(["load", "-q"]));
        }
        Some(p)
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("podman.sock")
    }

    fn start_service(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let child = Command::new("podman")
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", self.socket().display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("podman system service");
        self.service = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !run(self.cli().arg("version")).0 {
            assert!(Instant::now() < deadline, "podman service not up in 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop_service(&mut self) {
        if let Some(mut child) = self.service.take() {
            stop_child(&mut child, Duration::from_secs(15));
        }
    }

    fn cli(&self) -> Command {
        let mut c = Command::new("podman");
        c.arg("--url")
            .arg(format!("unix://{}", self.socket().display()));
        c
    }

    fn podman(&self, args: &[&str]) -> String {
        let (ok, out, err) = run(self.cli().args(args));
        assert!(ok, "podman {args:?}: {out}{err}");
        out.trim().to_string()
    }

    /// A labelled container (scope label, a tmpfs at DIR) created through the service.
    fn container(&self, labels: &[&str], cmd: &[&str]) -> String {
        let (name, args) = self.run_args(labels, cmd);
        self.podman(&args.iter().map(String::as_str).collect::<Vec<_>>());
        name
    }

    /// The same, with the local CLI (no service: it talks to storage directly).
    fn container_without_service(&self, labels: &[&str], cmd: &[&str]) -> String {
        let (name, args) = self.run_args(labels, cmd);
        let (ok, out, err) = run(Command::new("podman").args(&args));
        assert!(ok, "podman run: {out}{err}");
        name
    }

    /// `run` arguments: name, scope label, `labels`, tmpfs, and the ulimits Podman needs on
    /// these VMs (no CAP_SYS_RESOURCE).
    fn run_args(&self, labels: &[&str], cmd: &[&str]) -> (String, Vec<String>) {
        let name = unique("pod");
        let mut args: Vec<String> = ["run", "-d", "--name", &name, "--network", "none"]
            .map(String::from)
            .to_vec();
        args.extend(["--label".into(), format!("dso.test={}", self.scope)]);
        for l in labels {
            args.extend(["--label".into(), l.to_string()]);
        }
        for a in [
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=4096:4096",
            "--tmpfs",
            DIR,
        ] {
            args.push(a.into());
        }
        args.push(image());
        args.extend(cmd.iter().map(|c| c.to_string()));
        (name, args)
    }

    fn read(&self, name: &str, path: &str) -> Option<String> {
        let (ok, out, _) = run(self.cli().args(["exec", name, "cat", path]));
        ok.then_some(out)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let filter = format!("label=dso.test={}", self.scope);
        let (_, ids, _) = run(Command::new("podman").args(["ps", "-aq", "--filter", &filter]));
        for id in ids.split_whitespace() {
            let _ = run(Command::new("podman").args(["rm", "-f", "-t", "0", id]));
        }
        self.stop_service();
    }
}

fn by_mode(agent: &Agent, mode: &str) -> Option<f64> {
    agent.metric(&format!("dso_injections_by_mode_total{{mode=\"{mode}\"}}"))
}

/// The core behaviours against Podman in one write mode.
fn core_suite(write_mode: &str) {
    let ws = Workspace::new();
    let Some(mut podman) = Podman::start(&ws.scope) else {
        return;
    };
    ws.write_config("");
    ws.set_write_mode(write_mode);
    ws.add_agent_settings(&format!(
        "docker_host = \"unix://{}\"\nrotation_debounce = \"100ms\"",
        podman.socket().display()
    ));
    let secret = unique("pod/pw");
    ws.set_secret(&secret, "first-value");
    let agent = Agent::start(&ws.config());
    let label = format!("dso.secret.pw=local/{secret}");
    let c = podman.container(&[&label, "dso.reload=signal:SIGHUP"], HUP_COUNTER);
    let got = eventually(&agent, "the secret in the Podman container", || {
        podman.read(&c, &format!("{DIR}/.ready"))?;
        podman.read(&c, &format!("{DIR}/pw"))
    });
    assert_eq!(got, "first-value");
    // Podman's cgroup (`libpod-<id>`, not conmon's) proves the pid: no fallback in auto mode.
    let (want, other) = if write_mode == "auto" {
        ("direct", "exec")
    } else {
        ("exec", "direct")
    };
    eventually(&agent, &format!("one write on the {want} path"), || {
        (by_mode(&agent, want) == Some(1.0) && by_mode(&agent, other) == Some(0.0)).then_some(())
    });
    assert!(
        !agent.logs().contains("direct writes not possible"),
        "{}",
        agent.logs()
    );

    // Rotation with a signal reload, through Podman's kill endpoint.
    ws.set_secret(&secret, "second-value");
    let (code, out, err) = dso_with(Some(&ws.config()), &["rotate", &format!("local/{secret}")]);
    assert_eq!(code, Some(0), "dso rotate: {out}{err}");
    eventually(&agent, "the rotated value", || {
        (podman.read(&c, &format!("{DIR}/pw")).as_deref() == Some("second-value")).then_some(())
    });
    eventually(&agent, "one SIGHUP", || {
        (podman.read(&c, "/tmp/hups").as_deref().map(str::trim) == Some("1")).then_some(())
    });

    // The service restarts: the agent reconnects and replays; a container started meanwhile is served.
    podman.stop_service();
    let late = podman.container_without_service(&[&label], &["/bin/sleep", "600"]);
    podman.start_service();
    eventually(
        &agent,
        "the container started while the service was down",
        || podman.read(&late, &format!("{DIR}/pw")),
    );

    // Stop and removal arrive under Podman's names (`died`, `remove`): nothing is managed after.
    for name in [&c, &late] {
        podman.podman(&["rm", "-f", "-t", "0", name]);
    }
    eventually(&agent, "managed gauge back to 0", || {
        (agent.metric("dso_managed_containers") == Some(0.0)).then_some(())
    });
    assert!(!agent.logs().contains("second-value") && !agent.logs().contains("first-value"));
}

#[test]
fn podman_core_behaviours_on_the_direct_path() {
    core_suite("auto");
}

#[test]
fn podman_core_behaviours_on_the_exec_path() {
    core_suite("exec");
}
