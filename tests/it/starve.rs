//! Attackers against the agent itself (issue 11), each test naming its class from SECURITY.md:
//!
//! * **a container's root user / a hostile image** may spoil its own delivery, never the agent,
//!   another container, the host or the logs;
//! * **an unprivileged host user** may not slow the agent down or learn anything from it;
//! * plus the agent's own inputs on the host (key file, vault file, provider program) that such a
//!   user may have planted or that misbehave.
//!
//! Every test cleans up what it started (containers, the attacker process) also when it fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

const DIR: &str = "/run/secrets/dso";
/// A busybox image whose `sh` (`/bin/sh`, the one the exec path runs) misbehaves on demand:
/// `DSO_TEST_EVIL=echo` copies its stdin (the tar of the container's secrets) to stderr and
/// exits 1; `DSO_TEST_EVIL=hang` never returns (`sleep 7777`). Unset, it is busybox's `sh`.
const EVIL_IMAGE: &str = "dso-test/evil-sh:latest";
const EVIL_SH: &str = "#!/bin/busybox sh\n\
case \"$DSO_TEST_EVIL\" in\n\
  echo) /bin/busybox cat >&2; exit 1 ;;\n\
  hang) exec /bin/busybox sleep 7777 ;;\n\
esac\n\
exec /bin/busybox sh \"$@\"\n";

/// Builds [`EVIL_IMAGE`] offline (once; kept like the other `dso-test/*` images).
fn evil_image() -> &'static str {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let root = tempfile::tempdir().unwrap();
        let bin = root.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(root.path().join("run")).unwrap();
        std::fs::create_dir_all(root.path().join("tmp")).unwrap();
        std::fs::copy("/bin/busybox", bin.join("busybox"))
            .expect("/bin/busybox (busybox-static) is installed by scripts/test-env.sh");
        let (ok, list, err) = run(Command::new("/bin/busybox").arg("--list"));
        assert!(ok, "busybox --list: {err}");
        for applet in list.split_whitespace() {
            if applet != "busybox" && applet != "sh" {
                std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
            }
        }
        std::fs::write(bin.join("sh"), EVIL_SH).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(bin.join("sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let (ok, out, err) = run(Command::new("sh").arg("-c").arg(format!(
            "tar -C {} -c . | docker import - {EVIL_IMAGE}",
            root.path().display()
        )));
        assert!(ok, "building {EVIL_IMAGE}: {out}{err}");
    });
    EVIL_IMAGE
}

/// A container of [`EVIL_IMAGE`] in `mode` (`echo`, `hang`) with the workspace's scope label.
fn evil_container(ws: &Workspace, mode: &str, labels: &[&str]) -> Container {
    let name = unique("evil");
    let scope = format!("dso.test={}", ws.scope);
    let evil = format!("DSO_TEST_EVIL={mode}");
    let mut args: Vec<&str> = vec![
        "run", "-d", "--name", &name, "--label", &scope, "--tmpfs", DIR, "-e", &evil,
    ];
    for l in labels {
        args.extend_from_slice(&["--label", l]);
    }
    args.extend_from_slice(&[evil_image(), "/bin/sleep", "600"]);
    let id = docker(&args);
    Container::docker(id, name)
}

/// Processes in container `c` whose command line contains `needle` (`docker top`).
fn processes_in(c: &Container, needle: &str) -> usize {
    let (_, out, _) = docker_try(&["top", &c.id, "-eo", "pid,args"]);
    out.lines().skip(1).filter(|l| l.contains(needle)).count()
}

/// `dso status --json` of the workspace's agent.
fn status_json(ws: &Workspace) -> String {
    let (code, out, err) = dso_with(Some(&ws.config()), &["status", "--json"]);
    assert_eq!(code, Some(0), "dso status --json: {err}");
    out
}

/// Zero hits for `needle` in the agent log, the audit log, `dso status --json` and `/metrics`.
fn assert_nowhere(ws: &Workspace, agent: &Agent, needle: &str) {
    let logs = agent.logs();
    assert!(
        !logs.contains(needle),
        "the value reached the agent log:\n{}",
        logs.lines()
            .filter(|l| l.contains(needle))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let audit = std::fs::read_to_string(ws.path("state/audit.jsonl")).unwrap_or_default();
    assert!(
        !audit.contains(needle),
        "the value reached the audit log:\n{audit}"
    );
    let status = status_json(ws);
    assert!(
        !status.contains(needle),
        "the value reached dso status:\n{status}"
    );
    let (_, metrics) = agent.get("/metrics");
    assert!(!metrics.contains(needle), "the value reached /metrics");
}

/// Attacker: a container's root user (or a hostile image). Its `sh` copies the tar of its
/// secrets to stderr and exits 1: the agent refuses the delivery and copies none of that output
/// anywhere, even at `DSO_LOG=trace`.
#[test]
fn a_shell_that_echoes_its_stdin_leaks_nothing_into_logs_audit_status_or_metrics() {
    let ws = Workspace::new();
    ws.write_config("");
    ws.set_write_mode("exec");
    let value = unique("echoed-value");
    ws.set_secret("echo#k", &value);
    let agent = Agent::start_with_env(&ws.config(), &[("DSO_LOG", "trace")]);
    let c = evil_container(&ws, "echo", &["dso.secret.k=local/echo#k"]);
    eventually(&agent, "the failed exec to be counted", || {
        agent
            .metric("dso_injections_total{result=\"exec_failed\"}")
            .filter(|n| *n >= 1.0)
    });
    let line = eventually(&agent, "a refusal naming the container", || {
        agent
            .logs()
            .lines()
            .find(|l| l.contains(&c.name) && l.contains("exec_failed"))
            .map(str::to_string)
    });
    assert!(line.contains("exited with 1"), "{line}");
    assert_nowhere(&ws, &agent, &value);
}

/// Attacker: a container's root user (or a hostile image). Two containers whose `sh` never
/// returns, on a pool of 4 shards running one container each: the 20 other containers all get
/// their secrets, the hung execs end as `result="timeout"`, and no hung process piles up.
#[test]
fn two_hanging_shells_do_not_starve_twenty_other_containers() {
    let ws = Workspace::new();
    ws.write_config("");
    let cfg = std::fs::read_to_string(ws.config()).unwrap().replacen(
        "[agent]\n",
        "[agent]\nshard_concurrency = 1\nexec_timeout = \"2s\"\n",
        1,
    );
    std::fs::write(ws.config(), cfg).unwrap();
    ws.set_write_mode("exec");
    ws.set_secret("many#k", "served-value");
    let agent = Agent::start(&ws.config());
    let hung: Vec<Container> = (0..2)
        .map(|_| evil_container(&ws, "hang", &["dso.secret.k=local/many#k"]))
        .collect();
    for h in &hung {
        eventually(&agent, "the hanging exec to start", || {
            (processes_in(h, "sleep 7777") > 0).then_some(())
        });
    }
    let normal: Vec<Container> = (0..20)
        .map(|_| ws.container(&["--tmpfs", DIR, "--label", "dso.secret.k=local/many#k"]))
        .collect();
    for c in &normal {
        c.wait_for(&format!("{DIR}/.ready"), &agent);
        assert_eq!(c.read(&format!("{DIR}/k")).as_deref(), Some("served-value"));
    }
    eventually(&agent, "both hung execs counted as timeouts", || {
        agent
            .metric("dso_injections_total{result=\"timeout\"}")
            .filter(|n| *n >= 2.0)
    });
    // A second try on a hanging container (manual, as an operator would) starts no second exec
    // while the first is outstanding, and never leaves more than one behind.
    let (code, _, err) = dso_with(Some(&ws.config()), &["inject", &hung[0].id]);
    assert!(code.is_some(), "dso inject: {err}");
    for h in &hung {
        let n = processes_in(h, "sleep 7777");
        assert!(n <= 1, "{n} hung processes left in {}", h.name);
    }
    // The agent runs in the host's PID namespace here: it saw the hung processes and killed them.
    let logs = agent.logs();
    assert!(
        logs.contains("exec_timeout") && logs.contains("\"killed\":true"),
        "{logs}"
    );
}

/// The attacker: `n` TCP connections from uid 65534 to `addr`, opened at once and held idle
/// until dropped (killed, also when the test fails).
struct IdleConnections(Child);

const IDLE_SCRIPT: &str = r#"
import os, select, socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = []
for _ in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    s.connect_ex((host, port))
    socks.append(s)
deadline = time.time() + 10
poll = select.poll()
for s in socks:
    poll.register(s, select.POLLOUT)
pending = {s.fileno() for s in socks}
while pending and time.time() < deadline:
    for fd, ev in poll.poll(500):
        pending.discard(fd)
        poll.unregister(fd)
print("open", n - len(pending), "uid", os.getuid(), flush=True)
sys.stdin.read()
"#;

impl IdleConnections {
    fn open(addr: &str, n: usize) -> (Self, String) {
        let (host, port) = addr.rsplit_once(':').unwrap();
        let mut child = Command::new("prlimit")
            .args([
                "--nofile=8192:8192",
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
            ])
            .args(["--clear-groups", "/usr/bin/python3", "-c", IDLE_SCRIPT])
            .args([host, port, &n.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the idle-connection attacker");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        (Self(child), line)
    }
}

impl Drop for IdleConnections {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// GET `path` on `addr` with every step bounded by `limit`: (status, elapsed).
fn get_within(addr: &str, path: &str, limit: Duration) -> Result<(u16, Duration), String> {
    let start = Instant::now();
    let sa: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut s =
        std::net::TcpStream::connect_timeout(&sa, limit).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(limit)).ok();
    s.set_write_timeout(Some(limit)).ok();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .map_err(|e| format!("read: {e}"))?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, start.elapsed()))
}

/// Attacker: an unprivileged host user. 2,000 idle connections to the metrics port while the agent
/// runs under `nofile` 1024 (hard), so raising the soft limit alone cannot help: a new container
/// still gets its secrets and `/healthz` still answers within a second.
#[test]
fn two_thousand_idle_connections_from_an_unprivileged_user_starve_nothing() {
    let ws = Workspace::new();
    ws.write_config("");
    ws.set_secret("idle#k", "idle-value");
    let agent = Agent::start_wrapped(&ws.config(), &[], &["prlimit", "--nofile=1024:1024"]);
    let (_attacker, opened) = IdleConnections::open(&agent.admin, 2000);
    assert!(opened.contains("uid 65534"), "attacker: {opened}");
    std::thread::sleep(Duration::from_millis(500));
    let c = ws.container(&["--tmpfs", DIR, "--label", "dso.secret.k=local/idle#k"]);
    c.wait_for(&format!("{DIR}/.ready"), &agent);
    assert_eq!(c.read(&format!("{DIR}/k")).as_deref(), Some("idle-value"));
    let got = get_within(&agent.admin, "/healthz", Duration::from_secs(1));
    let Ok((status, took)) = got else {
        panic!(
            "/healthz under 2,000 idle connections: {got:?}\n{}",
            agent.logs()
        )
    };
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(1), "/healthz took {took:?}");
    let floods = agent.logs().matches("Too many open files").count();
    assert!(floods < 5, "{floods} log lines about EMFILE");
}

/// Attacker: a container's root user, whose environment the agent reads with `inspect` (and any
/// local user who can read the agent's log). The Engine's answers (with `Env`) never reach the
/// log at the most verbose levels DSO offers, nor with explicit third-party targets.
#[test]
fn engine_answers_never_reach_the_log_at_trace_or_with_library_targets() {
    let ws = Workspace::new();
    ws.write_config("");
    ws.set_secret("envleak#k", "env-leak-value");
    for level in [
        "trace",
        "info,bollard=trace,hyper=trace,hyper_util=trace,h2=trace,reqwest=trace",
    ] {
        let token = unique("api-token");
        let agent = Agent::start_with_env(&ws.config(), &[("DSO_LOG", level)]);
        let env = format!("API_TOKEN={token}");
        let c = ws.container(&[
            "--tmpfs",
            DIR,
            "-e",
            &env,
            "--label",
            "dso.secret.k=local/envleak#k",
        ]);
        c.wait_for(&format!("{DIR}/.ready"), &agent);
        agent.wait_log("secrets injected");
        let logs = agent.logs();
        assert!(
            !logs.contains(&token),
            "DSO_LOG={level}: the container's environment reached the log:\n{}",
            logs.lines()
                .filter(|l| l.contains(&token))
                .map(|l| &l[..l.len().min(300)])
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// A key file with the right mode that `dso secret` must still refuse.
fn key_file_refused(ws: &Workspace) -> String {
    let (code, out, err) = dso_with(Some(&ws.config()), &["secret", "list"]);
    assert_ne!(
        code,
        Some(0),
        "a foreign or symlinked key file was used:\n{out}{err}"
    );
    err
}

/// Attacker: an unprivileged host user who planted the local vault's key file (a file they own,
/// mode 0600, or a symlink to a key they control): the agent refuses to use it.
#[test]
fn a_key_file_owned_by_another_user_or_reached_through_a_symlink_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let ws = Workspace::new();
    ws.write_config("");
    ws.set_secret("own#k", "owned-value");
    let key = ws.path("vault.key");
    // Owned by uid 65534 although mode 0600.
    std::os::unix::fs::chown(&key, Some(65534), Some(65534)).unwrap();
    let err = key_file_refused(&ws);
    assert!(
        err.contains("vault.key") && err.contains("owned by uid 65534"),
        "{err}"
    );
    std::os::unix::fs::chown(&key, Some(0), Some(0)).unwrap();
    // A symlink to an otherwise fine key file.
    let real = ws.path("real.key");
    std::fs::rename(&key, &real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(&real, &key).unwrap();
    let err = key_file_refused(&ws);
    assert!(
        err.contains("vault.key") && err.contains("symlink"),
        "{err}"
    );
    // Put back, it works again.
    std::fs::remove_file(&key).unwrap();
    std::fs::rename(&real, &key).unwrap();
    let (code, out, err) = dso_with(Some(&ws.config()), &["secret", "list"]);
    assert_eq!(code, Some(0), "{out}{err}");
}

/// Attacker: whoever can write the vault file (a damaged or planted one). Absurd Argon2 work
/// factors and oversized header fields are refused before any memory is allocated for them (the
/// CLI runs with 1 GiB of address space: a 2 GiB Argon2 allocation would abort it).
#[test]
fn a_vault_file_with_absurd_header_parameters_is_refused_before_use() {
    let ws = Workspace::new();
    ws.write_config("");
    ws.set_secret("hdr#k", "header-value");
    let vault = ws.path("vault.enc");
    let good = std::fs::read_to_string(&vault).unwrap();
    let mut lines = good.lines();
    let (magic, header, body) = (
        lines.next().unwrap(),
        lines.next().unwrap(),
        lines.next().unwrap(),
    );
    let mut h: serde_json::Value = serde_json::from_str(header).unwrap();
    // (field, bad value, the word the error must name)
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("m_kib", serde_json::json!(2 * 1024 * 1024), "m_kib"),
        ("t", serde_json::json!(60), "parameter t"),
        ("p", serde_json::json!(60), "parameter p"),
        (
            "salt",
            serde_json::json!("A".repeat(8 << 20)),
            "header line",
        ),
    ];
    for (field, bad, word) in cases {
        let saved = h[field].clone();
        h[field] = bad;
        std::fs::write(&vault, format!("{magic}\n{h}\n{body}\n")).unwrap();
        h[field] = saved;
        let (ok, out, err) = run(Command::new("prlimit")
            .args(["--as=1073741824", dso_bin(), "--config"])
            .arg(ws.config())
            .args(["secret", "list"]));
        assert!(!ok, "{field}: accepted\n{out}");
        assert!(
            err.contains("vault.enc") && err.contains(word) && err.contains("limit"),
            "{field}: {err}"
        );
        assert!(
            err.len() < 2000,
            "{field}: the error echoes the field: {} bytes",
            err.len()
        );
    }
    std::fs::write(&vault, good).unwrap();
    let (code, out, err) = dso_with(Some(&ws.config()), &["secret", "list"]);
    assert_eq!(code, Some(0), "{out}{err}");
}

/// Occurrences of `needle` in the readable memory of process `pid` (root reads `/proc/PID/mem`).
fn in_memory(pid: u32, needle: &[u8]) -> usize {
    use std::os::unix::fs::FileExt;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut hits = 0;
    for l in maps.lines() {
        let mut f = l.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        if !perms.starts_with("rw") {
            continue;
        }
        let (a, b) = range.split_once('-').unwrap();
        let (a, b) = (
            u64::from_str_radix(a, 16).unwrap(),
            u64::from_str_radix(b, 16).unwrap(),
        );
        let mut buf = vec![0u8; (b - a) as usize];
        if mem.read_exact_at(&mut buf, a).is_ok() {
            hits += buf.windows(needle.len()).filter(|w| *w == needle).count();
        }
    }
    hits
}

/// Attacker: whoever later reads the agent's memory (a core dump, swap, a debugger). The base64
/// answer of `POST /v1/resolve` is wiped once sent: it is nowhere in the agent's memory after
/// `dso run` got its values (the Cache holds the raw value, never its base64).
#[test]
fn the_resolve_answer_is_wiped_from_the_agent_after_sending() {
    use base64::Engine as _;
    let ws = Workspace::new();
    ws.write_config(&format!(
        "[providers.bao]\ntype = \"vault\"\naddress = \"{}\"\ntoken_env = \"DSO_IT_BAO_TOKEN\"\ntimeout = \"5s\"\n",
        env("DSO_TEST_VAULT_ADDR")
    ));
    let value = unique("wiped-value-0123456789abcdef");
    let path = unique("wipe").replace('-', "_");
    let (ok, out, err) = run(Command::new(env("DSO_TEST_BAO_BIN"))
        .args(["kv", "put", "-mount=secret", &path, &format!("k={value}")])
        .env("BAO_ADDR", env("DSO_TEST_VAULT_ADDR"))
        .env("BAO_TOKEN", env("DSO_TEST_VAULT_TOKEN")));
    assert!(ok, "bao kv put: {out}{err}");
    let token = env("DSO_TEST_VAULT_TOKEN");
    let agent = Agent::start_with_env(&ws.config(), &[("DSO_IT_BAO_TOKEN", &token)]);
    let reference = format!("dso://bao/{path}#k");
    for _ in 0..3 {
        let out = Command::new(dso_bin())
            .arg("--config")
            .arg(ws.config())
            .args(["run", "--", "/bin/sh", "-c", "printf %s \"$V\""])
            .env("V", &reference)
            .env_remove("DSO_IT_BAO_TOKEN")
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            value,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    agent.wait_log("resolving references for `dso run`");
    std::thread::sleep(Duration::from_millis(300));
    let b64 = base64::engine::general_purpose::STANDARD.encode(&value);
    let hits = in_memory(agent.pid(), b64.as_bytes());
    assert_eq!(
        hits, 0,
        "the base64 answer is still in the agent's memory {hits} times"
    );
    assert!(
        in_memory(agent.pid(), value.as_bytes()) > 0,
        "the scan cannot see the cached value"
    );
}

/// A provider program that prints a value on stdout outside JSON-RPC (a bug, or a debug print):
/// the error quotes only the line's length and kind, so the value reaches no log and no status.
#[test]
fn a_provider_printing_a_value_outside_json_rpc_is_quoted_only_as_length_and_kind() {
    let ws = Workspace::new();
    let script = ws.path("leaky-provider.py");
    let value = unique("stray-value");
    std::fs::write(
        &script,
        format!(
            r#"import json, sys
for line in sys.stdin:
    req = json.loads(line)
    if req.get("method") == "resolve":
        sys.stdout.write("password={value}\n"); sys.stdout.flush(); continue
    res = {{"protocol": 1}} if req.get("method") == "initialize" else None
    sys.stdout.write(json.dumps({{"jsonrpc": "2.0", "id": req["id"], "result": res}}) + "\n"); sys.stdout.flush()
"#
        ),
    )
    .unwrap();
    let python = run(Command::new("python3").args(["-c", "import sys; print(sys.executable)"])).1;
    ws.write_config(&format!(
        "[providers.leaky]\ntype = \"process\"\ncommand = \"{}\"\nargs = [\"{}\"]\ntimeout = \"20s\"\n",
        python.trim(),
        script.display()
    ));
    let agent = Agent::start(&ws.config());
    let c = ws.container(&["--tmpfs", DIR, "--label", "dso.secret.k=leaky/app"]);
    let line = eventually(&agent, "the refusal", || {
        agent
            .logs()
            .lines()
            .find(|l| l.contains(&c.name) && l.contains("provider_error"))
            .map(str::to_string)
    });
    assert!(line.contains("bytes"), "{line}");
    assert_nowhere(&ws, &agent, &value);
}
