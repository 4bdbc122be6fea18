//! `dso run`: environment references resolved from the local vault, from OpenBao directly, and
//! through a running agent; bad references stop the command before it starts.

use std::process::{Command, Stdio};

use crate::support::*;

/// `dso --config CFG run ARGS…` with extra environment: (exit code, stdout, stderr).
fn dso_run(ws: &Workspace, envs: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(dso_bin())
        .arg("--config")
        .arg(ws.config())
        .arg("run")
        .args(args)
        .env_remove("DSO_IT_BAO_TOKEN")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run dso");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn bao_config(ws: &Workspace) {
    ws.write_config(&format!(
        r#"[providers.bao]
type = "vault"
address = "{}"
token_env = "DSO_IT_BAO_TOKEN"
timeout = "5s"
"#,
        env("DSO_TEST_VAULT_ADDR")
    ));
}

fn bao_put(path: &str, kv: &str) {
    let mut cmd = Command::new(env("DSO_TEST_BAO_BIN"));
    cmd.args(["kv", "put", "-mount=secret", path, kv])
        .env("BAO_ADDR", env("DSO_TEST_VAULT_ADDR"))
        .env("BAO_TOKEN", env("DSO_TEST_VAULT_TOKEN"));
    let (ok, out, err) = run(&mut cmd);
    assert!(ok, "bao kv put failed:\n{out}\n{err}");
}

#[test]
fn resolves_references_and_passes_the_exit_code_through() {
    let ws = Workspace::new();
    ws.write_config("");
    let value = unique("run-value");
    ws.set_secret("app/db#password", &value);
    ws.set_secret("app/api", "token with spaces & $hell chars");
    let (code, out, err) = dso_run(
        &ws,
        &[
            ("DB_PASSWORD", "dso://local/app/db#password"),
            ("API", "dso://local/app/api"),
            ("PLAIN", "left alone"),
        ],
        &[
            "--no-agent",
            "--",
            "/bin/sh",
            "-c",
            "printf '%s|%s|%s' \"$DB_PASSWORD\" \"$API\" \"$PLAIN\"; exit 7",
        ],
    );
    assert_eq!(code, Some(7), "the command's exit code\n{out}{err}");
    assert_eq!(
        out,
        format!("{value}|token with spaces & $hell chars|left alone"),
        "{err}"
    );
    assert!(!err.contains(&value), "no value on stderr: {err}");

    // Nothing to resolve: the command just runs.
    let (code, out, _) = dso_run(&ws, &[], &["--", "/bin/echo", "hi"]);
    assert_eq!((code, out.as_str()), (Some(0), "hi\n"));
    // A command that does not exist: 127, like a shell.
    let (code, _, err) = dso_run(&ws, &[], &["--", "/nonexistent/cmd"]);
    assert_eq!(code, Some(127), "{err}");
    assert!(err.contains("/nonexistent/cmd"), "{err}");
}

#[test]
fn unresolvable_references_stop_the_command_and_name_the_variable() {
    let ws = Workspace::new();
    ws.write_config("");
    ws.set_secret("app/db#password", "pw");
    let marker = ws.path("ran");
    let cmd = format!("touch {}", marker.display());
    let cases: &[(&str, &str, i32, &str)] = &[
        (
            "MISSING",
            "dso://local/app/nothing",
            5,
            "MISSING: cannot resolve `dso://local/app/nothing`",
        ),
        (
            "NOKEY",
            "dso://local/app/db#user",
            5,
            "NOKEY: cannot resolve",
        ),
        (
            "BADREF",
            "dso://local",
            1,
            "BADREF: `dso://local` is not a valid reference",
        ),
        (
            "TRAVERSE",
            "dso://local/../etc/passwd",
            1,
            "TRAVERSE: `dso://local/../etc/passwd` is not a valid reference",
        ),
        (
            "NOPROV",
            "dso://nope/app/db",
            1,
            "NOPROV: cannot resolve `dso://nope/app/db`: no provider `nope`",
        ),
    ];
    for (var, reference, want_code, want_err) in cases {
        let (code, out, err) = dso_run(
            &ws,
            &[(var, reference), ("GOOD", "dso://local/app/db#password")],
            &["--no-agent", "--", "/bin/sh", "-c", &cmd],
        );
        assert_eq!(code, Some(*want_code), "{var}: {out}{err}");
        assert!(
            err.contains(want_err),
            "{var}: want `{want_err}` in:\n{err}"
        );
        assert!(!marker.exists(), "{var}: the command must not start");
        assert!(
            !err.contains("pw\n") && !out.contains("pw"),
            "{var}: no value printed"
        );
    }
}

#[test]
fn resolves_through_the_running_agent_and_directly_against_openbao() {
    let ws = Workspace::new();
    bao_config(&ws);
    let path = unique("run/db");
    let value = unique("bao-run-value");
    bao_put(&path, &format!("password={value}"));
    let reference = format!("dso://bao/{path}#password");
    let show = ["--", "/bin/sh", "-c", "printf %s \"$PW\""];

    // No agent, no token in dso run's environment: a clear error naming the variable.
    let (code, out, err) = dso_run(&ws, &[("PW", &reference)], &show);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("PW: cannot resolve") && err.contains("DSO_IT_BAO_TOKEN"),
        "{err}"
    );

    // Directly, with the token.
    let token = env("DSO_TEST_VAULT_TOKEN");
    let (code, out, err) = dso_run(
        &ws,
        &[("PW", &reference), ("DSO_IT_BAO_TOKEN", &token)],
        &show,
    );
    assert_eq!((code, out.as_str()), (Some(0), value.as_str()), "{err}");

    // Through the agent (which holds the token): dso run itself needs none.
    let agent = Agent::start_with_env(&ws.config(), &[("DSO_IT_BAO_TOKEN", &token)]);
    agent.wait_log("admin socket");
    let (code, out, err) = dso_run(&ws, &[("PW", &reference)], &show);
    assert_eq!(
        (code, out.as_str()),
        (Some(0), value.as_str()),
        "{err}\n--- agent logs ---\n{}",
        agent.logs()
    );
    let logs = agent.wait_log("resolving references for `dso run`");
    assert!(!logs.contains(&value), "no value in the agent's logs");
    // A missing path through the agent: exit 5, named.
    let (code, _, err) = dso_run(&ws, &[("GONE", &format!("dso://bao/{path}-gone#x"))], &show);
    assert_eq!(code, Some(5), "{err}");
    assert!(err.contains("GONE: cannot resolve"), "{err}");
}
