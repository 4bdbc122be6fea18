//! The agent as a container (`deploy/compose.yaml`) under Docker's restart policy, with the real
//! daemon and the real `docker-compose`. A separate test binary, so that it does not run in
//! parallel with `tests/it`: it builds the release image first (`scripts/build-image`, cached in
//! `target/`), which takes minutes on a cold cache.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "it/engine2.rs"]
mod engine2;
#[path = "it/support.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

const DIR: &str = "/run/secrets/dso";
/// The agent image the test builds (not `dso:dev`, which a developer may be using).
const AGENT_IMAGE: &str = "dso-test/agent:latest";
const WAIT: Duration = Duration::from_secs(90);

fn compose_file() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/compose.yaml")
}

/// Builds the agent image with `scripts/build-image` (release static build, incremental in
/// `target/`); prints how long it took.
fn build_image() {
    let t = Instant::now();
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/build-image"))
        .arg(AGENT_IMAGE)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run scripts/build-image");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/build-image {AGENT_IMAGE} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        err.lines()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!(
        "scripts/build-image {AGENT_IMAGE}: {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// One `docker-compose` project from `deploy/compose.yaml` with a temp config, state and run
/// directory; `docker-compose down` on drop.
struct Project {
    name: String,
    dir: tempfile::TempDir,
    listen: String,
}

impl Project {
    fn new() -> Project {
        let dir = tempfile::tempdir().expect("tempdir");
        let name = unique("dsoct").replace('-', "");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let p = Project {
            name,
            dir,
            listen: format!("127.0.0.1:{port}"),
        };
        std::fs::create_dir_all(p.path("state")).unwrap();
        std::fs::create_dir_all(p.path("run")).unwrap();
        // The agent's config, with the paths it sees inside its container; the agent listens on
        // the host network (network_mode: host) on a free port.
        std::fs::write(
            p.path("dso.toml"),
            format!(
                r#"[agent]
listen = "{listen}"
scope = "com.docker.compose.project={name}"
reconcile_interval = "0s"
state_dir = "/var/lib/dso"
admin_socket = "/run/dso/dso.sock"

[providers.local]
type = "file"
path = "/var/lib/dso/vault.enc"
key_file = "/var/lib/dso/vault.key"
"#,
                listen = p.listen,
                name = p.name
            ),
        )
        .unwrap();
        // The same vault seen from the host, for `dso secret set`.
        std::fs::write(
            p.path("host.toml"),
            format!(
                "[providers.local]\ntype = \"file\"\npath = \"{}\"\nkey_file = \"{}\"\n",
                p.path("state/vault.enc").display(),
                p.path("state/vault.key").display()
            ),
        )
        .unwrap();
        p
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `dso secret set REF` against the project's vault, value on stdin.
    fn set_secret(&self, reference: &str, value: &str) {
        use std::io::Write;
        let mut child = Command::new(dso_bin())
            .arg("--config")
            .arg(self.path("host.toml"))
            .args(["secret", "set", reference])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn dso secret set");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(value.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "dso secret set {reference}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn compose_cmd(&self) -> Command {
        let mut c = Command::new("docker-compose");
        c.args(["-f", compose_file(), "-p", &self.name])
            .env("DSO_IMAGE", AGENT_IMAGE)
            .env("APP_IMAGE", image())
            .env("DSO_CONFIG_FILE", self.path("dso.toml"))
            .env("DSO_STATE_DIR", self.path("state"))
            .env("DSO_VAULT_KEY", self.path("state/vault.key"))
            .env("DSO_RUN_DIR", self.path("run"))
            // "secrets already in place" (an unchanged container) is a debug line.
            .env("DSO_LOG", "info,dso_actors::injector=debug");
        c
    }

    fn compose_try(&self, args: &[&str]) -> (bool, String, String) {
        run(self.compose_cmd().args(args))
    }

    fn compose(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.compose_try(args);
        assert!(
            ok,
            "docker-compose {args:?} failed:\n{out}\n{err}\n{}",
            self.context()
        );
        out
    }

    /// Container ids of one service.
    fn ids(&self, service: &str) -> Vec<String> {
        self.compose_try(&["ps", "-q", service])
            .1
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    fn agent_id(&self) -> String {
        let ids = self.ids("dso");
        assert_eq!(ids.len(), 1, "one agent container\n{}", self.context());
        ids[0].clone()
    }

    fn inspect(&self, id: &str, format: &str) -> String {
        docker_try(&["inspect", "-f", format, id])
            .1
            .trim()
            .to_string()
    }

    /// `docker-compose logs` and `docker inspect` of the agent, for failure messages.
    fn context(&self) -> String {
        let (_, logs, err) = self.compose_try(&["logs", "--no-color", "--tail", "300"]);
        let agent = self.compose_try(&["ps", "-q", "dso"]).1;
        let inspect = agent
            .split_whitespace()
            .next()
            .map(|id| docker_try(&["inspect", id]).1)
            .unwrap_or_default();
        format!(
            "--- docker-compose logs ---\n{logs}{err}\n--- docker inspect (agent) ---\n{inspect}"
        )
    }

    /// Polls `f` until Some (generous timeout), or panics with `what` and the context.
    fn eventually<T>(&self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for: {what}\n{}",
                self.context()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `cat PATH` in a container, None when missing.
    fn read(&self, id: &str, path: &str) -> Option<String> {
        let (ok, out, _) = docker_try(&["exec", "-u", "0", id, "cat", path]);
        ok.then_some(out)
    }

    /// The agent's metric sample (host network: its listen address is reachable from here).
    fn metric(&self, series: &str) -> Option<f64> {
        metric_at(&self.listen, series)
    }
}

/// A metric sample from the agent listening on `addr`.
fn metric_at(addr: &str, series: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.compose_try(&["down", "-t", "1", "--remove-orphans"]);
        // Anything compose did not remove (a failed `up`).
        let filter = format!("label=com.docker.compose.project={}", self.name);
        let (_, ids, _) = docker_try(&["ps", "-aq", "--filter", &filter]);
        for id in ids.split_whitespace() {
            let _ = docker_try(&["rm", "-f", id]);
        }
    }
}

/// The app's secret files, digest and SIGHUP count, once it has started past `.ready`.
fn app_state(p: &Project, id: &str) -> Option<(String, String, String, String)> {
    Some((
        p.read(id, &format!("{DIR}/db_password"))?,
        p.read(id, &format!("{DIR}/db_user"))?,
        p.read(id, &format!("{DIR}/.ready"))?,
        p.read(id, "/tmp/reloads")?.trim().to_string(),
    ))
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) on the pid Docker reports as the agent container's main process.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// Fails with instructions when `docker-compose` (v1, Debian's package) is not installed.
fn require_compose() {
    let found = Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "docker-compose is not installed: run the tests with `scripts/test` (scripts/test-env.sh \
         installs Debian's docker-compose package), or `apt-get install docker-compose`"
    );
}

#[test]
fn the_agent_container_killed_by_sigkill_is_restarted_and_rewrites_nothing() {
    require_compose();
    build_image();
    let p = Project::new();
    p.set_secret("app/db#password", "ct-password-41");
    p.set_secret("app/db#user", "ct-user-17");
    assert!(Path::new(&p.path("state/vault.key")).is_file());
    // The admin socket's directory is created when missing (/run is emptied at boot).
    std::fs::remove_dir(p.path("run")).unwrap();

    p.compose(&["up", "-d"]);
    assert!(p.path("run").is_dir(), "the run directory is created");
    let agent = p.agent_id();
    let app = p.eventually("the app container", || p.ids("app").into_iter().next());
    let before = p.eventually("the app's secrets and its reload counter", || {
        app_state(&p, &app)
    });
    assert_eq!(before.0, "ct-password-41", "{}", p.context());
    assert_eq!(before.1, "ct-user-17", "{}", p.context());
    assert_eq!(before.3, "0", "no SIGHUP on a first injection");
    let mounts = p.inspect(
        &agent,
        "{{range .Mounts}}{{.Destination}}={{if .RW}}rw{{else}}ro{{end}} {{end}}",
    );
    for m in [
        "/etc/dso/dso.toml=ro",
        "/var/lib/dso/vault.key=ro",
        "/var/lib/dso=rw",
        "/run/dso=rw",
        "/var/run/docker.sock=rw",
    ] {
        assert!(
            mounts.split_whitespace().any(|x| x == m),
            "agent mount {m} (got {mounts})"
        );
    }
    p.eventually(
        "digest.key and audit.jsonl written in the (read-write) state dir",
        || {
            (p.path("state/digest.key").is_file() && p.path("state/audit.jsonl").is_file())
                .then_some(())
        },
    );
    // A container whose process runs as a non-root user: its /proc/<pid>/root is behind a ptrace
    // access-mode check, which CAP_SYS_PTRACE (compose.yaml) passes — the direct path, no exec.
    let scope = format!("com.docker.compose.project={}", p.name);
    let name = unique("ctuser");
    let id = docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        &scope,
        "--user",
        "1000:1000",
        "--tmpfs",
        DIR,
        "--label",
        "dso.secret.pw=local/app/db#password",
        &image(),
        "/bin/sleep",
        "600",
    ]);
    let user = Container::docker(id, name);
    p.eventually("the non-root container's secret", || {
        (p.read(&user.id, &format!("{DIR}/pw"))? == "ct-password-41").then_some(())
    });
    assert_eq!(
        docker(&[
            "exec",
            &user.id,
            "stat",
            "-L",
            "-c",
            "%u",
            &format!("{DIR}/pw")
        ]),
        "1000",
        "owned by the container's user"
    );
    let direct = p.metric("dso_injections_by_mode_total{mode=\"direct\"}");
    let denied = p.metric("dso_direct_fallbacks_total{reason=\"proc_denied\"}");
    assert!(
        direct >= Some(2.0) && denied == Some(0.0),
        "the app and the non-root container written directly, no fallback (direct {direct:?}, \
         proc_denied {denied:?})\n{}",
        p.context()
    );
    drop(user);
    let first_logs = docker_try(&["logs", &agent]).2;
    assert!(
        first_logs.contains("memory locked (mlockall)"),
        "cap_add: [IPC_LOCK] lets the agent lock its memory\n{}",
        p.context()
    );

    // The agent goes down: frozen first, so that a container started now is certainly started
    // while no agent is looking, then killed with SIGKILL.
    let pid: i32 = p.inspect(&agent, "{{.State.Pid}}").parse().unwrap();
    assert!(pid > 0, "agent pid\n{}", p.context());
    assert_eq!(p.inspect(&agent, "{{.RestartCount}}"), "0");
    signal(pid, libc::SIGSTOP);
    p.compose(&[
        "up",
        "-d",
        "--no-deps",
        "--no-recreate",
        "--scale",
        "app=2",
        "app",
    ]);
    let new_app = p.eventually("a second app container", || {
        p.ids("app").into_iter().find(|id| *id != app)
    });
    p.eventually("the second app container running", || {
        (p.inspect(&new_app, "{{.State.Running}}") == "true").then_some(())
    });
    assert!(
        p.read(&new_app, &format!("{DIR}/.ready")).is_none(),
        "the frozen agent cannot have injected the new container\n{}",
        p.context()
    );
    signal(pid, libc::SIGKILL);

    // Docker's restart policy brings it back.
    p.eventually(
        "the agent restarted by Docker (RestartCount 1, running)",
        || {
            (p.inspect(&agent, "{{.RestartCount}} {{.State.Running}}") == "1 true"
                && p.inspect(&agent, "{{.State.Pid}}") != pid.to_string())
            .then_some(())
        },
    );

    // The container started while it was down gets its secrets (start-up reconcile).
    let fresh = p.eventually("the new app container's secrets", || {
        app_state(&p, &new_app)
    });
    assert_eq!(
        (fresh.0.as_str(), fresh.1.as_str(), fresh.3.as_str()),
        ("ct-password-41", "ct-user-17", "0"),
        "{}",
        p.context()
    );

    // The old one is found unchanged: nothing rewritten, no reload.
    p.eventually(
        "the restarted agent finding the old container unchanged",
        || (p.metric("dso_injections_total{result=\"unchanged\"}")? >= 1.0).then_some(()),
    );
    let short = &app[..12];
    let new_short = &new_app[..12];
    let restarted_logs = p.eventually("the restarted agent's log lines", || {
        // The restarted agent's lines: those after the last "dso agent starting".
        let all = docker_try(&["logs", &agent]).2;
        if all.matches("\"dso agent starting\"").count() != 2 {
            return None;
        }
        let from = all.rfind("\"dso agent starting\"")?;
        let logs = all[from..].to_string();
        logs.lines()
            .any(|l| l.contains("secrets already in place") && l.contains(short))
            .then_some(logs)
    });
    assert!(
        !restarted_logs
            .lines()
            .any(|l| l.contains("secrets injected") && l.contains(short)),
        "the restarted agent re-injected the old container\n{}",
        p.context()
    );
    assert!(
        restarted_logs
            .lines()
            .any(|l| l.contains("secrets injected")
                && l.contains(new_short)
                && l.contains("reconcile")),
        "the new container is injected by the start-up reconcile\n{}",
        p.context()
    );
    let after = app_state(&p, &app).expect("the old app's files");
    assert_eq!(
        after,
        before,
        "files, .ready and SIGHUP count unchanged\n{}",
        p.context()
    );
    assert_eq!(
        p.metric("dso_reloads_total{policy=\"signal\",result=\"ok\"}"),
        Some(0.0),
        "no reload policy fired\n{}",
        p.context()
    );
    assert_eq!(
        p.metric("dso_injections_total{result=\"success\"}"),
        Some(1.0),
        "one injection after the restart: the new container\n{}",
        p.context()
    );
    let audit = std::fs::read_to_string(p.path("state/audit.jsonl")).unwrap_or_default();
    let context = p.context();
    for secret in ["ct-password-41", "ct-user-17"] {
        assert!(
            !context.contains(secret) && !audit.contains(secret),
            "a secret value in the logs, docker inspect or the audit log"
        );
    }
}

#[test]
fn a_missing_vault_key_is_an_error_not_an_empty_directory() {
    // Compose creates nothing in place of a missing bind source (long syntax): the agent must
    // not start on an empty directory where its key should be. No agent image needed: the
    // container is refused before it is created.
    require_compose();
    let p = Project::new();
    let (ok, out, err) =
        run(p
            .compose_cmd()
            .env("DSO_IMAGE", image())
            .args(["up", "-d", "--no-deps", "dso"]));
    assert!(!ok, "up succeeded without vault.key:\n{out}\n{err}");
    let key = p.path("state/vault.key");
    assert!(
        err.contains("bind source path does not exist") && err.contains(&*key.to_string_lossy()),
        "the error names the missing vault.key:\n{err}"
    );
    assert!(!key.exists(), "nothing created in its place");
}

/// A free port on 127.0.0.1 (for an agent on the host network).
fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

#[test]
fn a_standby_agent_container_takes_over_from_a_killed_one_and_docker_healthchecks_both() {
    require_compose();
    build_image();
    let p = Project::new();
    p.set_secret("app/db#password", "sb-password-5");
    p.set_secret("app/db#user", "sb-user-6");
    let standby_listen = free_addr();
    let up = p
        .compose_cmd()
        .env("DSO_STANDBY_LISTEN", &standby_listen)
        .args(["--profile", "standby", "up", "-d"])
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "docker-compose --profile standby up: {}\n{}",
        String::from_utf8_lossy(&up.stderr),
        p.context()
    );
    let app = p.eventually("the app container", || p.ids("app").into_iter().next());
    let before = p.eventually("the app's secrets", || app_state(&p, &app));
    assert_eq!(before.0, "sb-password-5", "{}", p.context());
    // Exactly one of the two is active; which one won the lock at start-up does not matter.
    let agents = [("dso", p.listen.clone()), ("dso-standby", standby_listen)];
    let leaders = p.eventually("both agents answering dso_leader", || {
        agents
            .iter()
            .map(|(_, addr)| metric_at(addr, "dso_leader"))
            .collect::<Option<Vec<f64>>>()
    });
    assert_eq!(
        leaders.iter().sum::<f64>(),
        1.0,
        "{leaders:?}\n{}",
        p.context()
    );
    let (active, passive) = if leaders[0] == 1.0 {
        (&agents[0], &agents[1])
    } else {
        (&agents[1], &agents[0])
    };
    let active_id = p.ids(active.0).remove(0);
    let passive_id = p.ids(passive.0).remove(0);
    // Docker's healthcheck (`dso health`, DSO_LISTEN) passes on the standby too.
    p.eventually("both agent containers healthy", || {
        [&active_id, &passive_id]
            .iter()
            .all(|id| p.inspect(id, "{{.State.Health.Status}}") == "healthy")
            .then_some(())
    });

    let pid: i32 = p.inspect(&active_id, "{{.State.Pid}}").parse().unwrap();
    let killed = Instant::now();
    signal(pid, libc::SIGKILL);
    let took_over = p.eventually("the standby taking over", || {
        (metric_at(&passive.1, "dso_leader")? == 1.0).then(|| killed.elapsed())
    });
    eprintln!(
        "compose hot standby: {} answered dso_leader 1 {} ms after kill -9 of {}",
        passive.0,
        took_over.as_millis(),
        active.0
    );
    assert!(took_over < Duration::from_secs(10), "{took_over:?}");
    // It found the app's files in place: nothing rewritten, no reload.
    p.eventually("the new active agent finding the app unchanged", || {
        (metric_at(&passive.1, "dso_injections_total{result=\"unchanged\"}")? >= 1.0).then_some(())
    });
    assert_eq!(
        metric_at(&passive.1, "dso_injections_total{result=\"success\"}"),
        Some(0.0),
        "{}",
        p.context()
    );
    assert_eq!(app_state(&p, &app), Some(before), "{}", p.context());
    // Docker restarts the killed one, which now waits as the standby.
    p.eventually("the killed agent restarted as the standby", || {
        (p.inspect(&active_id, "{{.RestartCount}} {{.State.Running}}") == "1 true"
            && metric_at(&active.1, "dso_leader")? == 0.0)
            .then_some(())
    });
    let audit = std::fs::read_to_string(p.path("state/audit.jsonl")).unwrap_or_default();
    assert_eq!(
        audit.matches("\"delivered\"").count(),
        1,
        "one delivery in all: the app's\n{audit}"
    );
}

/// `deploy/swarm-stack.yaml` with `docker stack deploy` on a single-node swarm (a private dockerd,
/// `it/engine2.rs`, so swarm mode never reaches the shared daemon): the agent runs as a global
/// service with its config and vault as Swarm configs/secrets, serves a service's task over the
/// exec path (no `pid: host` for services), and the time of that write is printed.
#[test]
fn the_agent_stack_deploys_on_a_swarm_and_serves_a_service_over_exec() {
    build_image();
    let mut engine = engine2::Engine2::unix("dso-stack-", &format!("dsostk{}", std::process::id()));
    engine.swarm_init();
    copy_image(AGENT_IMAGE, engine.docker_cmd().arg("load"));
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |f: &str| dir.path().join(f).display().to_string();
    let scope = unique("stack");
    std::fs::write(
        p("dso-swarm.toml"),
        format!(
            r#"[agent]
scope = "dso.test={scope}"
state_dir = "/var/lib/dso"
admin_socket = "/var/lib/dso/dso.sock"

[providers.local]
type = "file"
path = "/run/secrets/dso_vault"
key_file = "/run/secrets/dso_vault_key"
"#
        ),
    )
    .unwrap();
    std::fs::write(
        p("host.toml"),
        format!(
            "[providers.local]\ntype = \"file\"\npath = \"{}\"\nkey_file = \"{}\"\n",
            p("vault.enc"),
            p("vault.key")
        ),
    )
    .unwrap();
    let (code, _, err) = {
        use std::io::Write;
        let mut child = Command::new(dso_bin())
            .args([
                "--config",
                &p("host.toml"),
                "secret",
                "set",
                "app/db#password",
            ])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"from-stack")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            (),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(code, Some(0), "dso secret set: {err}");

    let sock = engine.path("docker.sock").display().to_string();
    let (ok, out, err) = run(engine
        .docker_cmd()
        .args(["stack", "deploy", "-c"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/swarm-stack.yaml"
        ))
        .arg("dso")
        .env("DSO_IMAGE", AGENT_IMAGE)
        .env("DSO_CONFIG_FILE", p("dso-swarm.toml"))
        .env("DSO_VAULT_FILE", p("vault.enc"))
        .env("DSO_VAULT_KEY", p("vault.key"))
        .env("DSO_DOCKER_SOCKET", &sock));
    assert!(ok, "docker stack deploy: {out}{err}");
    let agent_logs = |engine: &engine2::Engine2| -> String {
        let id = engine.docker(&[
            "ps",
            "-q",
            "--filter",
            "label=com.docker.swarm.service.name=dso_dso",
        ]);
        let id = id.lines().next().unwrap_or_default().to_string();
        if id.is_empty() {
            return engine
                .docker_try(&["service", "ps", "--no-trunc", "dso_dso"])
                .1;
        }
        let (_, out, err) = engine.docker_try(&["logs", &id]);
        format!("{out}{err}")
    };
    let deadline = Instant::now() + WAIT;
    while !agent_logs(&engine).contains("docker event stream connected") {
        assert!(
            Instant::now() < deadline,
            "the agent task never connected:\n{}",
            agent_logs(&engine)
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // The application as a stack too: service-level `labels` reach the task containers,
    // `deploy.labels` label the service only (that secret must not be written).
    std::fs::write(
        p("app-stack.yaml"),
        format!(
            r#"version: "3.8"
services:
  app:
    image: {image}
    command: ["/bin/sleep", "600"]
    stop_grace_period: 1s
    labels:
      dso.test: "{scope}"
      dso.secret.pw: local/app/db#password
    volumes:
      - type: tmpfs
        target: {DIR}
    deploy:
      replicas: 3
      labels:
        dso.secret.ignored: local/app/db#password
"#,
            image = image()
        ),
    )
    .unwrap();
    let (ok, out, err) =
        run(engine
            .docker_cmd()
            .args(["stack", "deploy", "-c", &p("app-stack.yaml"), "app"]));
    assert!(ok, "docker stack deploy (app): {out}{err}");
    let deadline = Instant::now() + WAIT;
    loop {
        let ids = engine.docker(&[
            "ps",
            "-q",
            "--filter",
            "label=com.docker.swarm.service.name=app_app",
        ]);
        let served = ids
            .lines()
            .filter(|id| {
                let (ok, out, _) = engine.docker_try(&["exec", id, "cat", &format!("{DIR}/pw")]);
                ok && out == "from-stack"
            })
            .count();
        if served == 3 {
            for id in ids.lines() {
                let ls = engine.docker(&["exec", id, "ls", "-A", DIR]);
                assert!(
                    !ls.contains("ignored"),
                    "deploy.labels reached the task: {ls}"
                );
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the app's 3 tasks never got their secret:\n{}",
            agent_logs(&engine)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let logs = agent_logs(&engine);
    assert!(
        logs.contains("direct writes not possible") && logs.contains("pid_namespace"),
        "a Swarm service has no pid: host, so the exec path:\n{logs}"
    );
    let took: Vec<u64> = logs
        .lines()
        .filter(|l| l.contains("secrets injected"))
        .filter_map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()?
                .get("duration_us")?
                .as_u64()
        })
        .collect();
    eprintln!("swarm stack agent, exec path: injection took {took:?} µs");
    for stack in ["app", "dso"] {
        let (ok, out, err) = run(engine.docker_cmd().args(["stack", "rm", stack]));
        assert!(ok, "docker stack rm {stack}: {out}{err}");
    }
}
