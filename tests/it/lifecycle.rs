//! A served container's lifecycle as the agent follows it through the engine's events: stopped
//! (managed gauge, delivery ledger), started again (an empty tmpfs, served again), removed (no
//! work for it afterwards). On Docker here, on Podman in `podman.rs` (whose compat API names the
//! events `died` and `remove` in its libpod stream).

use crate::support::*;

const DIR: &str = "/run/secrets/dso";

fn managed(agent: &Agent) -> Option<f64> {
    agent.metric("dso_managed_containers")
}

/// The container names `dso status --json` lists.
fn ledger(ws: &Workspace) -> Vec<String> {
    let (code, out, err) = dso_with(
        None,
        &[
            "status",
            "--json",
            "--socket",
            &ws.path("dso.sock").to_string_lossy(),
        ],
    );
    assert_eq!(code, Some(0), "dso status: {out}{err}");
    let s: serde_json::Value = serde_json::from_str(&out).expect("status json");
    s["containers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn stop_start_and_removal_are_followed() {
    stop_start_and_removal_are_followed_on(Workspace::new());
}

/// The body, on `ws`'s engine (Docker here, Podman in `podman.rs`).
pub(crate) fn stop_start_and_removal_are_followed_on(ws: Workspace) {
    ws.write_config("");
    ws.add_agent_settings("rotation_debounce = \"100ms\"");
    let secret = unique("life/k");
    ws.set_secret(&secret, "life-value-1");
    let agent = Agent::start(&ws.config());
    let c = ws.container(&[
        "--tmpfs",
        DIR,
        "--label",
        &format!("dso.secret.k=local/{secret}"),
    ]);
    c.wait_for(&format!("{DIR}/.ready"), &agent);
    eventually(&agent, "one managed container", || {
        (managed(&agent) == Some(1.0)).then_some(())
    });
    assert!(ledger(&ws).contains(&c.name), "{:?}", ledger(&ws));

    // Stopped: no longer managed, no longer in the ledger.
    ws.engine.run(&["stop", "-t", "0", &c.id]);
    eventually(&agent, "the stop to be seen", || {
        (managed(&agent) == Some(0.0) && !ledger(&ws).contains(&c.name)).then_some(())
    });

    // Started again: a fresh (empty) tmpfs, served again with the current value.
    ws.set_secret(&secret, "life-value-2");
    let (code, out, err) = dso_with(Some(&ws.config()), &["rotate", &format!("local/{secret}")]);
    assert_eq!(code, Some(0), "dso rotate: {out}{err}");
    ws.engine.run(&["start", &c.id]);
    eventually(&agent, "the value in the restarted container", || {
        (c.read(&format!("{DIR}/k")).as_deref() == Some("life-value-2")).then_some(())
    });
    eventually(&agent, "managed again", || {
        (managed(&agent) == Some(1.0) && ledger(&ws).contains(&c.name)).then_some(())
    });

    // Removed: not managed, and a later rotation of its secret finds nothing to do.
    let name = c.name.clone();
    drop(c);
    eventually(&agent, "the removal to be seen", || {
        (managed(&agent) == Some(0.0) && !ledger(&ws).contains(&name)).then_some(())
    });
    let served = agent.metric("dso_injections_total{result=\"success\"}");
    ws.set_secret(&secret, "life-value-3");
    let (code, out, err) = dso_with(Some(&ws.config()), &["rotate", &format!("local/{secret}")]);
    assert_eq!(code, Some(0), "dso rotate: {out}{err}");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        agent.metric("dso_injections_total{result=\"success\"}"),
        served,
        "no work for a removed container\n{}",
        agent.logs()
    );
    let logs = agent.logs();
    assert!(!logs.contains("engine_error"), "{logs}");
    assert!(!logs.contains("life-value"), "{logs}");
    assert!(
        agent.metric("dso_events_received_total{action=\"destroy\"}") >= Some(1.0),
        "{}",
        agent.get("/metrics").1
    );
}
