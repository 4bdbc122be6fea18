//! Test support: the real agent binary, the real Docker daemon (through the `docker` CLI), and
//! the services `scripts/test` starts. Failure messages dump full context (agent logs, command
//! output) so a red run explains itself.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Path of the built `dso` binary.
pub fn dso_bin() -> &'static str {
    env!("CARGO_BIN_EXE_dso")
}

/// An env var that `scripts/test` exports; a missing one fails the test with instructions.
pub fn env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: run the tests with `scripts/test` (it installs and starts Docker, \
             OpenBao and the test image, then runs cargo test)"
        ),
    }
}

/// The busybox test image.
pub fn image() -> String {
    env("DSO_TEST_IMAGE")
}

/// A unique token for names and scopes.
pub fn unique(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        Instant::now().elapsed().subsec_nanos() % 100_000
    )
}

/// Runs a command and returns (status ok, stdout, stderr).
pub fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `docker save` of the test image piped into `load` (another engine's `load`, e.g. `podman load`).
pub fn copy_test_image(load: &mut Command) {
    copy_image(&image(), load)
}

/// `docker save NAME` (the shared daemon) piped into `load`.
pub fn copy_image(name: &str, load: &mut Command) {
    let mut save = Command::new("docker")
        .args(["save", name])
        .stdout(Stdio::piped())
        .spawn()
        .expect("docker save");
    let pipe = save.stdout.take().expect("pipe");
    let (ok, out, err) = run(load.stdin(pipe));
    let saved = save.wait().expect("docker save");
    assert!(
        saved.success() && ok,
        "image copy: save {saved}, load: {out}{err}"
    );
}

/// SIGTERM to a child we started, up to `grace` for it to exit, then SIGKILL; always reaped.
pub fn stop_child(child: &mut Child, grace: Duration) {
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let deadline = Instant::now() + grace;
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `docker ARGS`, panicking with full output on failure.
pub fn docker(args: &[&str]) -> String {
    let (ok, out, err) = run(Command::new("docker").args(args));
    assert!(ok, "docker {args:?} failed:\nstdout: {out}\nstderr: {err}");
    out.trim().to_string()
}

/// `docker ARGS` that may fail.
pub fn docker_try(args: &[&str]) -> (bool, String, String) {
    run(Command::new("docker").args(args))
}

/// The engine a test's containers run on, as its CLI reaches it: the shared dockerd (`docker`),
/// or a Podman service through its Docker-compatible socket (`podman --url unix://…`). The core
/// real-stack tests take a [`Workspace`] and run once per engine (`tests/it/podman.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Engine {
    Docker,
    /// A `podman system service` socket.
    Podman(PathBuf),
}

impl Engine {
    /// The engine's CLI, pointed at it.
    pub fn cli(&self) -> Command {
        match self {
            Engine::Docker => Command::new("docker"),
            Engine::Podman(socket) => {
                let mut c = Command::new("podman");
                c.arg("--url").arg(format!("unix://{}", socket.display()));
                c
            }
        }
    }

    /// `CLI ARGS`, panicking with full output on failure.
    pub fn run(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.try_run(args);
        assert!(
            ok,
            "{self:?} {args:?} failed:\nstdout: {out}\nstderr: {err}"
        );
        out.trim().to_string()
    }

    /// `CLI ARGS` that may fail.
    pub fn try_run(&self, args: &[&str]) -> (bool, String, String) {
        run(self.cli().args(args))
    }

    /// `run` options this engine needs on these VMs before the test's own: Podman's ready process
    /// cannot raise rlimits without CAP_SYS_RESOURCE, and its containers need no network here.
    pub fn run_options(&self) -> &'static [&'static str] {
        match self {
            Engine::Docker => &[],
            Engine::Podman(_) => &[
                "--network",
                "none",
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=4096:4096",
            ],
        }
    }

    /// `rm -f` of a container, not waiting out a stop timeout (Podman's `rm -f` stops first).
    pub fn remove(&self, id: &str) {
        let _ = match self {
            Engine::Docker => self.try_run(&["rm", "-f", id]),
            Engine::Podman(_) => self.try_run(&["rm", "-f", "-t", "0", id]),
        };
    }

    /// `agent.docker_host` for this engine (None: the agent's default, the local dockerd).
    pub fn docker_host(&self) -> Option<String> {
        match self {
            Engine::Docker => None,
            Engine::Podman(socket) => Some(format!("unix://{}", socket.display())),
        }
    }
}

/// A temp dir with a config for one agent, and the engine its containers run on.
pub struct Workspace {
    pub dir: tempfile::TempDir,
    pub scope: String,
    pub engine: Engine,
}

/// `agent.write_mode` of test configs: `DSO_IT_WRITE_MODE` (`scripts/test` runs the writing tests a
/// second time with `exec`), else `auto` (the tests run as root on the host: the direct path).
pub fn default_write_mode() -> String {
    std::env::var("DSO_IT_WRITE_MODE").unwrap_or_else(|_| "auto".to_string())
}

impl Workspace {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            scope: unique("scope"),
            engine: Engine::Docker,
        }
    }

    /// The same workspace with its containers (and its agent's `docker_host`) on `engine`.
    pub fn on(self, engine: Engine) -> Self {
        Self { engine, ..self }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `dso.toml`: admin on an ephemeral port, scoped to this test's containers, a local
    /// file vault in the temp dir, plus `extra` TOML.
    pub fn write_config(&self, extra: &str) -> PathBuf {
        let docker_host = self
            .engine
            .docker_host()
            .map(|h| format!("docker_host = \"{h}\"\n"))
            .unwrap_or_default();
        let cfg = format!(
            r#"[agent]
{docker_host}listen = "127.0.0.1:0"
write_mode = "{write_mode}"
scope = "dso.test={scope}"
shards = 4
reconcile_interval = "0s"
state_dir = "{state}"
admin_socket = "{socket}"

[cache]
ttl = "10m"

[providers.local]
type = "file"
path = "{vault}"
key_file = "{key}"

{extra}
"#,
            scope = self.scope,
            write_mode = default_write_mode(),
            state = self.path("state").display(),
            socket = self.path("dso.sock").display(),
            vault = self.path("vault.enc").display(),
            key = self.path("vault.key").display(),
        );
        let p = self.path("dso.toml");
        std::fs::write(&p, cfg).expect("write config");
        p
    }

    pub fn config(&self) -> PathBuf {
        self.path("dso.toml")
    }

    /// Adds `lines` (TOML keys) to `[agent]` (after `write_config`).
    pub fn add_agent_settings(&self, lines: &str) {
        let cfg = std::fs::read_to_string(self.config()).expect("read config");
        let cfg = cfg.replacen("[agent]\n", &format!("[agent]\n{lines}\n"), 1);
        std::fs::write(self.config(), cfg).expect("write config");
    }

    /// Sets `agent.write_mode` in the config (after `write_config`).
    pub fn set_write_mode(&self, mode: &str) {
        let cfg = std::fs::read_to_string(self.config()).expect("read config");
        let cfg: String = cfg
            .lines()
            .filter(|l| !l.starts_with("write_mode"))
            .map(|l| format!("{l}\n"))
            .collect();
        let cfg = cfg.replacen(
            "[agent]\n",
            &format!("[agent]\nwrite_mode = \"{mode}\"\n"),
            1,
        );
        std::fs::write(self.config(), cfg).expect("write config");
    }

    /// `dso secret set REF` with the value on stdin.
    pub fn set_secret(&self, reference: &str, value: &str) {
        let mut child = Command::new(dso_bin())
            .args(["--config"])
            .arg(self.config())
            .args(["secret", "set", reference])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn dso secret set");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(value.as_bytes()).expect("write value");
        }
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "dso secret set {reference} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs a labelled container (scope label added) with `args` before the image and `cmd` as
    /// its command.
    pub fn container_cmd(&self, args: &[&str], cmd: &[&str]) -> Container {
        let name = unique("c");
        let scope_label = format!("dso.test={}", self.scope);
        let mut full: Vec<&str> = vec!["run", "-d", "--name", &name, "--label", &scope_label];
        full.extend_from_slice(self.engine.run_options());
        full.extend_from_slice(args);
        let img = image();
        full.push(&img);
        full.extend_from_slice(cmd);
        let id = self.engine.run(&full);
        Container {
            id,
            name,
            engine: self.engine.clone(),
        }
    }

    /// Runs a labelled container (scope label added) with `args` before the image.
    pub fn container(&self, args: &[&str]) -> Container {
        self.container_cmd(args, &["/bin/sleep", "600"])
    }
}

/// A container removed on drop.
pub struct Container {
    pub id: String,
    pub name: String,
    pub engine: Engine,
}

impl Container {
    /// A Docker container created by the test itself.
    pub fn docker(id: String, name: String) -> Self {
        Self {
            id,
            name,
            engine: Engine::Docker,
        }
    }

    /// `inspect -f FORMAT` of this container.
    pub fn inspect(&self, format: &str) -> String {
        self.engine.run(&["inspect", "-f", format, &self.id])
    }

    /// `cat` a file inside; None if it does not exist.
    pub fn read(&self, path: &str) -> Option<String> {
        let (ok, out, _) = self
            .engine
            .try_run(&["exec", "-u", "0", &self.id, "cat", path]);
        ok.then_some(out)
    }

    /// `stat -c '%a %u %g'`.
    pub fn stat(&self, path: &str) -> String {
        self.engine.run(&[
            "exec", "-u", "0", &self.id, "stat", "-L", "-c", "%a %u %g", path,
        ])
    }

    /// `ls -A dir` (empty string if missing).
    pub fn ls(&self, dir: &str) -> String {
        self.engine
            .try_run(&["exec", "-u", "0", &self.id, "ls", "-A", dir])
            .1
            .trim()
            .to_string()
    }

    /// Waits until `path` exists.
    pub fn wait_for(&self, path: &str, agent: &Agent) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self
                .engine
                .try_run(&["exec", &self.id, "test", "-e", path])
                .0
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{path} never appeared in container {} ({})\n--- agent logs ---\n{}",
            self.name,
            self.id,
            agent.logs()
        );
    }

    /// The writable layer on the host.
    pub fn upper_dir(&self) -> PathBuf {
        PathBuf::from(self.inspect("{{.GraphDriver.Data.UpperDir}}"))
    }

    /// Panics if `needle` appears in any file under the container's writable layer.
    pub fn assert_not_on_disk(&self, needle: &str) {
        let upper = self.upper_dir();
        assert!(upper.is_dir(), "UpperDir {upper:?} is not a directory");
        let hits = grep_tree(&upper, needle.as_bytes());
        assert!(
            hits.is_empty(),
            "secret value found on disk in the writable layer of {}: {hits:?}",
            self.name
        );
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.engine.remove(&self.id);
    }
}

/// Files under `root` whose content contains `needle`.
pub fn grep_tree(root: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        } else if meta.is_file() {
            if let Ok(bytes) = std::fs::read(&p) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(p);
                }
            }
        }
    }
    hits
}

/// A running `dso agent`, killed on drop. Its stderr (logs) is collected.
pub struct Agent {
    child: Child,
    /// Set once the agent was reaped: its pid (the process group's id) may be reused.
    reaped: bool,
    logs: Arc<Mutex<String>>,
    pub admin: String,
}

impl Agent {
    /// Starts the agent on `config` and waits until it follows Docker events.
    pub fn start(config: &Path) -> Agent {
        Self::start_with_env(config, &[])
    }

    pub fn start_with_env(config: &Path, envs: &[(&str, &str)]) -> Agent {
        Self::start_wrapped(config, envs, &[])
    }

    /// Starts the agent under `wrapper` (e.g. `["unshare", "--pid", "--kill-child",
    /// "--mount-proc"]`). The agent (and anything under it) runs in a process group of its own,
    /// which drop kills whole: a wrapper's child must not outlive the test.
    pub fn start_wrapped(config: &Path, envs: &[(&str, &str)], wrapper: &[&str]) -> Agent {
        Self::spawn(config, envs, wrapper, "docker event stream connected")
    }

    /// Starts a second agent on a config whose `agent.state_dir` an active agent holds: it
    /// waits, serving its own `/healthz`, until it takes over.
    pub fn start_standby(config: &Path) -> Agent {
        Self::spawn(config, &[], &[], "hot standby")
    }

    /// Starts the agent and waits only for its admin endpoint (the engine may stay unreachable).
    pub fn start_unconnected(config: &Path) -> Agent {
        Self::spawn(config, &[], &[], "admin endpoint listening")
    }

    /// Starts the agent; returns once its admin endpoint listens and its logs hold `ready`.
    fn spawn(config: &Path, envs: &[(&str, &str)], wrapper: &[&str], ready: &str) -> Agent {
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(dso_bin());
                c
            }
            None => Command::new(dso_bin()),
        };
        cmd.arg("--config")
            .arg(config)
            .args(["agent", "--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn dso agent");
        let logs = Arc::new(Mutex::new(String::new()));
        for stream in [
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Ok(mut l) = logs.lock() {
                        l.push_str(&line);
                        l.push('\n');
                    }
                }
            });
        }
        let mut agent = Agent {
            child,
            reaped: false,
            logs,
            admin: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let logs = agent.logs();
            if agent.admin.is_empty() {
                if let Some(addr) = logs
                    .lines()
                    .filter(|l| l.contains("admin endpoint listening"))
                    .find_map(|l| {
                        serde_json::from_str::<serde_json::Value>(l)
                            .ok()?
                            .get("addr")?
                            .as_str()
                            .map(str::to_string)
                    })
                {
                    agent.admin = addr;
                }
            }
            if !agent.admin.is_empty() && logs.contains(ready) {
                return agent;
            }
            if let Ok(Some(status)) = agent.child.try_wait() {
                agent.reaped = true;
                panic!("agent exited early with {status}\n--- logs ---\n{logs}");
            }
            assert!(
                Instant::now() < deadline,
                "agent not ready within 30s\n--- logs ---\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn logs(&self) -> String {
        self.logs.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The agent's pid (the same after a re-exec in place).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. "HUP") to the agent.
    pub fn signal(&self, signal: &str) {
        let (ok, out, err) = run(Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string()));
        assert!(ok, "kill -{signal}: {out}{err}");
    }

    /// True while the agent process runs.
    pub fn is_running(&mut self) -> bool {
        let running = matches!(self.child.try_wait(), Ok(None));
        self.reaped |= !running;
        running
    }

    /// Waits until the logs contain `needle`; returns them.
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let logs = self.logs();
            if logs.contains(needle) {
                return logs;
            }
            assert!(
                Instant::now() < deadline,
                "log line containing `{needle}` never came\n--- logs ---\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// GET a path on the admin listener: (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.admin, path)
    }

    /// The value of one metric sample line (exact series text before the value).
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
    }

    /// `kill -9` of the agent (and its process group), reaped; its logs stay readable.
    pub fn kill9(&mut self) {
        if !self.reaped {
            // SAFETY: kill(2) on our own child's process group, not reaped yet.
            unsafe {
                libc::kill(-(self.child.id() as i32), libc::SIGKILL);
            }
            let _ = self.child.wait();
            self.reaped = true;
        }
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(mut self) -> (Option<i32>, String) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.reaped = true;
                std::thread::sleep(Duration::from_millis(50));
                return (st.code(), self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "agent ignored SIGTERM\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // The whole process group (the agent is its leader, and its pid stays reserved until it
        // is reaped below): a wrapper's forked child, a provider program.
        if !self.reaped {
            // SAFETY: kill(2) on our own child's process group.
            unsafe {
                libc::kill(-(self.child.id() as i32), libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `dso ARGS` with the workspace's config: (exit code, stdout, stderr).
pub fn dso_with(config: Option<&Path>, args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(dso_bin());
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let out = cmd
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run dso");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Minimal HTTP/1.0 GET.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (status, body)
}

/// Polls `f` until it returns Some, or panics with `what` and the agent's logs.
pub fn eventually<T>(agent: &Agent, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for: {what}\n--- agent logs ---\n{}",
            agent.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes a KV v2 secret into the test OpenBao with the bao CLI.
pub fn bao_put(path: &str, kv: &[(&str, &str)]) {
    let mut cmd = Command::new(env("DSO_TEST_BAO_BIN"));
    cmd.args(["kv", "put", "-mount=secret", path])
        .env("VAULT_ADDR", env("DSO_TEST_VAULT_ADDR"))
        .env("VAULT_TOKEN", env("DSO_TEST_VAULT_TOKEN"))
        .env("BAO_ADDR", env("DSO_TEST_VAULT_ADDR"))
        .env("BAO_TOKEN", env("DSO_TEST_VAULT_TOKEN"));
    for (k, v) in kv {
        cmd.arg(format!("{k}={v}"));
    }
    let (ok, out, err) = run(&mut cmd);
    assert!(ok, "bao kv put {path} failed:\n{out}\n{err}");
}
