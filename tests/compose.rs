//! `docker dso …` through the real Docker CLI-plugin mechanism, the real `docker-compose` (v1),
//! the real agent and OpenBao: files before the entrypoint (an image with a shell and one
//! without), `dso://` through Compose's environment, no value on disk nor in the model Compose
//! receives, idempotent `up`, rotation, `-p` and several `-f`, plain `docker-compose down`,
//! unresolvable references stopping everything.
//!
//! A separate test binary: it builds the static `dso-wait` and a static test application once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "it/support.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use support::*;

const TARGET: &str = "x86_64-unknown-linux-gnu";
/// An image without a shell: only the static `needs_file` program.
const NOSHELL_IMAGE: &str = "dso-test/noshell:latest";

/// Static builds of `dso-wait` and the `needs_file` fixture (once per test binary).
fn static_bins() -> &'static (PathBuf, PathBuf) {
    static BINS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BINS.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new("cargo")
            .args(["build", "-q", "--release", "--locked", "--target", TARGET])
            .args([
                "-p",
                "dso-wait",
                "--bin",
                "dso-wait",
                "--example",
                "needs_file",
            ])
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .current_dir(root)
            .output()
            .expect("cargo build dso-wait");
        assert!(
            out.status.success(),
            "static build failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"))
            .join(TARGET)
            .join("release");
        let bins = (dir.join("dso-wait"), dir.join("examples/needs_file"));
        // The image without a shell: FROM scratch + the fixture (ENTRYPOINT + CMD to preserve).
        let ctx = tempfile::tempdir().unwrap();
        std::fs::copy(&bins.1, ctx.path().join("needs_file")).unwrap();
        std::fs::write(
            ctx.path().join("Dockerfile"),
            "FROM scratch\nCOPY needs_file /app/needs_file\n\
             ENTRYPOINT [\"/app/needs_file\"]\nCMD [\"DB_PASSWORD_FILE\"]\n",
        )
        .unwrap();
        docker(&[
            "build",
            "-q",
            "-t",
            NOSHELL_IMAGE,
            &ctx.path().to_string_lossy(),
        ]);
        bins
    })
}

/// One Compose project in a temp dir, an agent for it, the plugin installed in a private
/// `DOCKER_CONFIG`, and a Compose wrapper that records the model Compose receives on stdin.
/// Drop: `docker-compose down` and removal of the project's containers.
struct Project {
    name: String,
    dir: tempfile::TempDir,
    ws: Workspace,
    agent: Option<Agent>,
    docker_config: PathBuf,
    capture: PathBuf,
}

impl Project {
    fn new(prefix: &str) -> Self {
        static_bins();
        let ws = Workspace::new();
        ws.write_config(&format!(
            r#"[providers.bao]
type = "vault"
address = "{}"
token_env = "DSO_IT_BAO_TOKEN"
timeout = "5s"
refresh_interval = "1s"
"#,
            env("DSO_TEST_VAULT_ADDR")
        ));
        // Old-style references (`dso://path`, no provider) resolve through this.
        let cfg = std::fs::read_to_string(ws.config()).unwrap();
        std::fs::write(
            ws.config(),
            cfg.replacen("[agent]\n", "[agent]\ndefault_provider = \"bao\"\n", 1),
        )
        .unwrap();
        let agent = Agent::start_with_env(
            &ws.config(),
            &[("DSO_IT_BAO_TOKEN", &env("DSO_TEST_VAULT_TOKEN"))],
        );
        let dir = tempfile::tempdir().unwrap();
        let name = unique(prefix).replace('-', "_");
        let docker_config = dir.path().join(".docker");
        let capture = dir.path().join("model-capture.json");
        let wrapper = dir.path().join("compose-wrapper");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nfor a; do if [ \"$a\" = - ]; then tee -a '{}' | docker-compose \"$@\"; exit $?; fi; done\nexec docker-compose \"$@\"\n",
                capture.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(
            &wrapper,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let p = Project {
            name,
            dir,
            ws,
            agent: Some(agent),
            docker_config,
            capture,
        };
        // `dso install-plugin --dir`: the real CLI-plugin mechanism, in a private DOCKER_CONFIG.
        let (code, out, err) = dso_with(
            None,
            &[
                "install-plugin",
                "--dir",
                &p.docker_config.join("cli-plugins").to_string_lossy(),
            ],
        );
        assert_eq!(code, Some(0), "install-plugin: {out}{err}");
        p
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    fn write(&self, f: &str, text: &str) {
        std::fs::write(self.path(f), text.replace("SCOPE", &self.ws.scope)).unwrap();
    }

    /// `docker dso ARGS` in the project dir: (exit code, stdout, stderr).
    fn docker_dso(&self, args: &[&str]) -> (Option<i32>, String, String) {
        self.docker_dso_stdin(args, "")
    }

    /// `docker dso ARGS` with `input` on its stdin.
    fn docker_dso_stdin(&self, args: &[&str], input: &str) -> (Option<i32>, String, String) {
        let mut child = Command::new("docker")
            .arg("dso")
            .args(args)
            .current_dir(self.dir.path())
            .env("DOCKER_CONFIG", &self.docker_config)
            .env("DSO_CONFIG", self.ws.config())
            .env("DSO_WAIT_BIN", &static_bins().0)
            .env("DSO_COMPOSE", self.path("compose-wrapper"))
            .env("COMPOSE_PROJECT_NAME", &self.name)
            .env_remove("DSO_IT_BAO_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run docker dso");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            let _ = stdin.write_all(input.as_bytes());
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.docker_dso(args);
        assert_eq!(
            code,
            Some(0),
            "docker dso {args:?}:\n{out}\n{err}\nagent:\n{}",
            self.agent.as_ref().map(Agent::logs).unwrap_or_default()
        );
        format!("{out}{err}")
    }

    /// The project's container ids for `service` (running or not).
    fn containers(&self, project: &str, service: &str) -> Vec<String> {
        docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.compose.project={project}"),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
        ])
        .lines()
        .map(str::to_string)
        .collect()
    }

    /// Waits until `service`'s container logs `needle`; returns the logs.
    fn wait_logs(&self, project: &str, service: &str, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ids = self.containers(project, service);
            let logs = ids
                .first()
                .map(|id| {
                    let (_, o, e) = docker_try(&["logs", id]);
                    format!("{o}{e}")
                })
                .unwrap_or_default();
            if logs.contains(needle) {
                return logs;
            }
            assert!(
                Instant::now() < deadline,
                "{service}: no `{needle}` in the logs: {logs}\nagent:\n{}",
                self.agent.as_ref().map(Agent::logs).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn remove(&self, project: &str) {
        let _ = run(Command::new("docker-compose")
            .args(["-p", project, "down", "-t", "1", "--remove-orphans"])
            .current_dir(self.dir.path())
            .stdin(Stdio::null()));
        for id in docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.compose.project={project}"),
        ])
        .lines()
        {
            let _ = docker_try(&["rm", "-f", id]);
        }
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        self.remove(&self.name.clone());
        if let Some(a) = self.agent.take() {
            let _ = a.terminate();
        }
    }
}

/// The issue's compose file with offline images: a service with a shell and one without, each
/// with a `dsofile://` (its app exits 3 when the file is missing) and a `dso://` variable.
const ISSUE_COMPOSE: &str = r#"services:
  shell:
    image: dso-test/busybox:latest
    command: ["sh", "-c", "test -s \"$$DB_PASSWORD_FILE\" || { echo NOFILE; exit 3; }; echo started-with-file pid=$$$$; trap 'exit 0' TERM; trap 'echo reloaded' HUP; while :; do sleep 1; done"]
    labels:
      dso.test: SCOPE
      dso.reload: signal:SIGHUP
    environment:
      DB_PASSWORD_FILE: dsofile://bao/PATH/db#password
      API_TOKEN: dso://bao/PATH/api#token
  noshell:
    image: dso-test/noshell:latest
    labels:
      dso.test: SCOPE
    environment:
      DB_PASSWORD_FILE: dsofile://bao/PATH/db#password
"#;

#[test]
fn files_before_the_entrypoint_env_through_compose_nothing_on_disk() {
    let p = Project::new("cmp");
    let path = unique("compose");
    let password = unique("pw-value");
    let token = unique("token-value");
    bao_put(&format!("{path}/db"), &[("password", &password)]);
    bao_put(&format!("{path}/api"), &[("token", &token)]);
    p.write("docker-compose.yml", &ISSUE_COMPOSE.replace("PATH", &path));

    // 5 rounds: the application never starts without its file, with and without a shell.
    for round in 0..5 {
        let t = Instant::now();
        let out = p.ok(&["up", "-d"]);
        assert!(
            out.contains("API_TOKEN (shell)") && out.contains("config.v2.json"),
            "the env-visibility note: {out}"
        );
        for service in ["shell", "noshell"] {
            let logs = p.wait_logs(&p.name, service, "started-with-file");
            assert!(!logs.contains("NOFILE"), "round {round}, {service}: {logs}");
            assert!(
                logs.contains("started-with-file pid=1"),
                "{service}: the app is PID 1: {logs}"
            );
        }
        eprintln!(
            "round {round}: up -d until both apps read their file: {:.2} s",
            t.elapsed().as_secs_f64()
        );
        if round < 4 {
            p.ok(&["down", "-t", "1"]);
            assert!(p.containers(&p.name, "shell").is_empty(), "down removed it");
        }
    }

    let shell = p.containers(&p.name, "shell").remove(0);
    let noshell = p.containers(&p.name, "noshell").remove(0);
    let exec = |c: &str, cmd: &str| docker(&["exec", c, "sh", "-c", cmd]);
    assert_eq!(exec(&shell, "cat \"$DB_PASSWORD_FILE\""), password);
    assert_eq!(exec(&shell, "printf %s \"$API_TOKEN\""), token);
    assert_eq!(
        exec(&shell, "printf %s \"$DB_PASSWORD_FILE\""),
        "/run/secrets/dso/db_password"
    );

    // Idempotent: a second up recreates nothing.
    let out = p.ok(&["up", "-d"]);
    assert!(out.contains("up-to-date"), "{out}");
    assert_eq!(p.containers(&p.name, "shell"), vec![shell.clone()]);
    assert_eq!(p.containers(&p.name, "noshell"), vec![noshell.clone()]);

    // `ps` and `config` need no resolution; `config` shows the model without values.
    assert!(p.ok(&["ps"]).contains("Up"));
    let config = p.ok(&["config"]);
    assert!(
        config.contains("/run/dso-wait") && config.contains("${DSO_REF_0}"),
        "{config}"
    );
    assert!(!config.contains(&password) && !config.contains(&token));

    // No value on disk: the model Compose received, the project dir, the writable layers.
    let model = std::fs::read_to_string(&p.capture).unwrap();
    assert!(model.contains("DSO_REF_0"), "the captured model: {model}");
    for needle in [&password, &token] {
        assert!(grep_tree(p.dir.path(), needle.as_bytes()).is_empty());
        for c in [&shell, &noshell] {
            let upper = docker(&["inspect", "-f", "{{.GraphDriver.Data.UpperDir}}", c]);
            assert!(grep_tree(Path::new(&upper), needle.as_bytes()).is_empty());
        }
    }
    // Docker's own record: the dso:// value is there (documented), the file's value is not.
    let cfg = std::fs::read_to_string(format!(
        "{}/containers/{}/config.v2.json",
        docker(&["info", "-f", "{{.DockerRootDir}}"]),
        docker(&["inspect", "-f", "{{.Id}}", &shell])
    ))
    .unwrap();
    assert!(
        cfg.contains(&token),
        "dso:// values are in config.v2.json, as documented"
    );
    assert!(!cfg.contains(&password));

    // Rotation reaches the dsofile:// file.
    let rotated = unique("pw-rotated");
    bao_put(&format!("{path}/db"), &[("password", &rotated)]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while exec(&shell, "cat \"$DB_PASSWORD_FILE\"") != rotated {
        assert!(Instant::now() < deadline, "rotation did not arrive");
        std::thread::sleep(Duration::from_millis(200));
    }
    // dso.reload=signal reaches the application: it is PID 1, not behind a wrapper.
    p.wait_logs(&p.name, "shell", "reloaded");

    // A plain `docker-compose down` addresses the same project.
    let (ok, out, err) = run(Command::new("docker-compose")
        .args(["-p", &p.name, "down", "-t", "1"])
        .current_dir(p.dir.path())
        .stdin(Stdio::null()));
    assert!(ok, "{out}{err}");
    assert!(p.containers(&p.name, "shell").is_empty());
}

#[test]
fn project_name_several_files_and_unresolvable_references() {
    let p = Project::new("cmpf");
    let path = unique("composef");
    let password = unique("pw-value");
    bao_put(&format!("{path}/db"), &[("password", &password)]);
    p.write(
        "base.yml",
        "services:\n  app:\n    image: dso-test/busybox:latest\n    labels:\n      dso.test: SCOPE\n    \
         command: [\"sh\", \"-c\", \"cat \\\"$$PW_FILE\\\" && echo started-with-file; trap 'exit 0' TERM; while :; do sleep 1; done\"]\n",
    );
    p.write(
        "override.yml",
        // The old tool's syntax: no provider (agent.default_provider).
        &format!(
            "services:\n  app:\n    environment:\n      PW_FILE: dsofile://{path}/db#password\n"
        ),
    );
    let project = format!("{}_explicit", p.name);
    let files = ["-p", &project, "-f", "base.yml", "-f", "override.yml"];
    let mut up = files.to_vec();
    up.extend(["up", "-d"]);
    p.ok(&up);
    let logs = p.wait_logs(&project, "app", "started-with-file");
    assert!(logs.contains(&password), "the app read the file: {logs}");
    assert_eq!(p.containers(&project, "app").len(), 1);
    // `run` keeps its stdin (the model goes through /dev/fd/3) and waits for the file too.
    let mut run_args = files.to_vec();
    run_args.extend([
        "run",
        "--rm",
        "-T",
        "app",
        "sh",
        "-c",
        "read x; echo \"$x\"; cat \"$PW_FILE\"",
    ]);
    let (code, out, err) = p.docker_dso_stdin(&run_args, "from-stdin\n");
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out.trim(), format!("from-stdin\n{password}"), "{err}");
    let mut down = files.to_vec();
    down.extend(["down", "-t", "1"]);
    p.ok(&down);
    assert!(p.containers(&project, "app").is_empty());
    p.remove(&project);

    // A service built from a Dockerfile: built first, its image's Entrypoint and Cmd (with a `$`
    // Compose must not interpolate) preserved behind the wait.
    std::fs::create_dir_all(p.path("ctx")).unwrap();
    p.write(
        "ctx/Dockerfile",
        "FROM dso-test/busybox:latest\nENTRYPOINT [\"/bin/sh\", \"-c\"]\n\
         CMD [\"test -s \\\"$PW_FILE\\\" && echo started-with-file as $0; trap 'exit 0' TERM; while :; do sleep 1; done\"]\n",
    );
    p.write(
        "built.yml",
        &format!(
            "services:\n  built:\n    build: ./ctx\n    labels:\n      dso.test: SCOPE\n    \
             environment:\n      PW_FILE: dsofile://bao/{path}/db#password\n"
        ),
    );
    let built_project = format!("{}_built", p.name);
    p.ok(&["-p", &built_project, "-f", "built.yml", "up", "-d"]);
    let logs = p.wait_logs(&built_project, "built", "started-with-file");
    assert!(logs.contains("started-with-file as /bin/sh"), "{logs}");
    p.remove(&built_project);
    let _ = docker_try(&["rmi", &format!("{built_project}_built")]);

    // Unresolvable: stops before anything starts, naming service and variable; exit 5.
    p.write(
        "docker-compose.yml",
        &format!(
            "services:\n  app:\n    image: dso-test/busybox:latest\n    labels:\n      dso.test: SCOPE\n    \
             command: [\"true\"]\n    environment:\n      OK_FILE: dsofile://bao/{path}/db#password\n      \
             MISSING: dso://bao/{path}/nothing-here#token\n"
        ),
    );
    let (code, out, err) = p.docker_dso(&["up", "-d"]);
    assert_eq!(code, Some(5), "{out}{err}");
    assert!(
        err.contains("service `app`, variable MISSING: cannot resolve"),
        "{err}"
    );
    assert!(err.contains("not starting anything"), "{err}");
    assert!(p.containers(&p.name, "app").is_empty(), "nothing started");
    assert!(!err.contains(&password), "{err}");
}

/// Started without DSO (a plain `docker-compose up` of a file with references, the old tool's
/// `dso.reloader` label): the agent and `dso doctor` warn, naming container and variable (never a
/// value), with the closest known label; nothing is refused.
#[test]
fn a_plain_compose_up_is_flagged_by_the_agent_and_doctor() {
    let p = Project::new("cmpw");
    let other = unique("other-value");
    p.write(
        "docker-compose.yml",
        &format!(
            "services:\n  app:\n    image: dso-test/busybox:latest\n    command: [\"sleep\", \"300\"]\n    \
             stop_signal: SIGKILL\n    labels:\n      dso.test: SCOPE\n      dso.reloader: \"true\"\n    \
             environment:\n      API_TOKEN: dso://bao/app/api#token\n      DB_FILE: dsofile://bao/app/db#pw\n      \
             OTHER: {other}\n"
        ),
    );
    let (ok, out, err) = run(Command::new("docker-compose")
        .args(["-p", &p.name, "up", "-d"])
        .current_dir(p.dir.path())
        .stdin(Stdio::null()));
    assert!(ok, "{out}{err}");
    let agent = p.agent.as_ref().unwrap();
    let container = format!("{}_app_1", p.name);
    agent.wait_log("label dso.reloader is not a DSO label");
    let logs = agent.wait_log("environment variable DB_FILE holds a literal");
    assert!(
        logs.contains("environment variable API_TOKEN holds a literal"),
        "{logs}"
    );
    assert!(logs.contains(&container), "names the container: {logs}");
    assert!(logs.contains("did you mean dso.secret.<NAME>"), "{logs}");
    assert!(!logs.contains(&other), "never another variable's value");
    assert_eq!(
        agent.metric("dso_container_warnings_total{reason=\"literal_reference\"}"),
        Some(2.0)
    );
    assert_eq!(
        agent.metric("dso_container_warnings_total{reason=\"unknown_label\"}"),
        Some(1.0)
    );

    let (_, out, err) = dso_with(Some(&p.ws.config()), &["doctor", "--json"]);
    let checks: serde_json::Value = serde_json::from_str(&out).expect(&err);
    let mine: Vec<&serde_json::Value> = checks
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["check"] == format!("container {container}"))
        .collect();
    assert!(
        mine.iter().any(|c| c["warning"] == true
            && c["detail"].as_str().unwrap().contains("API_TOKEN, DB_FILE")),
        "{out}"
    );
    assert!(
        mine.iter()
            .any(|c| c["warning"] == true
                && c["fix"].as_str().unwrap().contains("dso.secret.<NAME>")),
        "{out}"
    );
    assert!(!out.contains(&other), "never another variable's value");
}
