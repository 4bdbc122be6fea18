//! `dso run --env-file` and `--watch`: references from a dotenv file, the command supervised —
//! restarted once when a value changes in OpenBao (directly and through the agent), signals
//! forwarded, exit codes passed through.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// A `dso run` child, killed and reaped on drop (also when the test fails).
struct DsoRun(Child);

impl Drop for DsoRun {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bao_put(path: &str, kv: &str) {
    let (ok, out, err) = run(Command::new(env("DSO_TEST_BAO_BIN"))
        .args(["kv", "put", "-mount=secret", path, kv])
        .env("BAO_ADDR", env("DSO_TEST_VAULT_ADDR"))
        .env("BAO_TOKEN", env("DSO_TEST_VAULT_TOKEN")));
    assert!(ok, "bao kv put failed:\n{out}\n{err}");
}

/// Waits until `log` has `n` lines; returns them.
fn lines(log: &Path, n: usize, what: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let got: Vec<String> = text.lines().map(str::to_string).collect();
        if got.len() >= n {
            return got;
        }
        assert!(Instant::now() < deadline, "{what}: only {got:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn env_file_references_parse_errors_and_exit_codes() {
    let ws = Workspace::new();
    ws.write_config("");
    let value = unique("envfile-value");
    ws.set_secret("app/db#pw", &value);
    let file = ws.path("app.env");
    std::fs::write(
        &file,
        "# app\nPW=dso://local/app/db#pw\nPLAIN='plain value'\n",
    )
    .unwrap();
    let before = std::fs::read(&file).unwrap();
    let dso = |args: &[&str]| {
        let out = Command::new(dso_bin())
            .arg("--config")
            .arg(ws.config())
            .arg("run")
            .args(args)
            .env_remove("PW")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let f = file.display().to_string();
    for watch in [&[][..], &["--watch"][..]] {
        let mut args = vec!["--no-agent", "--env-file", &f];
        args.extend_from_slice(watch);
        args.extend_from_slice(&[
            "--",
            "/bin/sh",
            "-c",
            "printf '%s|%s' \"$PW\" \"$PLAIN\"; exit 7",
        ]);
        let (code, out, err) = dso(&args);
        assert_eq!(code, Some(7), "{watch:?}: the exit code\n{out}{err}");
        assert_eq!(out, format!("{value}|plain value"), "{watch:?}: {err}");
    }
    assert_eq!(std::fs::read(&file).unwrap(), before, "never written back");
    // With --watch, a command killed by a signal: 128 + the signal, as a shell.
    let (code, _, err) = dso(&["--watch", "--", "/bin/sh", "-c", "kill -9 $$"]);
    assert_eq!(code, Some(137), "{err}");
    // A parse error names the file and the line, never the value.
    let bad = ws.path("bad.env");
    std::fs::write(&bad, "OK=1\nsupersecretvalue\nX=\"unterminated-secret\n").unwrap();
    let (code, _, err) = dso(&["--env-file", &bad.display().to_string(), "--", "/bin/true"]);
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("bad.env: line 2: expected KEY=VALUE"), "{err}");
    assert!(
        !err.contains("supersecret") && !err.contains("unterminated-secret"),
        "{err}"
    );
    let (code, _, err) = dso(&["--on-change", "signal:SIGHUP", "--", "/bin/true"]);
    assert_eq!(code, Some(2), "--on-change without --watch: {err}");
    assert!(err.contains("--on-change needs --watch"), "{err}");
}

/// `dso run --watch` of a command that logs its value at every start and logs SIGTERM.
fn start_watch(
    ws: &Workspace,
    reference: &str,
    log: &Path,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> DsoRun {
    let script = format!(
        "echo \"start $PW\" >> {log}; trap 'echo term >> {log}; exit 0' TERM; while :; do sleep 0.1; done",
        log = log.display()
    );
    DsoRun(
        Command::new(dso_bin())
            .arg("--config")
            .arg(ws.config())
            .args(["run", "--watch"])
            .args(extra)
            .args(["--", "/bin/sh", "-c", &script])
            .env("PW", reference)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// A change in OpenBao restarts the command once with the new value; SIGTERM to `dso run`
/// reaches the command, whose exit code is dso's.
fn restarts_once_on_change(through_agent: bool) {
    let ws = Workspace::new();
    let token = env("DSO_TEST_VAULT_TOKEN");
    ws.write_config(&format!(
        "[providers.bao]\ntype = \"vault\"\naddress = \"{}\"\ntoken_env = \"DSO_IT_BAO_TOKEN\"\n\
         timeout = \"5s\"\nrefresh_interval = \"1s\"\n",
        env("DSO_TEST_VAULT_ADDR")
    ));
    let path = unique("watch/db");
    let (v1, v2) = (unique("watch-v1"), unique("watch-v2"));
    bao_put(&path, &format!("pw={v1}"));
    let reference = format!("dso://bao/{path}#pw");
    let log = ws.path("child.log");
    let agent = through_agent.then(|| {
        let a = Agent::start_with_env(&ws.config(), &[("DSO_IT_BAO_TOKEN", &token)]);
        a.wait_log("admin socket");
        a
    });
    // Through the agent, dso run itself holds no token.
    let (extra, envs): (&[&str], Vec<(&str, &str)>) = if through_agent {
        (&[], vec![])
    } else {
        (&["--no-agent"], vec![("DSO_IT_BAO_TOKEN", token.as_str())])
    };
    let mut run = start_watch(&ws, &reference, &log, extra, &envs);
    assert_eq!(lines(&log, 1, "first start"), [format!("start {v1}")]);
    bao_put(&path, &format!("pw={v2}"));
    let got = lines(&log, 3, "a restart with the new value");
    assert_eq!(
        got,
        [format!("start {v1}"), "term".into(), format!("start {v2}")]
    );
    // Once: no further restart while the value stays.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(lines(&log, 3, "still three lines").len(), 3);
    // SIGTERM to dso run reaches the command; its exit code (0, from its trap) is dso's.
    let pid = rustix::process::Pid::from_raw(run.0.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = run.0.wait().unwrap();
    assert_eq!(lines(&log, 4, "term forwarded").last().unwrap(), "term");
    assert_eq!(status.code(), Some(0));
    if let Some(agent) = agent {
        // The agent logs the end when it has handled `dso run`'s last request: wait for it
        // (the child's exit does not order the agent's log line).
        let logs = agent.wait_log("`dso run --watch` ended");
        assert!(
            !logs.contains(&v1) && !logs.contains(&v2),
            "no value in the agent's logs"
        );
    }
}

#[test]
fn watch_restarts_once_on_a_change_read_directly() {
    restarts_once_on_change(false);
}

#[test]
fn watch_restarts_once_on_a_change_seen_by_the_agent() {
    restarts_once_on_change(true);
}
