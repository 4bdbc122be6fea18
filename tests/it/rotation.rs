//! Rotation on the real stack: a value changed in OpenBao reaches every container that uses it,
//! atomically, and the reload policy runs exactly once where asked.

use crate::support::*;

const DIR: &str = "/run/secrets/dso";

fn bao(args: &[&str]) {
    let mut cmd = std::process::Command::new(env("DSO_TEST_BAO_BIN"));
    cmd.args(args)
        .env("BAO_ADDR", env("DSO_TEST_VAULT_ADDR"))
        .env("BAO_TOKEN", env("DSO_TEST_VAULT_TOKEN"))
        .env("VAULT_ADDR", env("DSO_TEST_VAULT_ADDR"))
        .env("VAULT_TOKEN", env("DSO_TEST_VAULT_TOKEN"));
    let (ok, out, err) = run(&mut cmd);
    assert!(ok, "bao {args:?} failed:\n{out}\n{err}");
}

fn put(path: &str, pairs: &[(&str, &str)]) {
    let mut args = vec![
        "kv".to_string(),
        "put".into(),
        "-mount=secret".into(),
        path.to_string(),
    ];
    args.extend(pairs.iter().map(|(k, v)| format!("{k}={v}")));
    bao(&args.iter().map(String::as_str).collect::<Vec<_>>());
}

pub(crate) fn rotation_config(ws: &Workspace, refresh: &str) {
    ws.write_config(&format!(
        r#"[providers.bao]
type = "vault"
address = "{}"
token_env = "DSO_IT_BAO_TOKEN"
refresh_interval = "{refresh}"
timeout = "5s"
"#,
        env("DSO_TEST_VAULT_ADDR")
    ));
    // rotation_debounce lives in [agent]; the workspace config has that table already.
    let cfg = std::fs::read_to_string(ws.config()).unwrap();
    std::fs::write(
        ws.config(),
        cfg.replace(
            "[agent]\n",
            "[agent]\nrotation_debounce = \"100ms\"\nrestart_splay = \"100ms\"\n",
        ),
    )
    .unwrap();
}

/// A shell that counts SIGHUPs into /tmp/hups (the writable layer: not a secret).
pub(crate) const HUP_COUNTER: &[&str] = &[
    "/bin/sh",
    "-c",
    "n=0; echo 0 > /tmp/hups; trap 'n=$((n+1)); echo $n > /tmp/hups' HUP; while :; do sleep 0.1; done",
];

#[test]
fn a_changed_secret_reaches_every_user_and_reload_policies_run_once() {
    a_changed_secret_reaches_every_user_and_reload_policies_run_once_on(Workspace::new());
}

/// The body, on `ws`'s engine (Docker here, Podman in `podman.rs`).
pub(crate) fn a_changed_secret_reaches_every_user_and_reload_policies_run_once_on(ws: Workspace) {
    rotation_config(&ws, "1s");
    let path = unique("rot/db");
    put(&path, &[("password", "first-value")]);
    let token = env("DSO_TEST_VAULT_TOKEN");
    let agent = Agent::start_with_env(&ws.config(), &[("DSO_IT_BAO_TOKEN", &token)]);
    let label = format!("dso.secret.pw=bao/{path}#password");
    let sig = ws.container_cmd(
        &[
            "--tmpfs",
            DIR,
            "--label",
            &label,
            "--label",
            "dso.reload=signal:SIGHUP",
        ],
        HUP_COUNTER,
    );
    let none = ws.container_cmd(&["--tmpfs", DIR, "--label", &label], HUP_COUNTER);
    for c in [&sig, &none] {
        c.wait_for(&format!("{DIR}/.ready"), &agent);
        assert_eq!(c.read(&format!("{DIR}/pw")).as_deref(), Some("first-value"));
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(
        sig.read("/tmp/hups").as_deref().map(str::trim),
        Some("0"),
        "no signal without a change"
    );

    put(&path, &[("password", "second-value")]);
    for c in [&sig, &none] {
        eventually(&agent, &format!("the new value in {}", c.name), || {
            (c.read(&format!("{DIR}/pw")).as_deref() == Some("second-value")).then_some(())
        });
    }
    let hups = eventually(&agent, "one SIGHUP", || {
        sig.read("/tmp/hups").filter(|h| h.trim() != "0")
    });
    // Later refreshes find the same value: nothing more happens.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert_eq!(sig.read("/tmp/hups"), Some(hups.clone()));
    assert_eq!(hups.trim(), "1", "exactly one SIGHUP\n{}", agent.logs());
    assert_eq!(
        none.read("/tmp/hups").as_deref().map(str::trim),
        Some("0"),
        "`none` is not touched"
    );
    let rotations = agent.metric("dso_rotations_total{result=\"success\"}");
    assert_eq!(rotations, Some(2.0), "{}", agent.get("/metrics").1);
    for c in [&sig, &none] {
        c.assert_not_on_disk("second-value");
    }
    assert!(!agent.logs().contains("second-value"));

    // The delivery ledger shows the OpenBao version each container holds.
    let (ok, out, err) = run(std::process::Command::new(dso_bin()).args([
        "status",
        "--json",
        "--socket",
        ws.path("dso.sock").to_str().unwrap(),
    ]));
    assert!(ok, "dso status: {out}{err}");
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mine = s["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == sig.name.as_str())
        .unwrap_or_else(|| panic!("{} not in status: {out}", sig.name))
        .clone();
    assert_eq!(mine["files"][0]["version"], "2", "{out}");
    assert!(mine["files"][0]["since"].as_u64().is_some(), "{out}");
}

#[test]
fn readers_never_see_a_partial_or_mixed_set_during_rotations() {
    const ROTATIONS: usize = 100;
    let ws = Workspace::new();
    rotation_config(&ws, "100ms");
    let path = unique("rot/pair");
    put(&path, &[("user", "u-0"), ("password", "p-0-end")]);
    let token = env("DSO_TEST_VAULT_TOKEN");
    let agent = Agent::start_with_env(&ws.config(), &[("DSO_IT_BAO_TOKEN", &token)]);
    // The reader starts once .ready exists and records every read that is empty, partial, or a
    // user/password pair from two different generations.
    let reader = format!(
        "until [ -e {DIR}/.ready ]; do sleep 0.05; done; : > /tmp/bad; : > /tmp/reads; \
         while :; do \
           p=$(cat {DIR}/pw); case \"$p\" in p-*-end) ;; *) echo \"pw:[$p]\" >> /tmp/bad;; esac; \
           if cd {DIR}/..data 2>/dev/null; then a=$(cat user 2>/dev/null) && b=$(cat pw 2>/dev/null) && \
             {{ [ \"p-${{a#u-}}-end\" = \"$b\" ] || echo \"pair:[$a][$b]\" >> /tmp/bad; }}; cd /; fi; \
           echo . >> /tmp/reads; \
         done"
    );
    let c = ws.container_cmd(
        &[
            "--tmpfs",
            DIR,
            "--label",
            &format!("dso.secret.user=bao/{path}#user"),
            "--label",
            &format!("dso.secret.pw=bao/{path}#password"),
        ],
        &["/bin/sh", "-c", &reader],
    );
    c.wait_for(&format!("{DIR}/.ready"), &agent);
    for n in 1..=ROTATIONS {
        let (u, p) = (format!("u-{n}"), format!("p-{n}-end"));
        put(&path, &[("user", &u), ("password", &p)]);
        eventually(&agent, &format!("rotation {n}"), || {
            (c.read(&format!("{DIR}/pw")).as_deref() == Some(p.as_str())).then_some(())
        });
    }
    let reads = c.read("/tmp/reads").unwrap_or_default().len();
    let bad = c.read("/tmp/bad").unwrap_or_default();
    assert!(
        reads > ROTATIONS,
        "the reader must have been reading throughout ({reads} reads)"
    );
    assert_eq!(bad, "", "a reader saw an empty, partial or mixed set");
    assert_eq!(
        c.ls(DIR)
            .split_whitespace()
            .filter(|e| e.starts_with("..data_"))
            .count(),
        1,
        "old generations are removed"
    );
}

#[test]
fn restart_policy_restarts_exactly_once_and_the_restarted_container_gets_the_new_value() {
    restart_policy_restarts_exactly_once_and_the_restarted_container_gets_the_new_value_on(
        Workspace::new(),
    );
}

/// The body, on `ws`'s engine (Docker here, Podman in `podman.rs`).
pub(crate) fn restart_policy_restarts_exactly_once_and_the_restarted_container_gets_the_new_value_on(
    ws: Workspace,
) {
    rotation_config(&ws, "1s");
    let path = unique("rot/restart");
    put(&path, &[("password", "before-restart")]);
    let token = env("DSO_TEST_VAULT_TOKEN");
    let agent = Agent::start_with_env(&ws.config(), &[("DSO_IT_BAO_TOKEN", &token)]);
    let c = ws.container(&[
        "--tmpfs",
        DIR,
        "--label",
        &format!("dso.secret.pw=bao/{path}#password"),
        "--label",
        "dso.reload=restart",
    ]);
    c.wait_for(&format!("{DIR}/.ready"), &agent);
    let started = || c.inspect("{{.State.StartedAt}}");
    let first = started();
    put(&path, &[("password", "after-restart")]);
    let second = eventually(&agent, "the container to be restarted", || {
        let s = started();
        (s != first).then_some(s)
    });
    eventually(&agent, "the new value after the restart", || {
        (c.read(&format!("{DIR}/pw")).as_deref() == Some("after-restart")).then_some(())
    });
    std::thread::sleep(std::time::Duration::from_millis(3000));
    assert_eq!(
        started(),
        second,
        "restarted exactly once\n{}",
        agent.logs()
    );
    assert_eq!(
        agent.metric("dso_reloads_total{policy=\"restart\",result=\"ok\"}"),
        Some(1.0),
        "{}",
        agent.get("/metrics").1
    );
}
