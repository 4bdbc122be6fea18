//! Swarm services on a single-node swarm. The swarm runs on a dockerd of its own
//! (`engine2.rs`: its own network namespace, data and exec roots) so that swarm mode never
//! reaches the shared daemon the other tests use. One test, one daemon: 3 replicas served, a
//! rotation reaches all, `dso.reload=restart` rolls the service exactly once (Swarm replaces the
//! 3 tasks; none is `docker restart`ed), with two agents on the node; a `signal:` service's tasks
//! are signalled one by one and the service is left alone.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::engine2::Engine2;
use crate::support::*;

const DIR: &str = "/run/secrets/dso";

/// A single-node swarm on a private dockerd.
fn swarm() -> Engine2 {
    let mut engine = Engine2::unix("dso-swarm-", &format!("dsosw{}", std::process::id()));
    engine.swarm_init();
    engine
}

/// Running task containers of `service`: (id, secret file content or None).
fn tasks(engine: &Engine2, service: &str) -> Vec<(String, Option<String>)> {
    let filter = format!("label=com.docker.swarm.service.name={service}");
    let ids = engine.docker(&["ps", "-q", "--no-trunc", "--filter", &filter]);
    ids.split_whitespace()
        .map(|id| {
            let (ok, out, _) = engine.docker_try(&["exec", id, "cat", &format!("{DIR}/pw")]);
            (id.to_string(), ok.then_some(out))
        })
        .collect()
}

/// `.Spec` of a service without what a roll changes (`TaskTemplate.ForceUpdate`, `dso.rolled`).
fn service_spec(engine: &Engine2, service: &str) -> serde_json::Value {
    let json = engine.docker(&["service", "inspect", "-f", "{{json .Spec}}", service]);
    let mut spec: serde_json::Value = serde_json::from_str(&json).expect("service spec");
    if let Some(labels) = spec.get_mut("Labels").and_then(|l| l.as_object_mut()) {
        labels.remove("dso.rolled");
    }
    if let Some(task) = spec.get_mut("TaskTemplate").and_then(|t| t.as_object_mut()) {
        task.remove("ForceUpdate");
    }
    spec
}

/// Polls `f` for up to `secs`, then fails with `what`, what `f` saw last, the agents' logs and
/// the daemon's tasks.
fn wait_until<T>(
    engine: &Engine2,
    agents: &[&Agent],
    secs: u64,
    what: &str,
    mut f: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let last = match f() {
            Ok(v) => return v,
            Err(last) => last,
        };
        if Instant::now() > deadline {
            let logs: Vec<String> = agents.iter().map(|a| a.logs()).collect();
            panic!(
                "timed out waiting for: {what}\nlast seen: {last}\n--- tasks ---\n{}\n--- agent logs ---\n{}",
                engine.docker_try(&["service", "ps", "--no-trunc", "svc"]).1,
                logs.join("\n--- next agent ---\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_swarm_service_is_served_rotated_and_rolled_once_by_two_agents() {
    let engine = swarm();
    let ws = Workspace::new();
    crate::rotation::rotation_config(&ws, "500ms");
    // A second agent on the same node: its own state dir, admin socket and listener.
    let cfg = std::fs::read_to_string(ws.config()).expect("config");
    let cfg2 = ws.path("dso2.toml");
    std::fs::write(
        &cfg2,
        cfg.replace(
            &ws.path("state").display().to_string(),
            &ws.path("state2").display().to_string(),
        )
        .replace(
            &ws.path("dso.sock").display().to_string(),
            &ws.path("dso2.sock").display().to_string(),
        ),
    )
    .expect("config 2");
    let path = unique("swarm/db");
    bao_put(&path, &[("password", "first")]);
    let token = env("DSO_TEST_VAULT_TOKEN");
    let mut envs = engine.env();
    envs.push(("DSO_IT_BAO_TOKEN", &token));

    // Labels for the task containers: `--container-label` (`--label` labels the service).
    let scope = format!("dso.test={}", ws.scope);
    let secret = format!("dso.secret.pw=bao/{path}#password");
    engine.docker(&[
        "service",
        "create",
        "-d",
        "--name",
        "svc",
        "--replicas",
        "3",
        "--container-label",
        &scope,
        "--container-label",
        &secret,
        "--container-label",
        "dso.reload=restart",
        "--mount",
        &format!("type=tmpfs,dst={DIR}"),
        "--update-parallelism",
        "1",
        "--update-delay",
        "0s",
        // `sleep` as PID 1 ignores SIGTERM: without this each replaced task waits 10 s.
        "--stop-grace-period",
        "1s",
        &image(),
        "/bin/sleep",
        "600",
    ]);
    // A `signal:` service beside it: signalled per task container, never rolled.
    let mut sig = vec![
        "service",
        "create",
        "-d",
        "--name",
        "sig",
        "--replicas",
        "2",
        "--container-label",
        &scope,
        "--container-label",
        &secret,
        "--container-label",
        "dso.reload=signal:SIGHUP",
        "--mount",
        "type=tmpfs,dst=/run/secrets/dso",
        "--stop-grace-period",
        "1s",
    ];
    let img = image();
    sig.push(&img);
    sig.extend_from_slice(crate::rotation::HUP_COUNTER);
    engine.docker(&sig);
    // The spec as created, before any agent touched the service.
    let created = service_spec(&engine, "svc");
    let first = Agent::start_with_env(&ws.config(), &envs);
    let before = wait_until(&engine, &[&first], 60, "3 replicas served", || {
        let t = tasks(&engine, "svc");
        if t.len() == 3 && t.iter().all(|(_, v)| v.as_deref() == Some("first")) {
            Ok(t.into_iter().map(|(id, _)| id).collect::<HashSet<_>>())
        } else {
            Err(format!("{t:?}"))
        }
    });
    let sig_tasks = wait_until(&engine, &[&first], 60, "2 signal tasks served", || {
        let t = tasks(&engine, "sig");
        if t.len() == 2 && t.iter().all(|(_, v)| v.as_deref() == Some("first")) {
            Ok(t.into_iter().map(|(id, _)| id).collect::<HashSet<_>>())
        } else {
            Err(format!("{t:?}"))
        }
    });
    // A plain container that claims, by its labels, to be one of `sig`'s tasks (a real task id of
    // that service): labels are untrusted, so the agent must neither roll `sig` for it nor
    // `docker restart` it.
    let sig_id = engine.docker(&["service", "inspect", "-f", "{{.ID}}", "sig"]);
    let a_sig_task = sig_tasks.iter().next().expect("a sig task");
    let real_task = engine.docker(&[
        "inspect",
        "-f",
        "{{index .Config.Labels \"com.docker.swarm.task.id\"}}",
        a_sig_task,
    ]);
    let forged = engine.docker(&[
        "run",
        "-d",
        "--label",
        &scope,
        "--label",
        &secret,
        "--label",
        "dso.reload=restart",
        "--label",
        &format!("com.docker.swarm.service.id={sig_id}"),
        "--label",
        &format!("com.docker.swarm.task.id={real_task}"),
        "--tmpfs",
        DIR,
        &img,
        "/bin/sleep",
        "600",
    ]);
    let forged_started = engine.docker(&["inspect", "-f", "{{.State.StartedAt}}", &forged]);
    wait_until(&engine, &[&first], 60, "the forged task served", || {
        let (ok, out, _) = engine.docker_try(&["exec", &forged, "cat", &format!("{DIR}/pw")]);
        if ok && out == "first" {
            Ok(())
        } else {
            Err(out)
        }
    });
    let second = Agent::start_with_env(&cfg2, &envs);

    // Rotation: every task gets the new value (the old tasks from the agents' write, the new
    // ones from their first injection), and the service is rolled exactly once.
    bao_put(&path, &[("password", "second")]);
    let after = wait_until(
        &engine,
        &[&first, &second],
        90,
        "the roll done: 3 new tasks serving the new value",
        || {
            let state = engine.docker(&[
                "service",
                "inspect",
                "-f",
                "{{.Spec.TaskTemplate.ForceUpdate}} {{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}",
                "svc",
            ]);
            let t = tasks(&engine, "svc");
            let ids: HashSet<String> = t.iter().map(|(id, _)| id.clone()).collect();
            if state == "1 completed"
                && t.len() == 3
                && ids.is_disjoint(&before)
                && t.iter().all(|(_, v)| v.as_deref() == Some("second"))
            {
                Ok(ids)
            } else {
                Err(format!("{state}: {t:?}"))
            }
        },
    );
    // Settled: no second roll comes late (from the other agent, or a new task's injection).
    std::thread::sleep(Duration::from_secs(3));
    let spec = engine.docker(&[
        "service",
        "inspect",
        "-f",
        "{{.Spec.TaskTemplate.ForceUpdate}} {{index .Spec.Labels \"dso.rolled\"}}",
        "svc",
    ]);
    let (force, rolled) = spec.split_once(' ').expect("force and label");
    assert_eq!(force, "1", "rolled exactly once: {spec}");
    assert_eq!(
        rolled.len(),
        16,
        "the change's digest on the service: {spec}"
    );
    let t = tasks(&engine, "svc");
    let ids: HashSet<String> = t.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids, after, "3 task containers, the same ones: {t:?}");
    for id in &ids {
        let state = engine.docker(&["inspect", "-f", "{{.RestartCount}} {{.State.Running}}", id]);
        assert_eq!(
            state, "0 true",
            "each task started once since the rotation ({id})"
        );
    }
    for id in &before {
        let running = engine.docker(&["inspect", "-f", "{{.State.Running}}", id]);
        assert_eq!(
            running, "false",
            "an old task left running outside Swarm ({id})"
        );
    }
    // The signal service: the same task containers, each signalled, the service untouched.
    wait_until(
        &engine,
        &[&first, &second],
        30,
        "signal tasks: new value and SIGHUP",
        || {
            let t = tasks(&engine, "sig");
            let ids: HashSet<String> = t.iter().map(|(id, _)| id.clone()).collect();
            let hups: Vec<String> = t
                .iter()
                .map(|(id, _)| engine.docker_try(&["exec", id, "cat", "/tmp/hups"]).1)
                .collect();
            if ids == sig_tasks
                && t.iter().all(|(_, v)| v.as_deref() == Some("second"))
                && hups
                    .iter()
                    .all(|h| h.trim().parse::<u32>().is_ok_and(|n| n >= 1))
            {
                Ok(())
            } else {
                Err(format!("{t:?} hups {hups:?}"))
            }
        },
    );
    let sig_spec = engine.docker(&[
        "service",
        "inspect",
        "-f",
        "{{.Spec.TaskTemplate.ForceUpdate}} {{index .Spec.Labels \"dso.rolled\"}}",
        "sig",
    ]);
    assert_eq!(
        sig_spec.trim(),
        "0",
        "a signal: service is never rolled (nor for a container that claims its task)"
    );
    wait_until(
        &engine,
        &[&first, &second],
        30,
        "the forged task refused",
        || {
            let logs = format!("{}{}", first.logs(), second.logs());
            if logs.contains("its task runs another container: service not rolled") {
                Ok(())
            } else {
                Err("no refusal logged yet".into())
            }
        },
    );
    assert_eq!(
        engine.docker(&[
            "inspect",
            "-f",
            "{{.RestartCount}} {{.State.StartedAt}}",
            &forged
        ]),
        format!("0 {forged_started}"),
        "the forged task is never docker-restarted"
    );
    // The roll changed nothing but ForceUpdate and the label: the UpdateConfig Swarm followed,
    // the mounts, labels and the rest of the spec came through the read-modify-write intact.
    assert_eq!(
        service_spec(&engine, "svc"),
        created,
        "the service spec changed beyond ForceUpdate and dso.rolled"
    );
    let logs = format!("{}{}", first.logs(), second.logs());
    assert_eq!(
        logs.matches("Swarm service rolled after new secret values")
            .count(),
        1,
        "{logs}"
    );
    assert!(
        !logs.contains("restarted after new secret values"),
        "{logs}"
    );
}
