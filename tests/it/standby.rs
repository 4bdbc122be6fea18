//! Hot standby on the real stack: two agents on one `agent.state_dir`; the active one is killed
//! with SIGKILL while containers start; the standby takes over, serves them, and redoes no write
//! that was complete.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::*;

const DIR: &str = "/run/secrets/dso";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `delivered` audit records (both agents append to the one audit log): container id → times.
fn deliveries(ws: &Workspace) -> HashMap<String, Vec<u64>> {
    let mut out: HashMap<String, Vec<u64>> = HashMap::new();
    let text = std::fs::read_to_string(ws.path("state/audit.jsonl")).unwrap_or_default();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("audit lines are JSON");
        if v["event"] == "delivered" {
            out.entry(v["container"].as_str().unwrap_or_default().to_string())
                .or_default()
                .push(v["ts_ms"].as_u64().unwrap_or(0));
        }
    }
    out
}

#[test]
fn a_standby_takes_over_from_a_killed_agent_and_rewrites_nothing_complete() {
    let ws = Workspace::new();
    ws.write_config("");
    ws.set_secret("sb#k", "standby-value");
    let mut active = Agent::start(&ws.config());
    let standby = Agent::start_standby(&ws.config());

    // Before takeover the standby answers on its own listen address: /healthz (for Docker's
    // healthcheck) and /metrics with dso_leader 0; it is not ready, and the admin socket is the
    // active agent's.
    assert_eq!(standby.get("/healthz").0, 200);
    assert_eq!(
        standby.get("/readyz").0,
        503,
        "{}",
        standby.get("/readyz").1
    );
    assert_eq!(standby.metric("dso_leader"), Some(0.0));
    assert_eq!(active.metric("dso_leader"), Some(1.0));
    let (code, out, err) = dso_with(Some(&ws.config()), &["status", "--json"]);
    assert_eq!(code, Some(0), "{out}{err}");

    let label = "dso.secret.k=local/sb#k";
    let before: Vec<Container> = (0..3)
        .map(|_| ws.container(&["--tmpfs", DIR, "--label", label]))
        .collect();
    for c in &before {
        c.wait_for(&format!("{DIR}/.ready"), &active);
    }
    let ready_before: Vec<Option<String>> = before
        .iter()
        .map(|c| c.read(&format!("{DIR}/.ready")))
        .collect();

    // Containers start while the active agent is killed (after the second of six).
    let started = AtomicUsize::new(0);
    let (during, kill_ms, reaped_after, took_over) = std::thread::scope(|s| {
        let starter = s.spawn(|| {
            (0..6)
                .map(|_| {
                    let c = ws.container(&["--tmpfs", DIR, "--label", label]);
                    started.fetch_add(1, Ordering::SeqCst);
                    (c, now_ms())
                })
                .collect::<Vec<_>>()
        });
        while started.load(Ordering::SeqCst) < 2 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let kill_ms = now_ms();
        let killed_at = Instant::now();
        active.kill9();
        let reaped_after = killed_at.elapsed();
        // The standby takes the lock at once and becomes the active agent.
        let took_over = loop {
            if standby.logs().contains("took over") {
                break killed_at.elapsed();
            }
            assert!(
                killed_at.elapsed() < Duration::from_secs(30),
                "the standby never took over\n--- standby ---\n{}",
                standby.logs()
            );
            std::thread::sleep(Duration::from_millis(2));
        };
        let during = starter.join().expect("starter thread");
        (during, kill_ms, reaped_after, took_over)
    });
    for (c, _) in &during {
        c.wait_for(&format!("{DIR}/.ready"), &standby);
        assert_eq!(
            c.read(&format!("{DIR}/k")).as_deref(),
            Some("standby-value")
        );
    }
    let served = deliveries(&ws);
    // Containers started after the kill: from `docker run` returning to their delivery.
    let latencies: Vec<u64> = during
        .iter()
        .filter(|(_, started)| *started >= kill_ms)
        .filter_map(|(c, started)| {
            let t = served.get(&c.id)?.iter().copied().max()?;
            Some(t.saturating_sub(*started))
        })
        .collect();
    // The new active agent's own injection times (event received → files written), for scale.
    let durations: Vec<u64> = standby
        .logs()
        .lines()
        .filter(|l| l.contains("secrets injected"))
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            Some(v["duration_us"].as_u64()? / 1000)
        })
        .collect();
    eprintln!(
        "hot standby: killed agent reaped {} ms after kill -9; \"took over\" logged {} ms after \
         the kill (test-side poll); containers started after the kill served {:?} ms after \
         `docker run` returned (audit log); the new active agent's injections took {:?} ms \
         (event → written)",
        reaped_after.as_millis(),
        took_over.as_millis(),
        latencies,
        durations
    );
    assert!(
        took_over < Duration::from_secs(10),
        "takeover took {took_over:?}\n{}",
        standby.logs()
    );
    let during: Vec<Container> = during.into_iter().map(|(c, _)| c).collect();

    // Nothing complete was written twice: at most one delivery per container, and the
    // containers served before the kill have theirs from the killed agent only, .ready unchanged.
    for c in before.iter().chain(&during) {
        let n = served.get(&c.id).map_or(0, Vec::len);
        assert!(n <= 1, "{} delivered {n} times\n{}", c.name, standby.logs());
    }
    for (c, ready) in before.iter().zip(&ready_before) {
        assert_eq!(served.get(&c.id).map(Vec::len), Some(1), "{}", c.name);
        assert_eq!(&c.read(&format!("{DIR}/.ready")), ready, "{}", c.name);
    }
    eventually(
        &standby,
        "the standby finding the old containers unchanged",
        || {
            (standby.metric("dso_injections_total{result=\"unchanged\"}")? >= before.len() as f64)
                .then_some(())
        },
    );

    // Now it is the active agent: leader, ready, admin socket.
    assert_eq!(standby.metric("dso_leader"), Some(1.0));
    eventually(&standby, "the new active agent ready", || {
        (standby.get("/readyz").0 == 200).then_some(())
    });
    let (code, out, err) = dso_with(Some(&ws.config()), &["status", "--json"]);
    assert_eq!(code, Some(0), "{out}{err}");

    // A restart in place (SIGHUP, changed config) keeps the lead: exec releases the lock, and a
    // standby that wins it meanwhile gives it back to the still-running agent.
    let mut standby = standby;
    let third = Agent::start_standby(&ws.config());
    let cfg = std::fs::read_to_string(ws.config()).unwrap();
    std::fs::write(ws.config(), cfg.replace("shards = 4", "shards = 8")).unwrap();
    let pid = standby.pid();
    standby.signal("HUP");
    standby.wait_log("restarting in place");
    eventually(&standby, "the active agent started again in place", || {
        (standby
            .logs()
            .matches("docker event stream connected")
            .count()
            >= 2)
            .then_some(())
    });
    assert!(standby.is_running());
    assert_eq!(standby.pid(), pid);
    std::thread::sleep(dso::standby::YIELD_LIMIT + Duration::from_secs(1));
    assert!(
        !third.logs().contains("took over"),
        "the third agent took the lead from an agent restarting in place\n{}",
        third.logs()
    );
    assert_eq!(third.metric("dso_leader"), Some(0.0));
    let (code, out, err) = dso_with(Some(&ws.config()), &["status", "--json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    for a in [&standby, &third] {
        assert!(!a.logs().contains("standby-value"));
    }
}
