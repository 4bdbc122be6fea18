//! External provider process (`type = "process"`): any backend, through a program that speaks
//! line-delimited JSON-RPC 2.0 on its stdin/stdout. The protocol is specified in
//! `docs/provider-protocol.md`; `examples/providers/env-provider.py` is a complete provider.
//!
//! # Lifecycle
//!
//! [`ProcessBackend::new`] only checks the configuration: the program is spawned **lazily**, by
//! the first request or probe (the ProviderConnection probes as soon as it starts, so in the agent
//! that is at start-up). Spawning runs it with a cleared environment plus `PATH` and the
//! configured `env` / `pass_env` variables, sends `initialize` and waits for its answer (within
//! `timeout`). One process serves the whole provider; requests are pipelined over its stdin
//! (a writer task), answers are matched by `id` (a reader task and a map id → oneshot), so several
//! requests are in flight at once and may be answered in any order.
//!
//! A connection that broke — the process exited, wrote something that is not a JSON-RPC answer,
//! wrote a line longer than `max_response_bytes`, or its pipes failed — stays broken: every
//! in-flight request fails at once with [`BackendError::Unavailable`] naming the cause, and so does
//! every later request. Those failures make the ProviderConnection restart after five in a row;
//! the restart drops this backend (which kills and reaps the process) and builds a new one, which
//! spawns a fresh process (within the connection's circuit breaker).
//!
//! Dropping the backend sends `shutdown`, closes the program's stdin, waits up to
//! [`SHUTDOWN_GRACE`] for it to exit, then kills it (SIGKILL) and reaps it.
//!
//! Secret values only ever travel through zeroed buffers: the line buffer of the reader is
//! [`Zeroizing`], parsed JSON is wiped with [`zeroize_json`] once the values were moved into
//! [`SecretValue`]s, and no value appears in an error or log line.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use dso_actors::backend::{BackendError, Fetched, SecretBackend};
use dso_actors::secret::{zeroize_json, SecretData, SecretValue};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, oneshot, watch, Notify, OnceCell};
use zeroize::{Zeroize, Zeroizing};

/// The protocol version DSO speaks (`initialize.params.protocol`).
pub const PROTOCOL_VERSION: u64 = 1;
/// How long a dropped backend waits for its process to exit after `shutdown` before killing it.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// JSON-RPC error code: the path does not exist ([`BackendError::NotFound`]).
pub const CODE_NOT_FOUND: i64 = -32001;
/// JSON-RPC error code: the provider's credentials were refused ([`BackendError::Denied`]).
pub const CODE_DENIED: i64 = -32002;
/// Log target of the program's stderr lines.
pub const STDERR_TARGET: &str = "dso::provider_process";
/// Default `max_response_bytes`: 1 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Largest `max_response_bytes` accepted.
const MAX_MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;
/// Longest stderr line forwarded to the logs (longer ones are truncated).
const MAX_STDERR_LINE: usize = 1024;
/// Longest error message of the program quoted in a [`BackendError`].
const MAX_ERROR_TEXT: usize = 200;
/// Requests queued for the writer task at most (then callers wait for room).
const WRITE_QUEUE: usize = 256;
/// How long a reader that saw stdout close waits for the exit status, to report it.
const EXIT_STATUS_WAIT: Duration = Duration::from_secs(2);
/// `PATH` given to the program when DSO itself has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Configuration of a `process` provider.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfig {
    /// The program to run: an absolute path to an executable file.
    pub command: PathBuf,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables given to the program (its environment is otherwise cleared, except
    /// `PATH`, which is DSO's unless set here). Values are not shown in `Debug` output.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Names of DSO's own environment variables passed through to the program (e.g. a token the
    /// provider needs, so it stays out of the config file). A name that is not set is skipped.
    #[serde(default)]
    pub pass_env: Vec<String>,
    /// Longest answer line accepted from the program, in bytes (default 1 MiB). A longer line
    /// breaks the connection.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    /// Per-request timeout, default 30s (also bounds `initialize`).
    #[serde(
        default = "crate::config::default_provider_timeout",
        with = "crate::config::duration"
    )]
    pub timeout: Duration,
    /// How often secrets in use are re-checked for changes, default `1m` (±10 % jitter).
    #[serde(
        default = "crate::config::default_refresh_interval",
        with = "crate::config::duration"
    )]
    pub refresh_interval: Duration,
    /// Most backend requests per second (token bucket; 0: unlimited). Default 100.
    #[serde(default = "crate::config::default_rate_limit")]
    pub rate_limit: f64,
    /// Requests allowed at once above the rate (bucket size). Default 50.
    #[serde(default = "crate::config::default_burst")]
    pub burst: u32,
}

impl fmt::Debug for ProcessConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessConfig")
            .field("command", &self.command)
            .field("args", &self.args)
            // Values may be credentials: names only.
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("pass_env", &self.pass_env)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("timeout", &self.timeout)
            .field("refresh_interval", &self.refresh_interval)
            .field("rate_limit", &self.rate_limit)
            .field("burst", &self.burst)
            .finish()
    }
}

fn default_max_response_bytes() -> usize {
    DEFAULT_MAX_RESPONSE_BYTES
}

/// True for a usable environment variable name (non-empty, no `=` or NUL).
fn valid_env_name(name: &str) -> bool {
    !name.trim().is_empty() && !name.contains('=') && !name.contains('\0')
}

impl ProcessConfig {
    /// Every semantic problem, each `PREFIX.field: what is wrong and what to do`.
    ///
    /// Checks: `command` is an absolute path to an existing executable file; `args`, `env` and
    /// `pass_env` hold no NUL bytes and valid variable names; `max_response_bytes` is between 1 and
    /// 256 MiB; `timeout` is not zero. Does not run the program.
    pub fn validate(&self, prefix: &str) -> Vec<String> {
        let mut errs = Vec::new();
        if let Err(e) = check_command(&self.command) {
            errs.push(format!("{prefix}.command: {e}"));
        }
        if self.args.iter().any(|a| a.contains('\0')) {
            errs.push(format!(
                "{prefix}.args: an argument contains a NUL byte, which cannot be passed to a \
                 program: remove it"
            ));
        }
        for (name, value) in &self.env {
            if !valid_env_name(name) {
                errs.push(format!(
                    "{prefix}.env: `{}` is not a valid environment variable name: use a \
                     non-empty name without `=`",
                    name.escape_debug()
                ));
            }
            if value.contains('\0') {
                errs.push(format!(
                    "{prefix}.env: the value of `{name}` contains a NUL byte: remove it"
                ));
            }
        }
        for name in &self.pass_env {
            if !valid_env_name(name) {
                errs.push(format!(
                    "{prefix}.pass_env: `{}` is not a valid environment variable name: list \
                     names like \"MY_PROVIDER_TOKEN\"",
                    name.escape_debug()
                ));
            }
        }
        if self.max_response_bytes == 0 || self.max_response_bytes > MAX_MAX_RESPONSE_BYTES {
            errs.push(format!(
                "{prefix}.max_response_bytes: must be between 1 and {MAX_MAX_RESPONSE_BYTES} \
                 (got {}): the default 1048576 (1 MiB) fits most secrets",
                self.max_response_bytes
            ));
        }
        if self.timeout.is_zero() {
            errs.push(format!(
                "{prefix}.timeout: must be more than zero: write it like \"30s\""
            ));
        }
        errs
    }
}

/// Checks that `command` is an absolute path to an executable regular file.
fn check_command(command: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let shown = command.display();
    if command.as_os_str().is_empty() {
        return Err(
            "is empty: give the absolute path of the provider program, e.g. \
             \"/usr/local/bin/my-provider\""
                .into(),
        );
    }
    if !command.is_absolute() {
        return Err(format!(
            "`{shown}` is not an absolute path: write the full path of the program, e.g. \
             \"/usr/local/bin/{shown}\" (the program's PATH is not searched)"
        ));
    }
    let meta = std::fs::metadata(command).map_err(|e| {
        format!(
            "`{shown}` cannot be used ({e}): install the provider program there or fix the path"
        )
    })?;
    if !meta.is_file() {
        return Err(format!(
            "`{shown}` is not a regular file: point it at the provider program itself"
        ));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(format!(
            "`{shown}` is not executable: `chmod +x {shown}`, or set command to its \
             interpreter (e.g. \"/usr/bin/python3\") and put the script in args"
        ));
    }
    Ok(())
}

/// A provider served by an external program. Its `Debug` output shows no environment values.
pub struct ProcessBackend {
    name: String,
    cfg: ProcessConfig,
    /// The running program, spawned by the first request or probe.
    conn: OnceCell<Result<Arc<Conn>, BackendError>>,
}

impl fmt::Debug for ProcessBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessBackend")
            .field("name", &self.name)
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl ProcessBackend {
    /// Checks the configuration of provider `name` (see [`ProcessConfig::validate`]); the program
    /// is spawned lazily, by the first request or probe. An invalid config is a
    /// [`BackendError::Config`] naming the field.
    pub fn new(name: &str, cfg: &ProcessConfig) -> Result<Self, BackendError> {
        let problems = cfg.validate(&format!("providers.{name}"));
        if !problems.is_empty() {
            return Err(BackendError::Config(problems.join("; ")));
        }
        Ok(Self {
            name: name.to_string(),
            cfg: cfg.clone(),
            conn: OnceCell::new(),
        })
    }

    /// The running connection, spawning the program and initializing it the first time. A failed
    /// start is kept: this backend stays broken until the ProviderConnection rebuilds it.
    async fn conn(&self) -> Result<Arc<Conn>, BackendError> {
        self.conn
            .get_or_init(|| async {
                match tokio::time::timeout(self.cfg.timeout, Conn::start(&self.name, &self.cfg))
                    .await
                {
                    Ok(r) => r.map(Arc::new),
                    Err(_) => Err(BackendError::Timeout(self.cfg.timeout)),
                }
            })
            .await
            .clone()
    }
}

/// What `initialize` said the program supports.
#[derive(Debug, Clone, Copy, Default)]
struct Capabilities {
    /// It answers `version` (cheap change detection).
    version: bool,
}

/// A pending request's answer: the `result` value, or the error it maps to.
type Answer = Result<Value, BackendError>;

/// State shared by the requesters and the three tasks (writer, reader, waiter).
struct Shared {
    name: String,
    state: Mutex<State>,
    /// Asks the waiter task to kill the process (the connection broke).
    kill: Notify,
    /// The exit status text, once the process exited.
    exited: watch::Sender<Option<String>>,
}

#[derive(Default)]
struct State {
    pending: HashMap<u64, oneshot::Sender<Answer>>,
    /// Why the connection is unusable; set once, never cleared.
    broken: Option<BackendError>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the map itself is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the connection broken (the first cause wins) and fails every in-flight request.
    fn break_with(&self, err: BackendError) {
        let pending = {
            let mut st = self.lock();
            if st.broken.is_none() {
                tracing::warn!(provider = %self.name, error = %err, "provider process connection broken");
                st.broken = Some(err);
            }
            std::mem::take(&mut st.pending)
        };
        let err = self.broken_error();
        for (_, tx) in pending {
            let _ = tx.send(Err(err.clone()));
        }
    }

    /// Breaks the connection with the exit status when the process exits soon, else with
    /// `fallback` (and kills it).
    async fn break_after_exit(&self, fallback: String) {
        let mut rx = self.exited.subscribe();
        let status = tokio::time::timeout(EXIT_STATUS_WAIT, rx.wait_for(Option::is_some))
            .await
            .ok()
            .and_then(|r| r.ok().and_then(|s| s.clone()));
        match status {
            Some(s) => self.break_with(BackendError::Unavailable(s)),
            None => {
                self.break_with(BackendError::Unavailable(fallback));
                self.kill.notify_one();
            }
        }
    }

    /// The error a request gets on a broken connection.
    fn broken_error(&self) -> BackendError {
        self.lock().broken.clone().unwrap_or_else(|| {
            BackendError::Unavailable(format!("provider process of `{}` is gone", self.name))
        })
    }

    /// Delivers an answer to the request waiting for `id` (late answers are dropped).
    fn complete(&self, id: u64, answer: Answer) {
        let tx = self.lock().pending.remove(&id);
        match tx {
            Some(tx) => {
                if let Err(Ok(mut v)) = tx.send(answer) {
                    zeroize_json(&mut v);
                }
            }
            None => {
                if let Ok(mut v) = answer {
                    zeroize_json(&mut v);
                }
                tracing::debug!(provider = %self.name, id, "answer for a request nobody waits for (timed out?); dropped");
            }
        }
    }
}

/// Removes a request's pending entry when its future ends or is dropped (timeout).
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let tx = self.shared.lock().pending.remove(&self.id);
        drop(tx);
    }
}

/// One running provider program.
struct Conn {
    shared: Arc<Shared>,
    out: mpsc::Sender<Vec<u8>>,
    next_id: AtomicU64,
    caps: Capabilities,
    /// Tells the waiter task the backend is gone (grace period, then kill).
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Best effort: a full queue only means the program gets EOF without `shutdown`.
        let _ = self
            .out
            .try_send(request_line(id, "shutdown", &Value::Null));
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Dropping `out` ends the writer task, which closes the program's stdin.
    }
}

impl Conn {
    /// Spawns the program, starts its tasks and runs `initialize`.
    async fn start(name: &str, cfg: &ProcessConfig) -> Result<Conn, BackendError> {
        let mut cmd = Command::new(&cfg.command);
        cmd.args(&cfg.args)
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for var in &cfg.pass_env {
            if let Some(v) = std::env::var_os(var) {
                cmd.env(var, v);
            }
        }
        cmd.envs(&cfg.env);
        let mut child = cmd.spawn().map_err(|e| {
            BackendError::Unavailable(format!(
                "cannot start provider program {}: {e}",
                cfg.command.display()
            ))
        })?;
        let pid = child.id().unwrap_or(0);
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(BackendError::Unavailable(
                "provider program started without its pipes".into(),
            ));
        };
        tracing::info!(provider = %name, pid, command = %cfg.command.display(), "provider process started");
        let (exited, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            name: name.to_string(),
            state: Mutex::new(State::default()),
            kill: Notify::new(),
            exited,
        });
        let (out, out_rx) = mpsc::channel(WRITE_QUEUE);
        let (stop, stop_rx) = oneshot::channel();
        tokio::spawn(writer(stdin, out_rx, shared.clone()));
        tokio::spawn(reader(stdout, shared.clone(), cfg.max_response_bytes));
        tokio::spawn(forward_stderr(stderr, name.to_string()));
        tokio::spawn(waiter(child, shared.clone(), stop_rx));
        let mut conn = Conn {
            shared,
            out,
            next_id: AtomicU64::new(1),
            caps: Capabilities::default(),
            stop: Some(stop),
        };
        let mut answer = conn
            .call(
                "initialize",
                json!({ "protocol": PROTOCOL_VERSION, "provider": name }),
                "",
            )
            .await?;
        let protocol = answer.get("protocol").and_then(Value::as_u64);
        let caps = answer.get("capabilities");
        conn.caps.version = caps
            .and_then(|c| c.get("version"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        zeroize_json(&mut answer);
        if protocol != Some(PROTOCOL_VERSION) {
            let err = BackendError::Unavailable(format!(
                "provider program {} answered initialize with protocol {}, DSO speaks \
                 protocol {PROTOCOL_VERSION}: use a provider program written for protocol \
                 {PROTOCOL_VERSION} (see docs/provider-protocol.md)",
                cfg.command.display(),
                protocol.map_or_else(|| "(missing)".to_string(), |p| p.to_string())
            ));
            conn.shared.break_with(err.clone());
            return Err(err);
        }
        tracing::debug!(provider = %name, version_capability = conn.caps.version, "provider process initialized");
        Ok(conn)
    }

    /// Sends one request and waits for its answer (no timeout of its own: the caller applies
    /// one; dropping the future removes the pending entry). `path` names the secret for
    /// "not found" errors.
    async fn call(&self, method: &str, params: Value, path: &str) -> Answer {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.shared.lock();
            if let Some(e) = &st.broken {
                return Err(e.clone());
            }
            st.pending.insert(id, tx);
        }
        let _guard = PendingGuard {
            shared: &self.shared,
            id,
        };
        if self
            .out
            .send(request_line(id, method, &params))
            .await
            .is_err()
        {
            return Err(self.shared.broken_error());
        }
        match rx.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(match e {
                BackendError::NotFound { .. } => BackendError::NotFound {
                    path: path.to_string(),
                },
                other => other,
            }),
            Err(_) => Err(self.shared.broken_error()),
        }
    }
}

/// `{"jsonrpc":"2.0","id":ID,"method":M[,"params":P]}\n`.
fn request_line(id: u64, method: &str, params: &Value) -> Vec<u8> {
    let req = if params.is_null() {
        json!({ "jsonrpc": "2.0", "id": id, "method": method })
    } else {
        json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params })
    };
    let mut line = req.to_string().into_bytes();
    line.push(b'\n');
    line
}

/// Writes request lines to the program's stdin; closes it when the backend is dropped.
async fn writer(mut stdin: ChildStdin, mut rx: mpsc::Receiver<Vec<u8>>, shared: Arc<Shared>) {
    while let Some(line) = rx.recv().await {
        let res = match stdin.write_all(&line).await {
            Ok(()) => stdin.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = res {
            shared
                .break_after_exit(format!(
                    "cannot write to the provider process ({e}); it is considered broken"
                ))
                .await;
            return;
        }
    }
    // Every sender is gone (the backend was dropped): EOF tells the program to exit.
    drop(stdin);
}

/// Reads answer lines from the program's stdout and hands each to its request.
async fn reader(stdout: impl AsyncRead + Unpin, shared: Arc<Shared>, max: usize) {
    let mut lines = LineReader::new(stdout, max);
    loop {
        match lines.next_line().await {
            Ok(Line::Full(line)) => match parse_answer(&line) {
                Ok(Parsed::Answer(id, answer)) => shared.complete(id, answer),
                Ok(Parsed::Skip) => {}
                Ok(Parsed::ErrorWithoutId(msg)) => {
                    tracing::warn!(provider = %shared.name, "provider process reported an error for no request (did it fail to parse one?): {msg}");
                }
                Err(msg) => {
                    shared.break_with(BackendError::Unavailable(format!(
                        "{msg}; the provider process is considered broken"
                    )));
                    shared.kill.notify_one();
                    return;
                }
            },
            Ok(Line::TooLong(_)) => {
                shared.break_with(BackendError::Unavailable(format!(
                    "provider process wrote an answer line longer than max_response_bytes \
                     ({max} bytes); it is considered broken: raise max_response_bytes if the \
                     secret is really that large"
                )));
                shared.kill.notify_one();
                return;
            }
            Ok(Line::Eof) => {
                shared
                    .break_after_exit("provider process closed its stdout".into())
                    .await;
                return;
            }
            Err(e) => {
                shared
                    .break_after_exit(format!("cannot read the provider process's stdout: {e}"))
                    .await;
                return;
            }
        }
    }
}

/// Forwards the program's stderr, line by line, to the logs (target [`STDERR_TARGET`]).
async fn forward_stderr(stderr: impl AsyncRead + Unpin, name: String) {
    let mut lines = LineReader::new(stderr, MAX_STDERR_LINE);
    loop {
        let (line, truncated) = match lines.next_line().await {
            Ok(Line::Full(l)) => (l, false),
            Ok(Line::TooLong(l)) => (l, true),
            Ok(Line::Eof) | Err(_) => return,
        };
        let text = String::from_utf8_lossy(&line);
        let text = escape_controls(text.trim_end_matches('\r'));
        let text = truncate_chars(&text, MAX_STDERR_LINE);
        if truncated {
            tracing::info!(target: STDERR_TARGET, provider = %name, "{text} [… truncated]");
        } else {
            tracing::info!(target: STDERR_TARGET, provider = %name, "{text}");
        }
    }
}

/// Owns the child: reaps it when it exits, kills it when asked or after the shutdown grace.
async fn waiter(mut child: Child, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    let mut stopping = false;
    let status = tokio::select! {
        s = child.wait() => s,
        _ = shared.kill.notified() => {
            let _ = child.start_kill();
            child.wait().await
        }
        _ = &mut stop => {
            stopping = true;
            match tokio::time::timeout(SHUTDOWN_GRACE, child.wait()).await {
                Ok(s) => s,
                Err(_) => {
                    tracing::warn!(provider = %shared.name, "provider process did not exit after shutdown; killing it");
                    let _ = child.start_kill();
                    child.wait().await
                }
            }
        }
    };
    let msg = match &status {
        Ok(s) => format!("provider process exited with status {}", describe_status(s)),
        Err(e) => format!("provider process: cannot wait for it: {e}"),
    };
    if stopping {
        tracing::debug!(provider = %shared.name, "{msg}");
    } else {
        tracing::warn!(provider = %shared.name, "{msg}");
    }
    shared.exited.send_replace(Some(msg.clone()));
    shared.break_with(BackendError::Unavailable(msg));
}

/// `3` for an exit code, `signal 9 (SIGKILL)` for a signal.
fn describe_status(s: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(code), _) => code.to_string(),
        (None, Some(sig)) => format!("signal {sig}{}", signal_name(sig)),
        (None, None) => s.to_string(),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => " (SIGKILL)",
        libc::SIGTERM => " (SIGTERM)",
        libc::SIGSEGV => " (SIGSEGV)",
        libc::SIGABRT => " (SIGABRT)",
        libc::SIGINT => " (SIGINT)",
        libc::SIGPIPE => " (SIGPIPE)",
        _ => "",
    }
}

/// One line from a [`LineReader`].
#[derive(Debug)]
enum Line {
    /// A complete line, without its `\n`.
    Full(Zeroizing<Vec<u8>>),
    /// The first `cap` bytes of a line longer than the cap (the rest is skipped).
    TooLong(Zeroizing<Vec<u8>>),
    /// End of the stream (a final unterminated line is dropped).
    Eof,
}

/// Reads `\n`-terminated lines of at most `cap` bytes. Every buffer that held bytes is zeroed
/// (no `BufReader`, whose buffer would not be).
struct LineReader<R> {
    inner: R,
    cap: usize,
    buf: Zeroizing<Vec<u8>>,
    /// Skipping the rest of a too-long line.
    skipping: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    fn new(inner: R, cap: usize) -> Self {
        Self {
            inner,
            cap,
            buf: Zeroizing::new(Vec::new()),
            skipping: false,
        }
    }

    async fn next_line(&mut self) -> std::io::Result<Line> {
        const CHUNK: usize = 16 * 1024;
        let mut scanned = 0;
        loop {
            if let Some(pos) = self.buf[scanned..].iter().position(|&b| b == b'\n') {
                let pos = scanned + pos;
                if self.skipping {
                    self.buf.drain(..=pos);
                    self.skipping = false;
                    scanned = 0;
                    continue;
                }
                if pos > self.cap {
                    let head = Zeroizing::new(self.buf[..self.cap].to_vec());
                    self.buf.drain(..=pos);
                    return Ok(Line::TooLong(head));
                }
                let line = Zeroizing::new(self.buf[..pos].to_vec());
                self.buf.drain(..=pos);
                return Ok(Line::Full(line));
            }
            scanned = self.buf.len();
            if self.skipping {
                self.buf.zeroize();
                scanned = 0;
            } else if self.buf.len() > self.cap {
                let head = Zeroizing::new(self.buf[..self.cap].to_vec());
                self.buf.zeroize();
                self.skipping = true;
                return Ok(Line::TooLong(head));
            }
            let len = self.buf.len();
            if self.buf.capacity() - len < CHUNK {
                // Grow by hand so the old buffer is zeroed rather than freed with data in it.
                let mut bigger = Zeroizing::new(Vec::with_capacity(
                    (len + CHUNK).max(self.buf.capacity() * 2),
                ));
                bigger.extend_from_slice(&self.buf);
                self.buf = bigger;
            }
            self.buf.resize(len + CHUNK, 0);
            let n = match self.inner.read(&mut self.buf[len..]).await {
                Ok(n) => n,
                Err(e) => {
                    self.buf.truncate(len);
                    return Err(e);
                }
            };
            self.buf.truncate(len + n);
            if n == 0 {
                self.buf.zeroize();
                return Ok(Line::Eof);
            }
        }
    }
}

/// What one stdout line meant.
#[derive(Debug)]
enum Parsed {
    /// The answer (result or mapped error) to request `id`.
    Answer(u64, Answer),
    /// A blank line: ignored.
    Skip,
    /// An error object with a null id (e.g. the program could not parse a request).
    ErrorWithoutId(String),
}

/// Parses one answer line. `Err` is a protocol violation (the connection is then broken); its
/// text gives a stray line's length and kind, never its bytes (it may hold a value).
fn parse_answer(line: &[u8]) -> Result<Parsed, String> {
    let trimmed = line.trim_ascii();
    if trimmed.is_empty() {
        return Ok(Parsed::Skip);
    }
    let mut v: Value = match serde_json::from_slice(trimmed) {
        Ok(v) => v,
        Err(e) if trimmed.starts_with(b"{") => {
            return Err(format!(
                "provider process wrote a line that is not valid JSON ({e}); every stdout \
                 line must be one JSON-RPC answer"
            ))
        }
        Err(_) => {
            // Never quoted: a program that prints a value by mistake must not get it logged.
            let kind = if std::str::from_utf8(trimmed).is_ok_and(|t| !t.contains(char::is_control))
            {
                "text"
            } else {
                "binary or control characters"
            };
            return Err(format!(
                "provider process wrote a line that is not JSON-RPC ({} bytes, {kind}; not shown); \
                 it must write only JSON-RPC answers to stdout (logs go to stderr)",
                trimmed.len()
            ));
        }
    };
    let parsed = classify(&mut v);
    zeroize_json(&mut v);
    parsed
}

fn classify(v: &mut Value) -> Result<Parsed, String> {
    let Some(obj) = v.as_object_mut() else {
        return Err("provider process wrote JSON that is not a JSON-RPC answer object".into());
    };
    let id = match obj.get("id") {
        Some(Value::Number(n)) => n.as_u64(),
        None | Some(Value::Null) => None,
        Some(_) => {
            return Err("provider process wrote an answer whose `id` is not a number".into())
        }
    };
    let result = obj.remove("result");
    let error = obj.remove("error");
    match (id, result, error) {
        (Some(id), Some(result), None) => Ok(Parsed::Answer(id, Ok(result))),
        (Some(id), None, Some(error)) => Ok(Parsed::Answer(id, Err(map_error(&error)))),
        (None, None, Some(error)) => Ok(Parsed::ErrorWithoutId(map_error(&error).to_string())),
        (_, mut r, _) => {
            if let Some(r) = r.as_mut() {
                zeroize_json(r);
            }
            Err(
                "provider process wrote an answer without a numeric `id` and exactly one of \
                 `result` / `error`"
                    .into(),
            )
        }
    }
}

/// Maps a JSON-RPC error object to a [`BackendError`] (see the codes in the protocol doc).
fn map_error(error: &Value) -> BackendError {
    let code = error.get("code").and_then(Value::as_i64);
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .map(|m| truncate_chars(&escape_controls(m), MAX_ERROR_TEXT))
        .unwrap_or_default();
    match code {
        // The path is filled in by the caller, which knows it.
        Some(CODE_NOT_FOUND) => BackendError::NotFound {
            path: String::new(),
        },
        Some(CODE_DENIED) => BackendError::Denied(format!("provider process: {message}")),
        Some(c) => {
            BackendError::Unavailable(format!("provider process answered error {c}: {message}"))
        }
        None => BackendError::Unavailable(format!(
            "provider process answered an error without a numeric code: {message}"
        )),
    }
}

/// `s` with control characters (terminal escapes, newlines) escaped, everything else as is.
fn escape_controls(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// At most `max` characters of `s`.
fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Turns a `resolve` result into the secret and its version; wipes what is left of it.
fn decode_resolve(path: &str, mut result: Value) -> Result<Fetched, BackendError> {
    let out = decode_resolve_inner(path, &mut result);
    zeroize_json(&mut result);
    out
}

fn decode_resolve_inner(path: &str, result: &mut Value) -> Result<Fetched, BackendError> {
    let bad = |what: &str| {
        BackendError::Unavailable(format!(
            "provider process answered resolve `{path}` with {what}; see docs/provider-protocol.md"
        ))
    };
    let Some(obj) = result.as_object_mut() else {
        return Err(bad("a result that is not an object"));
    };
    let base64 = match obj.get("encoding") {
        None | Some(Value::Null) => false,
        Some(Value::String(e)) if e == "base64" => true,
        Some(Value::String(e)) if e == "utf-8" || e == "utf8" => false,
        Some(_) => return Err(bad("an unknown `encoding` (only \"base64\" is defined)")),
    };
    let version = match obj.get("version") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => return Err(bad("a `version` that is not a string")),
    };
    let decode = |s: &mut String, key: Option<&str>| -> Result<SecretValue, BackendError> {
        let raw = std::mem::take(s).into_bytes();
        if !base64 {
            return Ok(SecretValue::new(raw));
        }
        let raw = Zeroizing::new(raw);
        B64.decode(raw.as_slice())
            .map(SecretValue::new)
            .map_err(|_| match key {
                Some(k) => bad(&format!("key `{k}` not valid base64")),
                None => bad("a value that is not valid base64"),
            })
    };
    let both = obj.contains_key("value") && obj.contains_key("values");
    let data = match (obj.get_mut("value"), both) {
        (_, true) => return Err(bad("both `value` and `values`")),
        (Some(Value::String(s)), false) => SecretData::Value(decode(s, None)?),
        (Some(_), false) => return Err(bad("a `value` that is not a string")),
        (None, false) => match obj.get_mut("values") {
            Some(Value::Object(m)) => {
                let mut map = BTreeMap::new();
                for (k, v) in m.iter_mut() {
                    let Value::String(s) = v else {
                        return Err(bad(&format!("key `{k}` whose value is not a string")));
                    };
                    map.insert(k.clone(), decode(s, Some(k))?);
                }
                SecretData::Map(map)
            }
            Some(_) => return Err(bad("`values` that is not an object of strings")),
            None => return Err(bad("neither `value` nor `values`")),
        },
    };
    Ok(Fetched { data, version })
}

#[async_trait]
impl SecretBackend for ProcessBackend {
    async fn fetch(&self, path: &str) -> Result<SecretData, BackendError> {
        Ok(self.fetch_versioned(path).await?.data)
    }

    async fn fetch_versioned(&self, path: &str) -> Result<Fetched, BackendError> {
        let conn = self.conn().await?;
        let result = conn.call("resolve", json!({ "path": path }), path).await?;
        decode_resolve(path, result)
    }

    /// The program's `version` answer; `None` without asking when `initialize` did not announce
    /// the `version` capability.
    async fn version(&self, path: &str) -> Result<Option<String>, BackendError> {
        let conn = self.conn().await?;
        if !conn.caps.version {
            return Ok(None);
        }
        let mut result = conn.call("version", json!({ "path": path }), path).await?;
        let out = match result.get("version") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(Value::Null) => Ok(None),
            _ => Err(BackendError::Unavailable(format!(
                "provider process answered version `{path}` without a `version` string or null"
            ))),
        };
        zeroize_json(&mut result);
        out
    }

    /// Spawns and initializes the program if needed; fails when its connection is broken.
    async fn probe(&self) -> Result<(), BackendError> {
        let conn = self.conn().await?;
        let broken = conn.shared.lock().broken.clone();
        match broken {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn python() -> PathBuf {
        let out = std::process::Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 is needed by these tests");
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    }

    fn cfg(command: PathBuf, args: Vec<String>) -> ProcessConfig {
        ProcessConfig {
            command,
            args,
            env: BTreeMap::new(),
            pass_env: Vec::new(),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            timeout: Duration::from_secs(20),
            refresh_interval: crate::config::default_refresh_interval(),
            rate_limit: crate::config::default_rate_limit(),
            burst: crate::config::default_burst(),
        }
    }

    /// A backend running a Python script (given as source) from a temp dir.
    fn script(src: &str) -> (ProcessBackend, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("provider.py");
        std::fs::write(&file, src).unwrap();
        let c = cfg(python(), vec![file.display().to_string()]);
        (ProcessBackend::new("t", &c).unwrap(), dir)
    }

    /// Python prelude: `send(obj)`, `requests()` yields parsed lines, `init(msg)` answers.
    const PRELUDE: &str = r#"
import json, sys, os, time
def send(obj):
    sys.stdout.write(json.dumps(obj) + "\n"); sys.stdout.flush()
def ok(rid, result):
    send({"jsonrpc": "2.0", "id": rid, "result": result})
def requests():
    for line in sys.stdin:
        req = json.loads(line)
        if req["method"] == "initialize":
            ok(req["id"], {"protocol": 1, "capabilities": {"version": True}})
            continue
        yield req
"#;

    #[test]
    fn config_defaults_unknown_fields_and_debug() {
        let c: ProcessConfig = toml::from_str(
            r#"
            command = "/bin/sh"
            env = { TOKEN = "hunter2" }
            "#,
        )
        .unwrap();
        assert_eq!(c.max_response_bytes, 1024 * 1024);
        assert_eq!(c.timeout, Duration::from_secs(30));
        assert!(c.args.is_empty() && c.pass_env.is_empty());
        assert!(c.validate("p").is_empty(), "{:?}", c.validate("p"));
        let shown = format!("{c:?}");
        assert!(
            shown.contains("TOKEN") && !shown.contains("hunter2"),
            "{shown}"
        );
        let back: ProcessConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        let err = toml::from_str::<ProcessConfig>("command = \"/bin/sh\"\ncomand = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("comand"), "{err}");
    }

    #[test]
    fn validate_names_every_problem() {
        let dir = tempfile::tempdir().unwrap();
        let not_exec = dir.path().join("plain");
        std::fs::write(&not_exec, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&not_exec, std::fs::Permissions::from_mode(0o644)).unwrap();
        for (command, needle) in [
            (PathBuf::from("my-provider"), "not an absolute path"),
            (PathBuf::from(""), "is empty"),
            (dir.path().join("missing"), "cannot be used"),
            (dir.path().to_path_buf(), "not a regular file"),
            (not_exec.clone(), "not executable"),
        ] {
            let errs = cfg(command.clone(), vec![]).validate("providers.ext");
            assert_eq!(errs.len(), 1, "{command:?}: {errs:?}");
            assert!(
                errs[0].starts_with("providers.ext.command: ") && errs[0].contains(needle),
                "{command:?}: {errs:?}"
            );
        }
        let mut c = cfg("/bin/sh".into(), vec!["a\0b".into()]);
        c.env.insert("A=B".into(), "v".into());
        c.env.insert("OK".into(), "v\0".into());
        c.pass_env.push("".into());
        c.max_response_bytes = 0;
        c.timeout = Duration::ZERO;
        let errs = c.validate("p");
        let fields: Vec<&str> = errs.iter().map(|e| e.split(':').next().unwrap()).collect();
        assert_eq!(
            fields,
            [
                "p.args",
                "p.env",
                "p.env",
                "p.pass_env",
                "p.max_response_bytes",
                "p.timeout"
            ],
            "{errs:#?}"
        );
        let err = ProcessBackend::new("ext", &cfg("rel".into(), vec![])).unwrap_err();
        assert!(
            matches!(&err, BackendError::Config(m) if m.contains("providers.ext.command")),
            "{err}"
        );
    }

    #[test]
    fn answers_are_parsed_and_garbage_is_quoted_briefly() {
        let Parsed::Answer(7, Ok(v)) =
            parse_answer(br#"{"jsonrpc":"2.0","id":7,"result":{"value":"x"}}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(v, json!({"value": "x"}));
        assert!(matches!(parse_answer(b"  \r"), Ok(Parsed::Skip)));
        for (code, want) in [
            (-32001, "not_found"),
            (-32002, "denied"),
            (-32000, "unavailable"),
        ] {
            let line =
                format!(r#"{{"jsonrpc":"2.0","id":1,"error":{{"code":{code},"message":"m"}}}}"#);
            let Ok(Parsed::Answer(1, Err(e))) = parse_answer(line.as_bytes()) else {
                panic!("{line}")
            };
            assert_eq!(e.metric_label(), want);
        }
        let Ok(Parsed::Answer(2, Err(e))) = parse_answer(
            br#"{"jsonrpc":"2.0","id":2,"error":{"code":-1,"message":"it's \u001b[31mred\nline"}}"#,
        ) else {
            panic!()
        };
        assert_eq!(
            e.to_string(),
            r"backend unavailable: provider process answered error -1: it's \u{1b}[31mred\nline"
        );
        assert!(matches!(
            parse_answer(
                br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse"}}"#
            ),
            Ok(Parsed::ErrorWithoutId(_))
        ));
        let long = format!("hello \x1b[31m{}", "z".repeat(500));
        let err = parse_answer(long.as_bytes()).unwrap_err();
        assert!(
            err.contains("511 bytes, binary or control characters"),
            "{err}"
        );
        assert!(!err.contains("hello") && !err.contains("zz"), "{err}");
        let err = parse_answer(b"password=hunter2").unwrap_err();
        assert!(
            err.contains("16 bytes, text") && !err.contains("hunter2"),
            "{err}"
        );
        // A broken JSON line may hold a value: never quoted.
        let err = parse_answer(br#"{"id":1,"result":{"value":"s3cr"#).unwrap_err();
        assert!(
            err.contains("not valid JSON") && !err.contains("s3cr"),
            "{err}"
        );
        for bad in [&br#"[1]"#[..], br#"{"id":"1","result":{}}"#, br#"{"id":1}"#] {
            assert!(
                parse_answer(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn resolve_results_are_decoded() {
        let f = decode_resolve("p", json!({"value": "plain", "version": "v1"})).unwrap();
        assert_eq!(f.version.as_deref(), Some("v1"));
        assert_eq!(f.data.select(None).unwrap().expose(), b"plain");
        let f = decode_resolve(
            "p",
            json!({"values": {"a": "AAEC", "b": "aGk="}, "encoding": "base64", "version": 3}),
        )
        .unwrap();
        assert_eq!(f.version.as_deref(), Some("3"));
        assert_eq!(f.data.select(Some("a")).unwrap().expose(), [0u8, 1, 2]);
        assert_eq!(f.data.select(Some("b")).unwrap().expose(), b"hi");
        for bad in [
            json!({"value": "%%%", "encoding": "base64"}),
            json!({"value": 5}),
            json!({"values": {"a": 1}}),
            json!({"value": "a", "values": {}}),
            json!({}),
            json!("str"),
            json!({"value": "a", "encoding": "rot13"}),
        ] {
            let err = decode_resolve("app/x", bad.clone()).unwrap_err();
            assert!(
                matches!(&err, BackendError::Unavailable(m) if m.contains("`app/x`") && !m.contains("%%%")),
                "{bad}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn line_reader_caps_lines_and_skips_the_rest() {
        let input: &[u8] = b"short\nthis line is too long\nok\npartial";
        let mut r = LineReader::new(input, 8);
        assert!(matches!(r.next_line().await.unwrap(), Line::Full(l) if l.as_slice() == b"short"));
        assert!(
            matches!(r.next_line().await.unwrap(), Line::TooLong(l) if l.as_slice() == b"this lin")
        );
        assert!(matches!(r.next_line().await.unwrap(), Line::Full(l) if l.as_slice() == b"ok"));
        assert!(matches!(r.next_line().await.unwrap(), Line::Eof));
        // A long line arriving in many reads, longer than the read chunk.
        let mut big = vec![b'x'; 100_000];
        big.extend_from_slice(b"\nafter\n");
        let mut r = LineReader::new(&big[..], 50_000);
        assert!(matches!(r.next_line().await.unwrap(), Line::TooLong(l) if l.len() == 50_000));
        assert!(matches!(r.next_line().await.unwrap(), Line::Full(l) if l.as_slice() == b"after"));
        let mut r = LineReader::new(&big[..], 200_000);
        assert!(matches!(r.next_line().await.unwrap(), Line::Full(l) if l.len() == 100_000));
    }

    #[tokio::test]
    async fn pipelined_requests_are_matched_by_id_out_of_order() {
        // Holds requests until three arrived, then answers them in reverse order.
        let (b, _d) = script(&format!(
            "{PRELUDE}
held = []
for req in requests():
    held.append(req)
    if len(held) == 3:
        for r in reversed(held):
            ok(r['id'], {{'value': 'v-' + r['params']['path'], 'version': 'ver-' + r['params']['path']}})
        held = []
"
        ));
        let (a, bb, c) = tokio::join!(b.fetch_versioned("a"), b.fetch("b"), b.fetch("c"));
        let a = a.unwrap();
        assert_eq!(a.data.select(None).unwrap().expose(), b"v-a");
        assert_eq!(a.version.as_deref(), Some("ver-a"));
        assert_eq!(bb.unwrap().select(None).unwrap().expose(), b"v-b");
        assert_eq!(c.unwrap().select(None).unwrap().expose(), b"v-c");
        assert!(b.conn().await.unwrap().shared.lock().pending.is_empty());
    }

    #[tokio::test]
    async fn a_line_over_the_cap_breaks_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.py");
        std::fs::write(
            &file,
            format!(
                "{PRELUDE}
for req in requests():
    ok(req['id'], {{'value': 'x' * int(req['params']['path'])}})
"
            ),
        )
        .unwrap();
        let mut c = cfg(python(), vec![file.display().to_string()]);
        c.max_response_bytes = 4096;
        let b = ProcessBackend::new("t", &c).unwrap();
        assert_eq!(
            b.fetch("100").await.unwrap().select(None).unwrap().len(),
            100
        );
        let err = b.fetch("5000").await.unwrap_err();
        assert!(
            matches!(&err, BackendError::Unavailable(m) if m.contains("max_response_bytes")),
            "{err}"
        );
        // Broken for good: the next request fails at once, with the same cause.
        assert_eq!(b.fetch("1").await.unwrap_err(), err);
        assert_eq!(b.probe().await.unwrap_err(), err);
    }

    #[tokio::test]
    async fn a_crash_fails_every_request_in_flight_with_the_exit_status() {
        let (b, _d) = script(&format!(
            "{PRELUDE}
n = 0
for req in requests():
    n += 1
    if n == 3:
        sys.exit(7)
"
        ));
        let (x, y, z) = tokio::join!(b.fetch("a"), b.fetch("b"), b.fetch("c"));
        for r in [x, y, z] {
            let err = r.unwrap_err();
            assert_eq!(
                err,
                BackendError::Unavailable("provider process exited with status 7".into())
            );
        }
        assert!(b.version("a").await.is_err());
    }

    #[tokio::test]
    async fn errors_map_and_a_timed_out_request_leaves_no_entry() {
        let (b, _d) = script(&format!(
            "{PRELUDE}
for req in requests():
    p = req['params']['path']
    if p == 'missing':
        send({{'jsonrpc': '2.0', 'id': req['id'], 'error': {{'code': -32001, 'message': 'no such secret'}}}})
    elif p == 'denied':
        send({{'jsonrpc': '2.0', 'id': req['id'], 'error': {{'code': -32002, 'message': 'bad token'}}}})
    elif p == 'hang':
        pass
    else:
        ok(req['id'], {{'version': None}} if req['method'] == 'version' else {{'values': {{'k': 'v'}}}})
"
        ));
        assert_eq!(
            b.fetch("missing").await.unwrap_err(),
            BackendError::NotFound {
                path: "missing".into()
            }
        );
        assert_eq!(
            b.fetch("denied").await.unwrap_err(),
            BackendError::Denied("provider process: bad token".into())
        );
        let r = tokio::time::timeout(Duration::from_millis(200), b.fetch("hang")).await;
        assert!(r.is_err(), "the hang request must not answer");
        assert!(b.conn().await.unwrap().shared.lock().pending.is_empty());
        // The connection still works.
        let data = b.fetch("ok").await.unwrap();
        assert_eq!(data.select(Some("k")).unwrap().expose(), b"v");
        assert_eq!(b.version("ok").await.unwrap(), None);
    }

    #[tokio::test]
    async fn drop_sends_shutdown_then_kills_and_reaps() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let marker = dir.path().join("got-shutdown");
        let (b, _d) = script(&format!(
            "{PRELUDE}
open({pid:?}, 'w').write(str(os.getpid()))
for req in requests():
    if req['method'] == 'shutdown':
        open({marker:?}, 'w').write('yes')
        time.sleep(3600)  # ignores it: must be killed after the grace period
    ok(req['id'], {{'value': 'x'}})
",
            pid = pidfile.display().to_string(),
            marker = marker.display().to_string(),
        ));
        b.probe().await.unwrap();
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().parse().unwrap();
        drop(b);
        // Generous wait: the grace period is 3 s.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            // SAFETY: kill(pid, 0) only checks for existence.
            let alive = unsafe { libc::kill(pid, 0) } == 0;
            if !alive {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "provider process {pid} survived drop"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(marker.exists(), "shutdown was not sent");
    }
}
