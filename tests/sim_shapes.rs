//! The simulated Docker Engine of the benches (benches/sim) against the real dockerd, so that the
//! simulator cannot drift into testing a fiction: the same JSON shapes for every field the agent
//! reads (`/_ping`, `/version`, `/events`, `/containers/json`, `/containers/{id}/json`, exec
//! create / inspect), and the same answers, through the agent's own bollard adapter, to the
//! injection script (written → 0, already there → 10, a new set → 0 + `replaced`, not a tmpfs → 64).
//!
//! Needs the real Docker Engine and the offline test image (`scripts/test-env.sh up`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../benches/sim/mod.rs"]
mod sim;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dso::docker::BollardEngine;
use dso_actors::engine::ContainerEngine;
use dso_actors::injector::exec::{inject_command, ScriptExit, Transport};
use dso_actors::model::{ContainerAction, SecretFile};
use dso_actors::secret::SecretValue;
use dso_actors::tarball::{build_b64_lines, build_tar};
use futures_util::StreamExt;

const REAL: &str = "/var/run/docker.sock";
const DIR: &str = "/run/secrets/dso";

/// HTTP/1.0 over a Unix socket → (status, headers, body).
fn raw(socket: &Path, method: &str, path: &str, body: &str) -> (u16, String, String) {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).ok();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: docker\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).expect("read");
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

fn get_json(socket: &Path, path: &str) -> serde_json::Value {
    let (status, _, body) = raw(socket, "GET", path, "");
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// The JSON type at `pointer` ("absent" when missing).
fn kind(v: &serde_json::Value, pointer: &str) -> &'static str {
    match v.pointer(pointer) {
        None => "absent",
        Some(serde_json::Value::Null) => "null",
        Some(serde_json::Value::Bool(_)) => "bool",
        Some(serde_json::Value::Number(_)) => "number",
        Some(serde_json::Value::String(_)) => "string",
        Some(serde_json::Value::Array(_)) => "array",
        Some(serde_json::Value::Object(_)) => "object",
    }
}

fn same_shape(what: &str, real: &serde_json::Value, sim: &serde_json::Value, pointers: &[&str]) {
    for p in pointers {
        assert_eq!(
            kind(real, p),
            kind(sim, p),
            "{what} {p}: real dockerd has {}, the simulator {}",
            kind(real, p),
            kind(sim, p)
        );
    }
}

struct Removed(String);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn image() -> String {
    std::env::var("DSO_TEST_IMAGE").unwrap_or_else(|_| "dso-test/busybox:latest".to_string())
}

/// One call of the injection script: (what, (mount, dir), digest, value, transport, expected
/// exit, prints `replaced`).
type Step = (
    &'static str,
    (&'static str, &'static str),
    &'static str,
    &'static str,
    Transport,
    ScriptExit,
    bool,
);

/// The injection script with one file through the agent's adapter → (exit code, output).
async fn inject(
    engine: &BollardEngine,
    id: &str,
    (mount, dir): (&str, &str),
    digest: &str,
    value: &str,
    transport: Transport,
) -> (Option<i64>, String) {
    let file = SecretFile {
        name: "pw".to_string(),
        source: "sim/app/db#password".parse().expect("ref"),
        mode: 0o400,
        uid: 0,
        gid: 0,
        names: Default::default(),
    };
    let v = SecretValue::new(value.as_bytes().to_vec());
    let payload = match transport {
        Transport::Tar => build_tar(&[(&file, &v)]).expect("tar"),
        Transport::Base64Lines => build_b64_lines(&[&v]),
    };
    let cmd = inject_command(mount, dir, digest, &[&file], transport);
    let out = engine.exec(id, &cmd, &payload).await.expect("exec");
    (out.exit_code, out.output)
}

#[test]
fn simulator_speaks_like_the_real_engine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("docker.sock");
    let sim = sim::Sim::start(
        &sock,
        sim::SimConfig {
            exec_latency: Duration::from_millis(5),
            ..sim::SimConfig::default()
        },
    );
    let real = Path::new(REAL);
    let since = unix_now() - 1.0;
    let labels = BTreeMap::from([
        ("dso.test".to_string(), "sim-shapes".to_string()),
        (
            "dso.secret.pw".to_string(),
            "sim/app/db#password".to_string(),
        ),
    ]);
    let name = format!("dso-simshapes-{}", std::process::id());
    let out = Command::new("docker")
        .args(["run", "-d", "--name", &name, "--tmpfs", DIR])
        .args(
            labels
                .iter()
                .flat_map(|(k, v)| ["--label".to_string(), format!("{k}={v}")]),
        )
        .args([image().as_str(), "sleep", "300"])
        .output()
        .expect("docker run");
    assert!(
        out.status.success(),
        "docker run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let real_id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let _rm = Removed(real_id.clone());
    let sim_id = sim.start_container(&name, labels.clone(), &[DIR]);

    // /_ping and /version.
    for socket in [real, sock.as_path()] {
        let (status, head, body) = raw(socket, "GET", "/_ping", "");
        assert_eq!((status, body.as_str()), (200, "OK"), "{socket:?} /_ping");
        assert!(
            head.to_ascii_lowercase().contains("api-version:"),
            "{socket:?}: {head}"
        );
    }
    same_shape(
        "/version",
        &get_json(real, "/version"),
        &get_json(&sock, "/version"),
        &["/ApiVersion", "/Version", "/MinAPIVersion", "/Os"],
    );

    // Inspect: every field BollardEngine::inspect reads.
    let ri = get_json(real, &format!("/v1.41/containers/{real_id}/json"));
    let si = get_json(&sock, &format!("/v1.41/containers/{sim_id}/json"));
    same_shape(
        "inspect",
        &ri,
        &si,
        &[
            "/Id",
            "/Name",
            "/Config",
            "/Config/Labels",
            "/Config/User",
            "/State",
            "/State/Running",
            "/State/Pid",
            "/State/StartedAt",
            "/State/Health",
            "/HostConfig",
            "/HostConfig/Tmpfs",
            &format!("/HostConfig/Tmpfs/{}", DIR.replace('/', "~1")),
            "/HostConfig/Mounts",
            "/GraphDriver/Data",
        ],
    );
    let (status, _, body) = raw(real, "GET", "/v1.41/containers/nope-not-there/json", "");
    let (sstatus, _, sbody) = raw(&sock, "GET", "/v1.41/containers/nope-not-there/json", "");
    assert_eq!(status, sstatus, "unknown container: {body} / {sbody}");
    same_shape(
        "error",
        &serde_json::from_str(&body).expect("json"),
        &serde_json::from_str(&sbody).expect("json"),
        &["/message"],
    );

    // List.
    let rl = get_json(real, "/v1.41/containers/json");
    let sl = get_json(&sock, "/v1.41/containers/json");
    let find = |l: &serde_json::Value, id: &str| {
        l.as_array()
            .and_then(|a| a.iter().find(|c| c["Id"] == id))
            .cloned()
            .unwrap_or_else(|| panic!("{id} not listed"))
    };
    same_shape(
        "list",
        &find(&rl, &real_id),
        &find(&sl, &sim_id),
        &["/Id", "/Labels", "/Names", "/State"],
    );

    // Events: a start with these filters, bounded with `until`.
    let until = unix_now() + 1.0;
    let filters = "%7B%22type%22%3A%5B%22container%22%5D%2C%22event%22%3A%5B%22start%22%2C%22die%22%2C%22destroy%22%5D%7D";
    let events = |socket: &Path, id: &str| {
        let (status, _, body) = raw(
            socket,
            "GET",
            &format!("/v1.41/events?since={since:.3}&until={until:.3}&filters={filters}"),
            "",
        );
        assert_eq!(status, 200, "{socket:?} events: {body}");
        body.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| e["Actor"]["ID"] == id && e["Action"] == "start")
            .unwrap_or_else(|| panic!("{socket:?}: no start event for {id} in {body}"))
    };
    std::thread::sleep(Duration::from_millis(1100));
    same_shape(
        "event",
        &events(real, &real_id),
        &events(&sock, &sim_id),
        &[
            "/Type",
            "/Action",
            "/Actor/ID",
            "/Actor/Attributes",
            "/time",
            "/timeNano",
            "/status",
            "/id",
        ],
    );

    // Exec create / inspect shapes.
    let body = r#"{"AttachStdin":false,"AttachStdout":true,"AttachStderr":true,"Cmd":["sh","-c","exit 0"]}"#;
    let (rs, _, rc) = raw(
        real,
        "POST",
        &format!("/v1.41/containers/{real_id}/exec"),
        body,
    );
    let (ss, _, sc) = raw(
        &sock,
        "POST",
        &format!("/v1.41/containers/{sim_id}/exec"),
        body,
    );
    assert_eq!((rs, ss), (201, 201), "exec create: {rc} / {sc}");
    same_shape(
        "exec create",
        &serde_json::from_str(&rc).expect("json"),
        &serde_json::from_str(&sc).expect("json"),
        &["/Id"],
    );

    // Through the agent's own adapter (bollard): inspect, list, events, and the script's answers.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (re, _) = BollardEngine::connect(&dso::endpoint::Endpoint::Unix(REAL.into()))
            .expect("real")
            .negotiate()
            .await
            .expect("negotiate real");
        let (se, v) = BollardEngine::connect(&dso::endpoint::Endpoint::Unix(
            sim.docker_host().trim_start_matches("unix://").into(),
        ))
        .expect("sim")
        .negotiate()
        .await
        .expect("negotiate sim");
        assert_eq!(v, sim::API_VERSION);
        let (a, b) = (
            re.inspect(&real_id).await.expect("inspect"),
            se.inspect(&sim_id).await.expect("inspect"),
        );
        assert_eq!(a.labels.get("dso.secret.pw"), b.labels.get("dso.secret.pw"));
        assert_eq!((a.running, b.running), (true, true));
        assert_eq!(a.tmpfs_mounts, b.tmpfs_mounts);
        assert_eq!(a.name, b.name);
        assert_eq!(a.user, b.user);
        assert!(a.started_at.is_some() && b.started_at.is_some());
        assert!(a.pid.is_some(), "a real container has a pid");
        assert_eq!(
            b.pid, None,
            "a simulated one has none (the agent takes the exec path)"
        );
        assert!(se
            .list_running()
            .await
            .expect("list")
            .iter()
            .any(|c| c.id == sim_id));

        let mut stream = se
            .events(Some(SystemTime::now() - Duration::from_secs(30)))
            .await
            .expect("events");
        let ev = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("a replayed event")
            .expect("stream")
            .expect("event");
        assert_eq!(
            (ev.id.as_str(), ev.action),
            (sim_id.as_str(), ContainerAction::Start)
        );
        assert!(ev.time_nanos > 0);

        // The script's answers (actors/src/injector/write.sh, codes from ScriptExit), in order.
        let at = (DIR, DIR);
        let below = (DIR, "/run/secrets/dso/app");
        let steps: [Step; 6] = [
            (
                "first write",
                at,
                "d1",
                "one",
                Transport::Tar,
                ScriptExit::Written,
                false,
            ),
            (
                "unchanged",
                at,
                "d1",
                "one",
                Transport::Tar,
                ScriptExit::Unchanged,
                false,
            ),
            (
                "second set",
                at,
                "d2",
                "two",
                Transport::Tar,
                ScriptExit::Written,
                true,
            ),
            (
                "base64 lines",
                at,
                "d3",
                "three",
                Transport::Base64Lines,
                ScriptExit::Written,
                true,
            ),
            (
                "a directory below the mount",
                below,
                "d4",
                "four",
                Transport::Tar,
                ScriptExit::Written,
                false,
            ),
            (
                "not a tmpfs",
                ("/etc/dso", "/etc/dso"),
                "d5",
                "x",
                Transport::Tar,
                ScriptExit::NotTmpfs,
                false,
            ),
        ];
        for (what, engine, id) in [("real dockerd", &re, &real_id), ("simulator", &se, &sim_id)] {
            for (step, place, digest, value, transport, exit, replaced) in steps {
                let (code, out) = inject(engine, id, place, digest, value, transport).await;
                assert_eq!(
                    ScriptExit::from_code(code),
                    Some(exit),
                    "{what}, {step}: exit {code:?}"
                );
                assert_eq!(
                    out.lines().any(|l| l.trim() == "replaced"),
                    replaced,
                    "{what}, {step}: 'replaced' printed? {out:?}"
                );
            }
        }
    });
}
