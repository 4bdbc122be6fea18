//! A simulated Docker Engine for benchmarks (the idea of Kubernetes' `kwok`): a small HTTP server
//! on a Unix socket that speaks the subset of the Engine API the agent uses, so that the real
//! `dso` binary, unchanged, talks to it through bollard (`agent.docker_host = "unix:///…"`) and can
//! be driven at a scale one machine cannot start for real (10,000 containers, 200,000 events a
//! minute).
//!
//! Why this file is long: it is one fake daemon (state, HTTP routing, the event stream, exec and
//! the script's answers), kept in one place so that `tests/sim_shapes.rs` checks all of it against
//! the real dockerd; split, its pieces would only be used together.
//!
//! Endpoints (with or without a `/v1.xx` prefix):
//! - `GET /_ping`, `GET /version` (API 1.41, like Engine 20.10);
//! - `GET /events?since=&filters=` — a chunked JSON stream of container `start`/`die`/`destroy`
//!   events; `since` replays the history, `filters` `type` and `event` are applied;
//! - `GET /containers/json` (running containers), `GET /containers/{id}/json`;
//! - `POST /containers/{id}/exec`, `POST /exec/{id}/start` (hijacked: the stdin is read to its end,
//!   then after [`SimConfig::exec_latency`] the exit code is decided) and `GET /exec/{id}/json`.
//!
//! The exec answers what the agent's in-container script would (actors/src/injector/write.sh,
//! arguments `MOUNT DIR DIGEST tar|b64 [NAME MODE UID GID]...`, exit codes from `ScriptExit`):
//! 64 when MOUNT is not one of the container's tmpfs mounts or DIR is not below it, 10
//! ("unchanged") when the container's `.ready` already holds DIGEST, else the tar (or the base64
//! lines) on stdin is walked (its entries must be the files named in the arguments), the digest is
//! recorded as DIR's `.ready`, `replaced` is printed when an earlier set was replaced,
//! and exit 0. An exec whose container stopped meanwhile answers 137. Every exec is recorded
//! ([`Exec`]) with its event→write latency, so a bench can count what was injected against what
//! should have been.
//!
//! Simulated containers have no process: `State.Pid` is 0, so the agent cannot use its direct
//! write path (`/proc/<pid>/root`) and everything measured here is the **exec path**. The JSON
//! shapes of the fields the agent reads are checked against the real dockerd in
//! `tests/sim_shapes.rs`.
//!
//! Faults are knobs: [`SimConfig::inspect_latency`] (a daemon that answers inspect after 10 s),
//! [`SimConfig::cut_events_every`] (the event stream cut every second) and [`Sim::stall_events`]
//! (a stream that stops delivering).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dso_actors::injector::exec::ScriptExit;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// The API version the simulator reports (Docker Engine 20.10).
pub const API_VERSION: &str = "1.41";

/// Knobs of the simulated daemon.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Time from the end of an exec's stdin to its exit (a real runc exec costs ~50 ms here).
    pub exec_latency: Duration,
    /// Time before `GET /containers/{id}/json` answers.
    pub inspect_latency: Duration,
    /// Ends every event stream this long after it was opened (the agent must reconnect, replay).
    pub cut_events_every: Option<Duration>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            exec_latency: Duration::from_millis(50),
            inspect_latency: Duration::ZERO,
            cut_events_every: None,
        }
    }
}

/// One simulated container.
#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub tmpfs: Vec<String>,
    pub running: bool,
    pub started_at: String,
    /// When its last `start` event was emitted.
    pub started: Instant,
    /// The digest in each directory's `.ready` (empty: nothing written yet).
    pub ready: BTreeMap<String, String>,
}

/// One exec of the injection script, as the simulator saw it.
#[derive(Debug, Clone)]
pub struct Exec {
    pub container: String,
    pub digest: String,
    pub exit_code: i64,
    /// Files in the tar.
    pub files: usize,
    /// The container's last start event → the exec's exit.
    pub latency: Duration,
    /// Exec create → exit (the configured latency plus the time the client and the server took).
    pub duration: Duration,
    pub at: Instant,
}

struct Event {
    time_nano: i64,
    action: &'static str,
    json: Bytes,
}

#[derive(Default)]
struct State {
    containers: HashMap<String, Container>,
    execs_pending: HashMap<String, (String, Vec<String>, Instant)>,
    exit_codes: HashMap<String, i64>,
    history: Vec<Event>,
    subscribers: Vec<(mpsc::UnboundedSender<Bytes>, Vec<String>)>,
    execs: Vec<Exec>,
    /// Events held back while the stream is stalled.
    stalled: Vec<Bytes>,
    requests: BTreeMap<&'static str, u64>,
}

/// The running simulator (a thread with its own runtime); stops when dropped.
pub struct Sim {
    state: Arc<Mutex<State>>,
    config: SimConfig,
    stall: Arc<AtomicBool>,
    seq: AtomicU64,
    pub socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// RFC 3339 with nanoseconds, UTC (Docker's `StartedAt`).
pub fn rfc3339(nanos: i64) -> String {
    let secs = nanos.div_euclid(1_000_000_000);
    let ns = nanos.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ns:09}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("header"));
    r.headers_mut()
        .insert("api-version", API_VERSION.parse().expect("header"));
    r
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    full(status, v.to_string())
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "message": message }))
}

fn query(uri: &hyper::Uri) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(k.to_string(), percent_decode(v));
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `since` as Docker takes it (`secs[.nanos]`) → Unix nanoseconds.
fn parse_since(s: &str) -> Option<i64> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut frac = frac.to_string();
    frac.truncate(9);
    while frac.len() < 9 {
        frac.push('0');
    }
    Some(secs * 1_000_000_000 + frac.parse::<i64>().unwrap_or(0))
}

impl Container {
    fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "Id": self.id,
            "Names": [format!("/{}", self.name)],
            "Image": "dso-sim/busybox:latest",
            "ImageID": "sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "Command": "sleep 3600",
            "Created": 0,
            "Ports": [],
            "Labels": self.labels,
            "State": "running",
            "Status": "Up",
            "HostConfig": { "NetworkMode": "default" },
            "NetworkSettings": { "Networks": {} },
            "Mounts": [],
        })
    }

    fn inspect(&self) -> serde_json::Value {
        let tmpfs: serde_json::Map<String, serde_json::Value> = self
            .tmpfs
            .iter()
            .map(|t| (t.clone(), serde_json::Value::String(String::new())))
            .collect();
        serde_json::json!({
            "Id": self.id,
            "Created": self.started_at,
            "Path": "sleep",
            "Args": ["3600"],
            "State": {
                "Status": if self.running { "running" } else { "exited" },
                "Running": self.running,
                "Paused": false,
                "Restarting": false,
                "OOMKilled": false,
                "Dead": false,
                // No process: the agent cannot use /proc/<pid>/root, it takes the exec path.
                "Pid": 0,
                "ExitCode": if self.running { 0 } else { 137 },
                "Error": "",
                "StartedAt": self.started_at,
                "FinishedAt": "0001-01-01T00:00:00Z",
            },
            "Image": "sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "Name": format!("/{}", self.name),
            "RestartCount": 0,
            "Driver": "overlay2",
            "HostConfig": {
                "NetworkMode": "default",
                "Tmpfs": tmpfs,
            },
            "GraphDriver": { "Name": "overlay2", "Data": {} },
            "Mounts": [],
            "Config": {
                "Hostname": &self.id[..12],
                "User": "",
                "Env": [],
                "Cmd": ["sleep", "3600"],
                "Image": "dso-sim/busybox:latest",
                "Labels": self.labels,
            },
            "NetworkSettings": { "Networks": {} },
        })
    }
}

impl Sim {
    /// Starts a simulator listening on `socket` (removed first if it exists).
    pub fn start(socket: &Path, config: SimConfig) -> Sim {
        let _ = std::fs::remove_file(socket);
        let state = Arc::new(Mutex::new(State::default()));
        let stall = Arc::new(AtomicBool::new(false));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (state, config, socket) = (state.clone(), config.clone(), socket.to_path_buf());
            std::thread::Builder::new()
                .name("docker-sim".into())
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("sim runtime");
                    rt.block_on(async move {
                        let listener =
                            tokio::net::UnixListener::bind(&socket).expect("bind sim socket");
                        let _ = ready_tx.send(());
                        let mut stop_rx = stop_rx;
                        loop {
                            tokio::select! {
                                _ = &mut stop_rx => break,
                                accepted = listener.accept() => {
                                    let Ok((stream, _)) = accepted else { continue };
                                    let (state, config) = (state.clone(), config.clone());
                                    tokio::spawn(async move {
                                        let svc = hyper::service::service_fn(move |req| {
                                            handle(req, state.clone(), config.clone())
                                        });
                                        let _ = hyper::server::conn::http1::Builder::new()
                                            .serve_connection(TokioIo::new(stream), svc)
                                            .with_upgrades()
                                            .await;
                                    });
                                }
                            }
                        }
                    });
                })
                .expect("sim thread")
        };
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("simulator listening");
        Sim {
            state,
            config,
            stall,
            seq: AtomicU64::new(0),
            socket: socket.to_path_buf(),
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// `unix:///…` for `agent.docker_host`.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    fn emit(&self, st: &mut State, id: &str, action: &'static str) {
        let time_nano = now_nanos();
        // Like Docker: the container's labels, its image and name are the actor's attributes.
        let mut attributes: serde_json::Map<String, serde_json::Value> = st
            .containers
            .get(id)
            .map(|c| {
                c.labels
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                    .collect()
            })
            .unwrap_or_default();
        let name = st
            .containers
            .get(id)
            .map(|c| c.name.clone())
            .unwrap_or_default();
        attributes.insert("image".into(), "dso-sim/busybox:latest".into());
        attributes.insert("name".into(), name.into());
        let v = serde_json::json!({
            "status": action,
            "id": id,
            "from": "dso-sim/busybox:latest",
            "Type": "container",
            "Action": action,
            "Actor": { "ID": id, "Attributes": attributes },
            "scope": "local",
            "time": time_nano / 1_000_000_000,
            "timeNano": time_nano,
        });
        let mut line = v.to_string();
        line.push('\n');
        let json = Bytes::from(line);
        if self.stall.load(Ordering::SeqCst) {
            st.stalled.push(json.clone());
        } else {
            st.subscribers.retain(|(tx, actions)| {
                !actions.iter().any(|a| a == action) || tx.send(json.clone()).is_ok()
            });
        }
        st.history.push(Event {
            time_nano,
            action,
            json,
        });
    }

    /// Creates and starts a container (emits `start`); returns its id.
    pub fn start_container(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
        tmpfs: &[&str],
    ) -> String {
        let n = self.seq.fetch_add(1, Ordering::SeqCst);
        let id = format!("{:016x}{n:048x}", rand::random::<u64>());
        let mut st = self.state.lock().expect("sim state");
        st.containers.insert(
            id.clone(),
            Container {
                id: id.clone(),
                name: name.to_string(),
                labels,
                tmpfs: tmpfs.iter().map(|s| s.to_string()).collect(),
                running: true,
                started_at: rfc3339(now_nanos()),
                started: Instant::now(),
                ready: BTreeMap::new(),
            },
        );
        self.emit(&mut st, &id, "start");
        id
    }

    /// The container's main process exits (emits `die`).
    pub fn die(&self, id: &str) {
        let mut st = self.state.lock().expect("sim state");
        let Some(c) = st.containers.get_mut(id) else {
            return;
        };
        c.running = false;
        self.emit(&mut st, id, "die");
    }

    /// The container is removed (emits `destroy`).
    pub fn destroy(&self, id: &str) {
        let mut st = self.state.lock().expect("sim state");
        if st.containers.contains_key(id) {
            self.emit(&mut st, id, "destroy");
            st.containers.remove(id);
        }
    }

    /// Holds events back (true) or delivers those held and resumes (false).
    pub fn stall_events(&self, stalled: bool) {
        self.stall.store(stalled, Ordering::SeqCst);
        if !stalled {
            let mut st = self.state.lock().expect("sim state");
            let held = std::mem::take(&mut st.stalled);
            for json in held {
                st.subscribers
                    .retain(|(tx, _)| tx.send(json.clone()).is_ok());
            }
        }
    }

    /// Every exec of the injection script so far.
    pub fn execs(&self) -> Vec<Exec> {
        self.state.lock().expect("sim state").execs.clone()
    }

    /// Execs recorded so far (cheap).
    pub fn exec_count(&self) -> usize {
        self.state.lock().expect("sim state").execs.len()
    }

    /// Containers that hold a `.ready` among the running ones: (ready, running).
    pub fn ready_count(&self) -> (usize, usize) {
        let st = self.state.lock().expect("sim state");
        let running = st.containers.values().filter(|c| c.running).count();
        let ready = st
            .containers
            .values()
            .filter(|c| c.running && !c.ready.is_empty())
            .count();
        (ready, running)
    }

    /// One container's state.
    pub fn container(&self, id: &str) -> Option<Container> {
        self.state
            .lock()
            .expect("sim state")
            .containers
            .get(id)
            .cloned()
    }

    /// Requests served per endpoint.
    pub fn requests(&self) -> BTreeMap<&'static str, u64> {
        self.state.lock().expect("sim state").requests.clone()
    }

    /// Forgets recorded execs and request counts (between phases of a bench).
    pub fn reset_counters(&self) {
        let mut st = self.state.lock().expect("sim state");
        st.execs.clear();
        st.requests.clear();
    }

    /// Drops the event history (replay of `since` then starts from here); bounds memory in long storms.
    pub fn trim_history(&self, keep: usize) {
        let mut st = self.state.lock().expect("sim state");
        let n = st.history.len();
        if n > keep {
            st.history.drain(..n - keep);
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        // Close every open event stream so the server's connections end.
        if let Ok(mut st) = self.state.lock() {
            st.subscribers.clear();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn count(state: &Mutex<State>, what: &'static str) {
    if let Ok(mut st) = state.lock() {
        *st.requests.entry(what).or_insert(0) += 1;
    }
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    config: SimConfig,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    // Strip an API version prefix (`/v1.41/…`).
    let path = match path.strip_prefix("/v") {
        Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => rest
            .find('/')
            .map(|i| rest[i..].to_string())
            .unwrap_or_default(),
        _ => path,
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    let resp = match (&method, parts.as_slice()) {
        (&Method::GET | &Method::HEAD, ["_ping"]) => {
            count(&state, "ping");
            let mut r = full(StatusCode::OK, "OK");
            r.headers_mut().insert(
                "content-type",
                "text/plain; charset=utf-8".parse().expect("h"),
            );
            r
        }
        (&Method::GET, ["version"]) => {
            count(&state, "version");
            json(
                StatusCode::OK,
                &serde_json::json!({
                    "Platform": { "Name": "dso-sim" },
                    "Version": "20.10.24",
                    "ApiVersion": API_VERSION,
                    "MinAPIVersion": "1.12",
                    "GitCommit": "sim",
                    "GoVersion": "go1.19",
                    "Os": "linux",
                    "Arch": "amd64",
                    "KernelVersion": "sim",
                    "BuildTime": "2026-01-01T00:00:00.000000000+00:00",
                    "Components": [],
                }),
            )
        }
        (&Method::GET, ["events"]) => {
            count(&state, "events");
            events(&req, &state, &config)
        }
        (&Method::GET, ["containers", "json"]) => {
            count(&state, "list");
            let q = query(req.uri());
            let all = q.get("all").is_some_and(|v| v == "true" || v == "1");
            let st = state.lock().expect("sim state");
            let list: Vec<serde_json::Value> = st
                .containers
                .values()
                .filter(|c| all || c.running)
                .map(Container::summary)
                .collect();
            json(StatusCode::OK, &serde_json::Value::Array(list))
        }
        (&Method::GET, ["containers", id, "json"]) => {
            count(&state, "inspect");
            if !config.inspect_latency.is_zero() {
                tokio::time::sleep(config.inspect_latency).await;
            }
            let found = state
                .lock()
                .expect("sim state")
                .containers
                .get(*id)
                .map(Container::inspect);
            match found {
                Some(v) => json(StatusCode::OK, &v),
                None => error(StatusCode::NOT_FOUND, &format!("No such container: {id}")),
            }
        }
        (&Method::POST, ["containers", id, "exec"]) => {
            count(&state, "exec_create");
            let id = id.to_string();
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
            let cmd: Vec<String> = body
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| serde_json::from_value(v.get("Cmd")?.clone()).ok())
                .unwrap_or_default();
            let mut st = state.lock().expect("sim state");
            match st.containers.get(&id) {
                None => error(StatusCode::NOT_FOUND, &format!("No such container: {id}")),
                Some(c) if !c.running => error(
                    StatusCode::CONFLICT,
                    &format!("Container {id} is not running"),
                ),
                Some(_) => {
                    let exec_id = format!("{:064x}", rand::random::<u128>());
                    st.execs_pending
                        .insert(exec_id.clone(), (id, cmd, Instant::now()));
                    json(StatusCode::CREATED, &serde_json::json!({ "Id": exec_id }))
                }
            }
        }
        (&Method::POST, ["exec", exec_id, "start"]) => {
            count(&state, "exec_start");
            let exec_id = exec_id.to_string();
            let Some((container, cmd, created)) = state
                .lock()
                .expect("sim state")
                .execs_pending
                .remove(&exec_id)
            else {
                return Ok(error(
                    StatusCode::NOT_FOUND,
                    &format!("No such exec instance: {exec_id}"),
                ));
            };
            let (state2, latency) = (state.clone(), config.exec_latency);
            let upgrade = hyper::upgrade::on(req);
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else { return };
                let mut io = TokioIo::new(upgraded);
                let mut stdin = Vec::new();
                let _ = io.read_to_end(&mut stdin).await;
                tokio::time::sleep(latency).await;
                let (code, out) = run_script(&state2, &exec_id, &container, &cmd, &stdin, created);
                if !out.is_empty() {
                    // Docker's multiplexed stream: [stream, 0, 0, 0, len (u32 BE)] + payload.
                    let stream = if code == NOT_TMPFS || code == 2 { 2 } else { 1 };
                    let mut frame = vec![stream, 0, 0, 0];
                    frame.extend_from_slice(&(out.len() as u32).to_be_bytes());
                    frame.extend_from_slice(out.as_bytes());
                    let _ = io.write_all(&frame).await;
                }
                let _ = io.shutdown().await;
            });
            let mut r = Response::new(Full::new(Bytes::new()).boxed());
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = r.headers_mut();
            h.insert(
                "content-type",
                "application/vnd.docker.raw-stream".parse().expect("h"),
            );
            h.insert("connection", "Upgrade".parse().expect("h"));
            h.insert("upgrade", "tcp".parse().expect("h"));
            r
        }
        (&Method::GET, ["exec", exec_id, "json"]) => {
            count(&state, "exec_inspect");
            let st = state.lock().expect("sim state");
            match st.exit_codes.get(*exec_id) {
                Some(code) => json(
                    StatusCode::OK,
                    &serde_json::json!({
                        "ID": exec_id,
                        "Running": false,
                        "ExitCode": code,
                        "ProcessConfig": { "tty": false, "entrypoint": "sh", "arguments": [], "privileged": false, "user": "0" },
                        "OpenStdin": true,
                        "OpenStderr": true,
                        "OpenStdout": true,
                        "CanRemove": false,
                        "ContainerID": "",
                        "DetachKeys": "",
                        "Pid": 0,
                    }),
                ),
                None => error(
                    StatusCode::NOT_FOUND,
                    &format!("No such exec instance: {exec_id}"),
                ),
            }
        }
        _ => {
            count(&state, "unsupported");
            error(
                StatusCode::NOT_FOUND,
                &format!("dso-sim: {method} {path} is not simulated"),
            )
        }
    };
    Ok(resp)
}

fn events(
    req: &Request<Incoming>,
    state: &Arc<Mutex<State>>,
    config: &SimConfig,
) -> Response<Body> {
    let q = query(req.uri());
    let since = q.get("since").and_then(|s| parse_since(s));
    // With `until` the stream holds the history up to then and ends (as Docker does).
    let until = q.get("until").and_then(|s| parse_since(s));
    let filters: HashMap<String, Vec<String>> = q
        .get("filters")
        .and_then(|f| serde_json::from_str(f).ok())
        .unwrap_or_default();
    let type_ok = filters
        .get("type")
        .is_none_or(|t| t.iter().any(|t| t == "container"));
    let actions: Vec<String> = match filters.get("event") {
        Some(e) => e.clone(),
        None => vec!["start".into(), "die".into(), "destroy".into()],
    };
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    if type_ok {
        let mut st = state.lock().expect("sim state");
        if since.is_some() || until.is_some() {
            let (from, to) = (since.unwrap_or(0), until.unwrap_or(i64::MAX));
            for e in st
                .history
                .iter()
                .filter(|e| e.time_nano >= from && e.time_nano <= to)
            {
                if actions.iter().any(|a| a == e.action) {
                    let _ = tx.send(e.json.clone());
                }
            }
        }
        if until.is_none() {
            st.subscribers.push((tx, actions));
        }
    }
    let cut = config.cut_events_every;
    let deadline = cut.map(|c| tokio::time::Instant::now() + c);
    let stream = futures_util::stream::unfold(rx, move |mut rx| async move {
        let next = match deadline {
            Some(d) => tokio::time::timeout_at(d, rx.recv()).await.ok().flatten(),
            None => rx.recv().await,
        };
        next.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut r = Response::new(StreamBody::new(stream).boxed());
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("h"));
    r.headers_mut()
        .insert("api-version", API_VERSION.parse().expect("h"));
    r
}

/// The script's exits, from the agent's own table (they cannot drift apart).
const WRITTEN: i64 = ScriptExit::Written.code();
const UNCHANGED: i64 = ScriptExit::Unchanged.code();
const NOT_TMPFS: i64 = ScriptExit::NotTmpfs.code();

/// What the injection script would do in the container; records the exec. → (exit code, output).
fn run_script(
    state: &Mutex<State>,
    exec_id: &str,
    container: &str,
    cmd: &[String],
    stdin: &[u8],
    created: Instant,
) -> (i64, String) {
    let mut st = state.lock().expect("sim state");
    // sh -c SCRIPT dso-inject MOUNT DIR DIGEST tar|b64 (NAME MODE UID GID)*, as
    // actors/src/injector/write.sh takes them.
    let script =
        cmd.first().is_some_and(|c| c == "sh") && cmd.get(3).is_some_and(|a| a == "dso-inject");
    let (code, out, files, digest) = match (script, cmd.get(4), cmd.get(5), cmd.get(6), cmd.get(7))
    {
        (true, Some(mount), Some(dir), Some(digest), Some(transport)) => {
            let names: Vec<&String> = cmd.get(8..).unwrap_or_default().iter().step_by(4).collect();
            let digest = digest.clone();
            match st.containers.get_mut(container) {
                Some(c) if !c.running => (137, String::new(), 0, digest),
                None => (137, String::new(), 0, digest),
                // The script proves MOUNT is a tmpfs mount point and DIR lies below it.
                Some(c)
                    if !c.tmpfs.iter().any(|t| t == mount)
                        || !(dir == mount || dir.starts_with(&format!("{mount}/"))) =>
                {
                    (
                        NOT_TMPFS,
                        format!("dso: {mount} is not a tmpfs mount point; nothing written\n"),
                        0,
                        digest,
                    )
                }
                Some(c) if c.ready.get(dir.as_str()) == Some(&digest) => {
                    (UNCHANGED, String::new(), 0, digest)
                }
                Some(c) => {
                    let entries = match transport.as_str() {
                        "tar" => tar_entries(stdin),
                        // One base64 line per file, in the order of the arguments.
                        _ => names
                            .iter()
                            .zip(stdin.split(|b| *b == b'\n'))
                            .map(|(n, _)| n.to_string())
                            .collect(),
                    };
                    if entries.len() != names.len()
                        || entries.iter().zip(&names).any(|(e, n)| e != *n)
                    {
                        (
                            2,
                            format!("dso-sim: entries {entries:?} != arguments {names:?}\n"),
                            entries.len(),
                            digest,
                        )
                    } else {
                        let had = c.ready.insert(dir.clone(), digest.clone()).is_some();
                        let out = if had { "replaced\n" } else { "" };
                        (WRITTEN, out.to_string(), entries.len(), digest)
                    }
                }
            }
        }
        _ => (0, String::new(), 0, String::new()),
    };
    let latency = st
        .containers
        .get(container)
        .map(|c| c.started.elapsed())
        .unwrap_or_default();
    st.exit_codes.insert(exec_id.to_string(), code);
    st.execs.push(Exec {
        container: container.to_string(),
        digest,
        exit_code: code,
        files,
        latency,
        duration: created.elapsed(),
        at: Instant::now(),
    });
    (code, out)
}

/// The names of the entries of a ustar archive (stops at the end marker or a bad header).
fn tar_entries(tar: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    let mut off = 0;
    while off + 512 <= tar.len() {
        let h = &tar[off..off + 512];
        if h.iter().all(|b| *b == 0) {
            break;
        }
        let name_end = h[..100].iter().position(|b| *b == 0).unwrap_or(100);
        names.push(String::from_utf8_lossy(&h[..name_end]).into_owned());
        let size_field = String::from_utf8_lossy(&h[124..136]);
        let size =
            usize::from_str_radix(size_field.trim_matches(|c: char| c == '\0' || c == ' '), 8)
                .unwrap_or(0);
        off += 512 + size.div_ceil(512) * 512;
    }
    names
}
