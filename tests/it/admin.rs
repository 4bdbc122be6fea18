//! The admin socket and the CLI commands that use it: status, reconcile, rotate, inject.

use crate::support::*;

const DIR: &str = "/run/secrets/dso";

fn dso(ws: &Workspace, args: &[&str]) -> (Option<i32>, String, String) {
    dso_with(Some(&ws.config()), args)
}

#[test]
fn status_rotate_inject_and_reconcile_through_the_admin_socket() {
    let ws = Workspace::new();
    ws.write_config("");
    let value = unique("admin-value");
    ws.set_secret("adm#k", &value);
    let agent = Agent::start(&ws.config());
    let c = ws.container(&["--tmpfs", DIR, "--label", "dso.secret.k=local/adm#k"]);
    c.wait_for(&format!("{DIR}/.ready"), &agent);
    let bad = ws.container(&["--label", "dso.secret.k=local/adm#k"]);
    agent.wait_log("is not on a tmpfs mount");

    // The socket is 0660.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(ws.path("dso.sock"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660);

    // Status: both containers, files with sources and digest, never a value.
    let (code, out, err) = eventually(&agent, "status listing both containers", || {
        let r = dso(&ws, &["status", "--json"]);
        (r.1.contains(&c.name) && r.1.contains(&bad.name)).then_some(r)
    });
    assert_eq!(code, Some(0), "{err}");
    assert!(!out.contains(&value), "status must never show a value");
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mine = s["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == c.name.as_str())
        .unwrap()
        .clone();
    assert_eq!(mine["files"][0]["name"], "k");
    assert_eq!(mine["files"][0]["source"], "local/adm#k");
    let ready = c.read(&format!("{DIR}/.ready")).unwrap();
    assert_eq!(mine["digest"].as_str(), Some(ready.trim()));
    let theirs = s["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == bad.name.as_str())
        .unwrap()
        .clone();
    assert_eq!(theirs["result"], "not_tmpfs");
    let (code, human, _) = dso(&ws, &["status"]);
    assert_eq!(code, Some(0));
    assert!(
        human.contains(&c.name) && human.contains("local/adm#k"),
        "{human}"
    );

    // Rotate on request (a webhook): the new value arrives without waiting for a refresh.
    let new_value = unique("admin-value-2");
    ws.set_secret("adm#k", &new_value);
    let (code, out, err) = dso(&ws, &["rotate", "local/adm"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("\"changed\":true"), "{out}");
    eventually(&agent, "the rotated value", || {
        (c.read(&format!("{DIR}/k")).as_deref() == Some(new_value.as_str())).then_some(())
    });

    // Inject by name; reconcile; both accepted.
    let (code, out, err) = dso(&ws, &["inject", &c.name]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&c.id), "{out}");
    let (code, _, err) = dso(&ws, &["inject", "no-such-container-xyz"]);
    assert_eq!(code, Some(5), "{err}");
    let (code, out, err) = dso(&ws, &["reconcile"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(!agent.logs().contains(&new_value));

    // The audit log: one JSON line per delivery, rotation and refusal, never a value.
    let audit = eventually(&agent, "the rotation in the audit log", || {
        std::fs::read_to_string(ws.path("state/audit.jsonl"))
            .ok()
            .filter(|a| a.contains("\"rotated\""))
    });
    let events: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit lines are JSON"))
        .collect();
    let has = |event: &str, name: &str| {
        events
            .iter()
            .any(|e| e["event"] == event && e["name"] == name)
    };
    assert!(has("delivered", &c.name), "{audit}");
    assert!(has("rotated", &c.name), "{audit}");
    assert!(has("refused", &bad.name), "{audit}");
    assert!(
        !audit.contains(&value) && !audit.contains(&new_value),
        "values in the audit log"
    );

    // No agent: a clear error naming the socket.
    let (code, _, err) = dso(&ws, &["status", "--socket", "/nonexistent/dso.sock"]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("/nonexistent/dso.sock") && err.contains("dso agent"),
        "{err}"
    );
}
