//! The `process` provider on the real stack: the real example provider program
//! (`examples/providers/env-provider.py`, run by the real `python3`), the real agent and real
//! containers. Every test has its own agent, secrets file and containers, so they run in parallel.

use std::path::PathBuf;
use std::time::Duration;

use dso::providers::process::{ProcessBackend, ProcessConfig};
use dso_actors::backend::{BackendError, SecretBackend};
use serde_json::json;

use crate::support::*;

const DIR: &str = "/run/secrets/dso";

/// The real Python interpreter (not a pyenv shim: providers run with a cleared environment).
fn python() -> String {
    let (ok, out, err) = run(
        std::process::Command::new("python3").args(["-c", "import sys; print(sys.executable)"])
    );
    assert!(ok, "python3 is needed by the process-provider tests: {err}");
    out.trim().to_string()
}

/// The example provider shipped in the repository.
fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/providers/env-provider.py")
}

/// Writes the example's secrets file.
fn write_secrets(file: &std::path::Path, doc: serde_json::Value) {
    // Write-then-rename: the provider never reads a half-written file.
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, doc.to_string()).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

/// A workspace whose config has provider `ext` (the example, serving `secrets.json` of the
/// workspace) with `extra_env` added to its `env` table and `settings` added to its table.
fn setup(doc: serde_json::Value, extra_env: &str, settings: &str) -> (Workspace, PathBuf) {
    let ws = Workspace::new();
    let secrets = ws.path("secrets.json");
    write_secrets(&secrets, doc);
    ws.write_config(&format!(
        r#"[providers.ext]
type = "process"
command = "{python}"
args = ["{script}"]
env = {{ EXAMPLE_SECRETS_FILE = "{secrets}"{extra_env} }}
{settings}
"#,
        python = python(),
        script = example().display(),
        secrets = secrets.display(),
    ));
    (ws, secrets)
}

/// The agent's log line about container `c` that contains `needle`.
fn refusal(agent: &Agent, c: &Container, needle: &str) -> String {
    eventually(
        agent,
        &format!("a log line naming {} and `{needle}`", c.name),
        || {
            agent
                .logs()
                .lines()
                .find(|l| l.contains(&c.name) && l.contains(needle))
                .map(str::to_string)
        },
    )
}

#[test]
fn fetches_whole_secrets_and_keys_and_forwards_stderr() {
    let (ws, _secrets) = setup(
        json!({"secrets": {
            "app/db": {"password": "pw-process-1", "user": "app"},
            "app/key": "single-process-value",
        }}),
        "",
        "timeout = \"10s\"",
    );
    let agent = Agent::start(&ws.config());
    let c = ws.container(&[
        "--tmpfs",
        DIR,
        "--label",
        "dso.secret.pw=ext/app/db#password",
        "--label",
        "dso.secret.db=ext/app/db",
        "--label",
        "dso.secret.key=ext/app/key",
    ]);
    c.wait_for(&format!("{DIR}/.ready"), &agent);
    assert_eq!(
        c.read(&format!("{DIR}/pw")).as_deref(),
        Some("pw-process-1")
    );
    assert_eq!(
        c.read(&format!("{DIR}/key")).as_deref(),
        Some("single-process-value")
    );
    let whole: serde_json::Value =
        serde_json::from_str(&c.read(&format!("{DIR}/db")).unwrap()).unwrap();
    assert_eq!(whole, json!({"password": "pw-process-1", "user": "app"}));
    // The program's stderr is in the agent's logs, with the target and the provider name.
    let line = agent
        .wait_log("initialize for provider 'ext'")
        .lines()
        .find(|l| l.contains("initialize for provider"))
        .unwrap()
        .to_string();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["target"], "dso::provider_process", "{line}");
    assert_eq!(v["provider"], "ext", "{line}");
    let logs = agent.logs();
    assert!(
        !logs.contains("pw-process-1") && !logs.contains("single-process-value"),
        "a value reached the logs"
    );
    c.assert_not_on_disk("pw-process-1");
}

#[test]
fn missing_paths_and_wrong_credentials_are_refused_with_the_cause() {
    let (ws, _secrets) = setup(
        json!({"secrets": {"app/db": {"password": "x"}}, "access_token": "right-token"}),
        ", EXAMPLE_TOKEN = \"wrong-token\"",
        "",
    );
    let agent = Agent::start(&ws.config());
    let denied = ws.container(&[
        "--tmpfs",
        DIR,
        "--label",
        "dso.secret.pw=ext/app/db#password",
    ]);
    let line = refusal(&agent, &denied, "permission denied");
    assert!(
        line.contains("provider_error") && line.contains("EXAMPLE_TOKEN does not match"),
        "{line}"
    );

    let (ws, _secrets) = setup(json!({"secrets": {}}), "", "");
    let agent = Agent::start(&ws.config());
    let missing = ws.container(&["--tmpfs", DIR, "--label", "dso.secret.x=ext/no/such"]);
    let line = refusal(&agent, &missing, "secret `no/such` not found");
    assert!(line.contains("nothing written"), "{line}");
    assert_eq!(missing.ls(DIR), "");
}

#[test]
fn a_slow_or_silent_provider_times_out_and_the_next_request_still_works() {
    let (ws, _secrets) = setup(
        json!({"secrets": {"fast": "fast-value", "hang": "never-sent"}}),
        ", DSO_EXAMPLE_HANG_ON = \"hang\"",
        "timeout = \"2s\"",
    );
    let agent = Agent::start(&ws.config());
    let silent = ws.container(&["--tmpfs", DIR, "--label", "dso.secret.x=ext/hang"]);
    let line = refusal(&agent, &silent, "timed out after 2s");
    assert!(line.contains("provider_error"), "{line}");
    // A timeout does not break the connection: the same process answers the next request.
    let ok = ws.container(&["--tmpfs", DIR, "--label", "dso.secret.x=ext/fast"]);
    ok.wait_for(&format!("{DIR}/.ready"), &agent);
    assert_eq!(ok.read(&format!("{DIR}/x")).as_deref(), Some("fast-value"));
    assert_eq!(
        agent.logs().matches("env-provider: started").count(),
        1,
        "the program was respawned\n{}",
        agent.logs()
    );

    // Slower than the timeout on every answer.
    let (ws, _secrets) = setup(
        json!({"secrets": {"slow": "slow-value"}}),
        ", DSO_EXAMPLE_DELAY_MS = \"3000\"",
        "timeout = \"1s\"",
    );
    let agent = Agent::start(&ws.config());
    let slow = ws.container(&["--tmpfs", DIR, "--label", "dso.secret.x=ext/slow"]);
    refusal(&agent, &slow, "timed out after 1s");
}

#[test]
fn a_changed_file_is_rotated_into_the_container() {
    let (ws, secrets) = setup(
        json!({"secrets": {"rot": {"password": "rot-first"}}}),
        "",
        "refresh_interval = \"1s\"",
    );
    let agent = Agent::start(&ws.config());
    let c = ws.container(&["--tmpfs", DIR, "--label", "dso.secret.pw=ext/rot#password"]);
    c.wait_for(&format!("{DIR}/.ready"), &agent);
    assert_eq!(c.read(&format!("{DIR}/pw")).as_deref(), Some("rot-first"));
    write_secrets(
        &secrets,
        json!({"secrets": {"rot": {"password": "rot-second"}}}),
    );
    eventually(&agent, "the rotated value in the container", || {
        (c.read(&format!("{DIR}/pw")).as_deref() == Some("rot-second")).then_some(())
    });
    assert!(!agent.logs().contains("rot-second"));
}

#[test]
fn a_crash_fails_fast_then_the_connection_restarts_a_fresh_process() {
    let (ws, _secrets) = setup(
        json!({"secrets": {"app/db": "before-crash", "crash": "never-sent", "after": "after-crash"}}),
        ", DSO_EXAMPLE_CRASH_ON = \"crash\"",
        // The timeout is long: the crashed request must fail at once, not after it.
        "timeout = \"60s\"\nrefresh_interval = \"1s\"",
    );
    let agent = Agent::start(&ws.config());
    let first = ws.container(&["--tmpfs", DIR, "--label", "dso.secret.x=ext/app/db"]);
    first.wait_for(&format!("{DIR}/.ready"), &agent);

    let crasher = ws.container(&["--tmpfs", DIR, "--label", "dso.secret.x=ext/crash"]);
    let line = refusal(&agent, &crasher, "provider process exited with status 3");
    assert!(line.contains("provider_error"), "{line}");

    // The broken connection fails every request (here: the 1 s re-checks of `app/db`); after
    // five in a row the ProviderConnection restarts, which kills the old process and spawns a
    // new one, and its circuit closes again.
    let restarts = "dso_provider_restarts_total{provider=\"ext\"}";
    eventually(&agent, "a restart of provider ext", || {
        (agent.metric(restarts).unwrap_or(0.0) >= 1.0).then_some(())
    });
    eventually(
        &agent,
        "provider ext up again with a closed circuit",
        || {
            (agent.metric("dso_provider_up{provider=\"ext\"}") == Some(1.0)
                && agent.metric("dso_provider_circuit_state{provider=\"ext\"}") == Some(0.0))
            .then_some(())
        },
    );
    let after = ws.container(&["--tmpfs", DIR, "--label", "dso.secret.x=ext/after"]);
    after.wait_for(&format!("{DIR}/.ready"), &agent);
    assert_eq!(
        after.read(&format!("{DIR}/x")).as_deref(),
        Some("after-crash")
    );
    assert!(
        agent.logs().matches("env-provider: started").count() >= 2,
        "the program was not respawned\n{}",
        agent.logs()
    );
}

#[test]
fn garbage_on_stdout_breaks_the_connection_with_a_short_quote() {
    let (ws, _secrets) = setup(
        json!({"secrets": {"bad": "x"}}),
        ", DSO_EXAMPLE_GARBAGE_ON = \"bad\"",
        "timeout = \"60s\"",
    );
    let agent = Agent::start(&ws.config());
    let c = ws.container(&["--tmpfs", DIR, "--label", "dso.secret.x=ext/bad"]);
    let line = refusal(&agent, &c, "not JSON-RPC");
    assert!(
        line.contains("Traceback (most recent call last)") && line.contains("provider_error"),
        "{line}"
    );
}

#[test]
fn check_names_a_bad_command() {
    let ws = Workspace::new();
    ws.write_config(
        "[providers.ext]\ntype = \"process\"\ncommand = \"env-provider.py\"\nmax_response_bytes = 0\n",
    );
    let (code, out, err) = dso_with(Some(&ws.config()), &["check"]);
    assert_eq!(code, Some(4), "{out}{err}");
    let all = format!("{out}{err}");
    assert!(
        all.contains("providers.ext.command") && all.contains("not an absolute path"),
        "{all}"
    );
    assert!(all.contains("providers.ext.max_response_bytes"), "{all}");
}

/// The library API against the example: versions are cheap, stable while the value is, and
/// change with it; they equal the version `resolve` reports.
#[tokio::test]
async fn versions_follow_the_content() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets.json");
    write_secrets(&secrets, json!({"secrets": {"v": "one"}}));
    let cfg: ProcessConfig = toml::from_str(&format!(
        "command = \"{}\"\nargs = [\"{}\"]\nenv = {{ EXAMPLE_SECRETS_FILE = \"{}\" }}",
        python(),
        example().display(),
        secrets.display()
    ))
    .unwrap();
    let b = ProcessBackend::new("lib", &cfg, Duration::from_secs(20)).unwrap();
    b.probe().await.unwrap();
    let fetched = b.fetch_versioned("v").await.unwrap();
    let v1 = b.version("v").await.unwrap();
    assert!(v1.is_some());
    assert_eq!(fetched.version, v1);
    assert_eq!(b.version("v").await.unwrap(), v1);
    write_secrets(&secrets, json!({"secrets": {"v": "two"}}));
    let v2 = b.version("v").await.unwrap();
    assert_ne!(v2, v1);
    assert_eq!(b.fetch_versioned("v").await.unwrap().version, v2);
    assert_eq!(
        b.version("gone").await.unwrap_err(),
        BackendError::NotFound {
            path: "gone".into()
        }
    );
    tokio::time::timeout(Duration::from_secs(20), b.probe())
        .await
        .unwrap()
        .unwrap();
}
