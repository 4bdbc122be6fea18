//! Podman through its Docker-compatible API (`podman system service` on a private socket): the
//! core real-stack tests of the Docker suite, the same bodies run with a [`Workspace`] on Podman
//! (`Workspace::on(Engine::Podman(..))`): injection from the local vault and OpenBao, both write
//! paths (the direct one proving the pid through Podman's cgroup layout) and switching between
//! them, rotation with a signal reload and the ledger, `dso.reload=restart`, stop/start/removal,
//! reconciliation at startup and after an agent restart. Podman's own: the event stream replayed
//! after the service restarts, and a labelled `docker-compose` (v1) project on the Podman socket
//! with `dso.reload=restart`. Skipped (with a message) where `podman` is not installed.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;
use crate::{inject, lifecycle, rotation};

const DIR: &str = "/run/secrets/dso";

/// A private `podman system service` socket; its containers (by scope label) and the service
/// removed on drop.
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

    fn engine(&self) -> Engine {
        Engine::Podman(self.socket())
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
        while !self.engine().try_run(&["version"]).0 {
            assert!(Instant::now() < deadline, "podman service not up in 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop_service(&mut self) {
        if let Some(mut child) = self.service.take() {
            stop_child(&mut child, Duration::from_secs(15));
        }
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

/// Runs `body` with a workspace whose containers and agent are on a private Podman service
/// (skipped where Podman is not installed); the service and its containers are gone after.
fn on_podman(body: impl FnOnce(Workspace, &mut Podman)) {
    let ws = Workspace::new();
    let Some(mut podman) = Podman::start(&ws.scope) else {
        return;
    };
    let ws = ws.on(podman.engine());
    body(ws, &mut podman);
}

// The core of the Docker suite, the same bodies on Podman.

#[test]
fn labelled_container_gets_its_files_from_the_local_vault_and_openbao() {
    on_podman(|ws, _| {
        inject::labelled_container_gets_its_files_from_the_local_vault_and_openbao_on(ws)
    });
}

#[test]
fn direct_and_exec_write_the_same_layout_and_switching_modes_rewrites_nothing() {
    on_podman(|ws, _| {
        inject::direct_and_exec_write_the_same_layout_and_switching_modes_rewrites_nothing_on(ws)
    });
}

#[test]
fn container_started_before_the_agent_is_served_at_startup() {
    on_podman(|ws, _| inject::container_started_before_the_agent_is_served_at_startup_on(ws));
}

#[test]
fn an_agent_restart_re_injects_nothing() {
    on_podman(|ws, _| inject::an_agent_restart_re_injects_nothing_on(ws));
}

#[test]
fn a_changed_secret_reaches_every_user_and_reload_policies_run_once() {
    on_podman(|ws, _| {
        rotation::a_changed_secret_reaches_every_user_and_reload_policies_run_once_on(ws)
    });
}

#[test]
fn restart_policy_restarts_exactly_once_and_the_restarted_container_gets_the_new_value() {
    on_podman(|ws, _| {
        rotation::restart_policy_restarts_exactly_once_and_the_restarted_container_gets_the_new_value_on(ws)
    });
}

#[test]
fn stop_start_and_removal_are_followed() {
    on_podman(|ws, _| lifecycle::stop_start_and_removal_are_followed_on(ws));
}

// Podman's own.

/// A labelled container of `ws`'s scope created with the local `podman` CLI (it needs no service:
/// it works on the storage directly); removed with the service's containers.
fn local_container(ws: &Workspace, args: &[&str]) -> Container {
    let name = unique("local");
    let scope = format!("dso.test={}", ws.scope);
    let mut full = vec!["run", "-d", "--name", &name, "--label", &scope];
    full.extend_from_slice(ws.engine.run_options());
    full.extend_from_slice(args);
    let img = image();
    full.extend([img.as_str(), "/bin/sleep", "600"]);
    let (ok, id, err) = run(Command::new("podman").args(&full));
    assert!(ok, "podman run: {id}{err}");
    Container {
        id: id.trim().to_string(),
        name,
        engine: ws.engine.clone(),
    }
}

/// The service restarts under the agent: it reconnects and replays; a container created meanwhile
/// (with the local CLI, which needs no service) is served, one removed meanwhile is forgotten.
#[test]
fn the_event_stream_is_replayed_after_the_podman_service_restarts() {
    on_podman(|ws, podman| {
        ws.write_config("");
        let secret = unique("pod/pw");
        ws.set_secret(&secret, "replay-value");
        let agent = Agent::start(&ws.config());
        let label = format!("dso.secret.pw=local/{secret}");
        let gone = ws.container(&["--tmpfs", DIR, "--label", &label]);
        gone.wait_for(&format!("{DIR}/.ready"), &agent);

        podman.stop_service();
        let late = local_container(&ws, &["--tmpfs", DIR, "--label", &label]);
        let (ok, out, err) = run(Command::new("podman").args(["rm", "-f", "-t", "0", &gone.id]));
        assert!(ok, "podman rm: {out}{err}");
        podman.start_service();
        eventually(
            &agent,
            "the container started while the service was down",
            || late.read(&format!("{DIR}/pw")),
        );
        assert_eq!(
            late.read(&format!("{DIR}/pw")).as_deref(),
            Some("replay-value")
        );
        eventually(&agent, "only the late container managed", || {
            (agent.metric("dso_managed_containers") == Some(1.0)).then_some(())
        });
        assert!(!agent.logs().contains("replay-value"));
    });
}

/// A labelled Compose service with two replicas, for `docker-compose` (v1) on the Podman socket.
const COMPOSE: &str = r#"services:
  web:
    image: IMAGE
    command: ["/bin/sleep", "600"]
    network_mode: none
    labels:
      dso.test: SCOPE
      dso.secret.pw: local/SECRET
      dso.reload: restart
    tmpfs:
      - /run/secrets/dso
    ulimits:
      nofile: {soft: 1024, hard: 1024}
      nproc: {soft: 4096, hard: 4096}
"#;

/// `DOCKER_HOST=unix://…podman.sock docker-compose up`: Podman keeps Compose's labels, so the
/// replicas of one service are one restart group (`project/service`) and restart one at a time.
#[test]
fn a_labelled_compose_project_on_the_podman_socket_restarts_its_replicas_as_one_group() {
    if !run(Command::new("docker-compose").arg("version")).0 {
        eprintln!("docker-compose is not installed: skipping");
        return;
    }
    on_podman(|ws, _| {
        ws.write_config("");
        ws.add_agent_settings("rotation_debounce = \"100ms\"\nrestart_splay = \"100ms\"");
        let secret = unique("pod/compose");
        ws.set_secret(&secret, "compose-value-1");
        let agent = Agent::start(&ws.config());
        let project = unique("podcmp").replace('-', "_");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("docker-compose.yml"),
            COMPOSE
                .replace("IMAGE", &image())
                .replace("SCOPE", &ws.scope)
                .replace("SECRET", &secret),
        )
        .expect("write compose file");
        let host = ws.engine.docker_host().expect("podman socket");
        let compose = |args: &[&str]| {
            run(Command::new("docker-compose")
                .arg("-p")
                .arg(&project)
                .args(args)
                .current_dir(dir.path())
                .env("DOCKER_HOST", &host)
                .stdin(Stdio::null()))
        };
        let (ok, out, err) = compose(&["up", "-d", "--scale", "web=2"]);
        assert!(ok, "docker-compose up on Podman: {out}{err}");
        let filter = format!("label=com.docker.compose.project={project}");
        let replicas: Vec<Container> = ws
            .engine
            .run(&["ps", "-q", "--no-trunc", "--filter", &filter])
            .lines()
            .map(|id| Container {
                id: id.to_string(),
                name: id.to_string(),
                engine: ws.engine.clone(),
            })
            .collect();
        assert_eq!(replicas.len(), 2, "two replicas");
        for c in &replicas {
            eventually(&agent, "the value in each replica", || {
                (c.read(&format!("{DIR}/pw")).as_deref() == Some("compose-value-1")).then_some(())
            });
        }
        ws.set_secret(&secret, "compose-value-2");
        let (code, out, err) =
            dso_with(Some(&ws.config()), &["rotate", &format!("local/{secret}")]);
        assert_eq!(code, Some(0), "dso rotate: {out}{err}");
        for c in &replicas {
            eventually(&agent, "the new value in each restarted replica", || {
                (c.read(&format!("{DIR}/pw")).as_deref() == Some("compose-value-2")).then_some(())
            });
        }
        eventually(&agent, "two restarts", || {
            (agent.metric("dso_reloads_total{policy=\"restart\",result=\"ok\"}") == Some(2.0))
                .then_some(())
        });
        let group = format!("\"group\":\"{project}/web\"");
        let logs = agent.logs();
        assert_eq!(
            logs.lines()
                .filter(|l| l.contains("restarted after new secret values") && l.contains(&group))
                .count(),
            2,
            "both replicas restarted as the group {project}/web\n{logs}"
        );
        let (ok, out, err) = compose(&["down", "-t", "0"]);
        assert!(ok, "docker-compose down on Podman: {out}{err}");
    });
}

/// `dso compose` with `dsofile://` and `dso://` references, Compose and the agent on Podman.
const DSO_COMPOSE: &str = r#"services:
  app:
    image: IMAGE
    command: ["sh", "-c", "echo token=$$API_TOKEN; cat \"$$DB_PASSWORD_FILE\"; echo; exec sleep 600"]
    network_mode: none
    labels:
      dso.test: SCOPE
    environment:
      API_TOKEN: dso://local/SECRET#token
      DB_PASSWORD_FILE: dsofile://local/SECRET#password
    ulimits:
      nofile: {soft: 1024, hard: 1024}
      nproc: {soft: 4096, hard: 4096}
"#;

#[test]
fn dso_compose_on_the_podman_socket_delivers_files_before_the_entrypoint() {
    if !run(Command::new("docker-compose").arg("version")).0 {
        eprintln!("docker-compose is not installed: skipping");
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let (ok, wait_bin, err) = run(&mut Command::new(root.join("scripts/build-wait")));
    assert!(ok, "scripts/build-wait: {err}");
    on_podman(|ws, _| {
        ws.write_config("");
        let secret = unique("pod/dsocompose");
        ws.set_secret(&format!("{secret}#token"), "dso-token-value");
        ws.set_secret(&format!("{secret}#password"), "dso-file-value");
        let agent = Agent::start(&ws.config());
        let project = unique("poddso").replace('-', "_");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("docker-compose.yml"),
            DSO_COMPOSE
                .replace("IMAGE", &image())
                .replace("SCOPE", &ws.scope)
                .replace("SECRET", &secret),
        )
        .expect("write compose file");
        let dso_compose = |args: &[&str]| {
            run(Command::new(dso_bin())
                .arg("--config")
                .arg(ws.config())
                .args(["compose", "-p", &project])
                .args(args)
                .current_dir(dir.path())
                .env("DOCKER_HOST", ws.engine.docker_host().expect("socket"))
                .env("DSO_WAIT_BIN", wait_bin.trim())
                .stdin(Stdio::null()))
        };
        let (ok, out, err) = dso_compose(&["up", "-d"]);
        assert!(ok, "dso compose up on Podman: {out}{err}\n{}", agent.logs());
        let filter = format!("label=com.docker.compose.project={project}");
        let id = ws
            .engine
            .run(&["ps", "-aq", "--no-trunc", "--filter", &filter]);
        let logs = eventually(&agent, "the app's output", || {
            let (_, out, _) = ws.engine.try_run(&["logs", &id]);
            out.contains("dso-file-value").then_some(out)
        });
        assert!(logs.contains("token=dso-token-value"), "{logs}");
        let (ok, out, err) = dso_compose(&["down", "-t", "0"]);
        assert!(ok, "dso compose down on Podman: {out}{err}");
    });
}
