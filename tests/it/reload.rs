//! The running agent and its configuration: SIGHUP with a bad config changes nothing; with a
//! good, changed config the agent restarts in place (same pid) without re-injecting or reloading.
//! Also: the agent locks its memory where it may (these tests run as root).

use crate::support::*;

const DIR: &str = "/run/secrets/dso";

/// A shell that counts SIGHUPs into /tmp/hups (the writable layer: not a secret).
const HUP_COUNTER: &[&str] = &[
    "/bin/sh",
    "-c",
    "n=0; echo 0 > /tmp/hups; trap 'n=$((n+1)); echo $n > /tmp/hups' HUP; while :; do sleep 0.1; done",
];

fn status(ws: &Workspace) -> serde_json::Value {
    let (code, out, err) = dso_with(
        None,
        &[
            "status",
            "--json",
            "--socket",
            ws.path("dso.sock").to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(0), "dso status: {out}{err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn sighup_refuses_a_bad_config_and_applies_a_good_one_in_place() {
    let ws = Workspace::new();
    ws.write_config("");
    ws.set_secret("reload/db#pw", "v1");
    let mut agent = Agent::start(&ws.config());
    let c = ws.container_cmd(
        &[
            "--tmpfs",
            DIR,
            "--label",
            "dso.secret.pw=local/reload/db#pw",
            "--label",
            "dso.reload=signal:SIGHUP",
        ],
        HUP_COUNTER,
    );
    c.wait_for(&format!("{DIR}/.ready"), &agent);
    let ready = c.read(&format!("{DIR}/.ready")).unwrap();
    let pid = agent.pid();

    // Memory locking: root has CAP_IPC_LOCK, so the agent locks its pages.
    let logs = agent.logs();
    assert!(logs.contains("memory locked (mlockall)"), "{logs}");
    let vmlck = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmLck:"))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(!vmlck.ends_with(" 0 kB"), "locked memory: {vmlck}");

    // A bad config: refused, named, nothing applied, the agent keeps serving.
    let good = std::fs::read_to_string(ws.config()).unwrap();
    assert!(good.contains("ttl = \"10m\""), "{good}");
    std::fs::write(ws.config(), good.replace("ttl = \"10m\"", "ttl = \"soon\"")).unwrap();
    agent.signal("HUP");
    let logs = agent.wait_log("keeping the running one");
    assert!(logs.contains("invalid duration"), "{logs}");
    assert!(
        agent.is_running(),
        "a bad config must not stop the agent\n{logs}"
    );
    assert_eq!(status(&ws)["containers"][0]["result"], "success");

    // The same config again: nothing to do.
    std::fs::write(ws.config(), &good).unwrap();
    agent.signal("HUP");
    agent.wait_log("configuration unchanged");

    // A valid, changed config: drain, re-exec in place (same pid), state re-read from the
    // container: unchanged, no reload signal.
    std::fs::write(ws.config(), good.replace("shards = 4", "shards = 8")).unwrap();
    agent.signal("HUP");
    agent.wait_log("restarting in place");
    eventually(&agent, "the agent started again", || {
        (agent.logs().matches("dso agent starting").count() == 2
            && agent
                .logs()
                .matches("docker event stream connected")
                .count()
                >= 2)
            .then_some(())
    });
    assert!(agent.is_running());
    assert_eq!(agent.pid(), pid);
    let s = eventually(&agent, "status after the restart in place", || {
        let s = status(&ws);
        (s["containers"][0]["result"] == "unchanged").then_some(s)
    });
    assert_eq!(s["containers"][0]["name"], c.name.as_str());
    assert_eq!(c.read(&format!("{DIR}/.ready")), Some(ready));
    assert_eq!(
        c.read("/tmp/hups").as_deref().map(str::trim),
        Some("0"),
        "no reload policy fires on a restart in place\n{}",
        agent.logs()
    );
}
