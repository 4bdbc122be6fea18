//! Containers that make injection hard: an image without a shell, containers that exit while
//! their injection runs. Each gets a clear outcome; the agent neither crashes nor leaks.

use std::process::Command;

use crate::support::*;

const DIR: &str = "/run/secrets/dso";
const NOSH_IMAGE: &str = "dso-test/nosh:latest";

/// An image holding only /bin/busybox (no `sh`, no `tar`, no applet links), built offline.
fn nosh_image() -> &'static str {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        if docker_try(&["image", "inspect", NOSH_IMAGE]).0 {
            return;
        }
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("bin")).unwrap();
        std::fs::create_dir_all(root.path().join("run")).unwrap();
        std::fs::copy("/bin/busybox", root.path().join("bin/busybox"))
            .expect("/bin/busybox (busybox-static) is installed by scripts/test-env.sh");
        let (ok, out, err) = run(Command::new("sh").arg("-c").arg(format!(
            "tar -C {} -c . | docker import - {NOSH_IMAGE}",
            root.path().display()
        )));
        assert!(ok, "building {NOSH_IMAGE}: {out}{err}");
    });
    NOSH_IMAGE
}

/// `docker run -d` of the shell-less image with the workspace's scope label.
fn nosh_container(ws: &Workspace, labels: &[&str]) -> Container {
    let name = unique("nosh");
    let scope = format!("dso.test={}", ws_scope(ws));
    let mut args: Vec<&str> = vec![
        "run", "-d", "--name", &name, "--label", &scope, "--tmpfs", DIR,
    ];
    for l in labels {
        args.extend_from_slice(&["--label", l]);
    }
    args.extend_from_slice(&[nosh_image(), "/bin/busybox", "sleep", "600"]);
    let id = docker(&args);
    Container::docker(id, name)
}

/// The scope value of the workspace's config (`scope = "dso.test=<value>"`).
fn ws_scope(ws: &Workspace) -> String {
    let cfg = std::fs::read_to_string(ws.config()).unwrap();
    cfg.lines()
        .find_map(|l| l.strip_prefix("scope = \"dso.test="))
        .map(|v| v.trim_end_matches('"').to_string())
        .expect("scope in the workspace config")
}

fn busybox_cat(c: &Container, path: &str) -> Option<String> {
    let (ok, out, _) = docker_try(&["exec", &c.id, "/bin/busybox", "cat", path]);
    ok.then_some(out)
}

#[test]
fn an_image_without_a_shell_is_served_directly_and_refused_clearly_on_the_exec_path() {
    let ws = Workspace::new();
    ws.write_config("");
    let value = unique("nosh-value");
    ws.set_secret("nosh#k", &value);

    // auto: the direct path needs no process in the container.
    ws.set_write_mode("auto");
    let agent = Agent::start(&ws.config());
    let c = nosh_container(&ws, &["dso.secret.k=local/nosh#k"]);
    let got = eventually(&agent, "the file in the shell-less container", || {
        busybox_cat(&c, &format!("{DIR}/k"))
    });
    assert_eq!(got, value);
    drop(agent);

    // exec: no `sh` to run: one refusal that says so, nothing written, the agent carries on.
    let ws = Workspace::new();
    ws.write_config("");
    ws.set_write_mode("exec");
    ws.set_secret("nosh#k", &value);
    let agent = Agent::start(&ws.config());
    let c = nosh_container(&ws, &["dso.secret.k=local/nosh#k"]);
    let line = eventually(&agent, "the refusal on the exec path", || {
        agent
            .logs()
            .lines()
            .find(|l| l.contains(&c.id[..12]) || l.contains(&c.name))
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .map(str::to_string)
    });
    assert!(
        line.contains("not found")
            && (line.contains("exec_failed") || line.contains("engine_error")),
        "the refusal names the missing shell: {line}\n--- logs ---\n{}",
        agent.logs()
    );
    assert_eq!(
        docker_try(&["exec", &c.id, "/bin/busybox", "ls", "-A", DIR])
            .1
            .trim(),
        "",
        "nothing written"
    );
    assert!(!agent.logs().contains(&value));
    // Still serving others.
    let ok = ws.container(&["--tmpfs", DIR, "--label", "dso.secret.k=local/nosh#k"]);
    ok.wait_for(&format!("{DIR}/.ready"), &agent);
}

#[test]
fn containers_that_exit_during_their_injection_get_a_clear_outcome_and_leave_nothing() {
    let ws = Workspace::new();
    ws.write_config("");
    // A big value makes each injection long enough to race with the exit.
    let value = format!("{}{}", unique("exit-value"), "x".repeat(2 * 1024 * 1024));
    ws.set_secret("exit#k", &value);
    let agent = Agent::start(&ws.config());
    let needle = &value[..24];
    let short: Vec<Container> = (0..8)
        .map(|i| {
            ws.container_cmd(
                &["--tmpfs", DIR, "--label", "dso.secret.k=local/exit#k"],
                &["/bin/sh", "-c", &format!("sleep 0.{i}")],
            )
        })
        .collect();
    // Each one ends: delivered before it exited, or found stopped (logged, nothing to do), or its
    // start collapsed into its `die` event (one job in flight + one queued per container). No
    // crash, and once all have exited the status holds none of them.
    for c in &short {
        eventually(&agent, &format!("{} to exit", c.name), || {
            (docker(&["inspect", "-f", "{{.State.Running}}", &c.id]) == "false").then_some(())
        });
    }
    let socket = ws.path("dso.sock");
    eventually(&agent, "the exited containers to leave the status", || {
        let (code, out, _) = dso_with(
            None,
            &["status", "--json", "--socket", socket.to_str().unwrap()],
        );
        (code == Some(0) && short.iter().all(|c| !out.contains(&c.id))).then_some(())
    });
    let logs = agent.logs();
    for l in logs
        .lines()
        .filter(|l| short.iter().any(|c| l.contains(&c.id[..12])))
    {
        assert!(
            l.contains("secrets injected")
                || l.contains("stopped before its secrets were written")
                || l.contains("container gone")
                || l.contains("container_gone")
                || l.contains("write_failed")
                || l.contains("exec_failed"),
            "an unexpected outcome: {l}"
        );
    }
    let (code, body) = agent.get("/healthz");
    assert_eq!(code, 200, "{body}");
    // The exited containers' writable layers hold nothing of the value.
    for c in &short {
        c.assert_not_on_disk(needle);
    }
    assert!(!agent.logs().contains(needle));
    // The agent still serves a normal container.
    let ok = ws.container(&["--tmpfs", DIR, "--label", "dso.secret.k=local/exit#k"]);
    ok.wait_for(&format!("{DIR}/.ready"), &agent);
    assert_eq!(
        ok.read(&format!("{DIR}/k")).as_deref(),
        Some(value.as_str())
    );
}

#[test]
fn an_agent_in_its_own_pid_namespace_falls_back_to_exec() {
    // Like an agent container without `pid: host`: the pids Docker reports are not its own.
    // `--kill-child`: the forked agent is the init of its PID namespace (SIGTERM does not stop it)
    // and must die with `unshare`, or it would outlive the test and act on later tests' containers.
    let ws = Workspace::new();
    ws.write_config("");
    ws.set_write_mode("auto");
    ws.set_secret("pidns#k", "pidns-value");
    let agent = Agent::start_wrapped(
        &ws.config(),
        &[],
        &["unshare", "--pid", "--kill-child", "--mount-proc"],
    );
    let c = ws.container(&["--tmpfs", DIR, "--label", "dso.secret.k=local/pidns#k"]);
    c.wait_for(&format!("{DIR}/.ready"), &agent);
    assert_eq!(c.read(&format!("{DIR}/k")).as_deref(), Some("pidns-value"));
    assert_eq!(
        agent.metric("dso_direct_fallbacks_total{reason=\"pid_namespace\"}"),
        Some(1.0),
        "{}",
        agent.get("/metrics").1
    );
    assert_eq!(
        agent.metric("dso_injections_by_mode_total{mode=\"exec\"}"),
        Some(1.0)
    );
    agent.wait_log("own PID namespace");
    // The forked agent dies with the test's agent handle (it ignores SIGTERM as its namespace's
    // init): nothing is left running to act on later tests' containers.
    let forked = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", agent.pid()))
        .unwrap_or_default();
    let forked: Vec<u32> = forked
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    assert_eq!(forked.len(), 1, "unshare forked one agent: {forked:?}");
    drop(agent);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let alive = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| Some(s.rsplit_once(") ")?.1.chars().next()? != 'Z'))
            .unwrap_or(false)
    };
    while alive(forked[0]) {
        assert!(
            std::time::Instant::now() < deadline,
            "the forked agent (pid {}) outlived unshare",
            forked[0]
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
