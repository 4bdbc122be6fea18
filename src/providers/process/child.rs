//! The provider program: spawning it, its connection (pending requests, writer, reader, stderr forwarding) and its exit.

use super::*;

/// What `initialize` said the program supports.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Capabilities {
    /// It answers `version` (cheap change detection).
    pub(super) version: bool,
}

/// A pending request's answer: the `result` value, or the error it maps to.
pub(super) type Answer = Result<Value, BackendError>;

/// State shared by the requesters and the three tasks (writer, reader, waiter).
pub(super) struct Shared {
    pub(super) name: String,
    pub(super) state: Mutex<State>,
    /// Asks the waiter task to kill the process (the connection broke).
    pub(super) kill: Notify,
    /// The exit status text, once the process exited.
    pub(super) exited: watch::Sender<Option<String>>,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) pending: HashMap<u64, oneshot::Sender<Answer>>,
    /// Why the connection is unusable; set once, never cleared.
    pub(super) broken: Option<BackendError>,
}

impl Shared {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the map itself is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the connection broken (the first cause wins) and fails every in-flight request.
    pub(super) fn break_with(&self, err: BackendError) {
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
    pub(super) async fn break_after_exit(&self, fallback: String) {
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
    pub(super) fn broken_error(&self) -> BackendError {
        self.lock().broken.clone().unwrap_or_else(|| {
            BackendError::Unavailable(format!("provider process of `{}` is gone", self.name))
        })
    }

    /// Delivers an answer to the request waiting for `id` (late answers are dropped).
    pub(super) fn complete(&self, id: u64, answer: Answer) {
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
pub(super) struct PendingGuard<'a> {
    pub(super) shared: &'a Shared,
    pub(super) id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let tx = self.shared.lock().pending.remove(&self.id);
        drop(tx);
    }
}

/// One running provider program.
pub(super) struct Conn {
    pub(super) shared: Arc<Shared>,
    pub(super) out: mpsc::Sender<Vec<u8>>,
    pub(super) next_id: AtomicU64,
    pub(super) caps: Capabilities,
    /// Tells the waiter task the backend is gone (grace period, then kill).
    pub(super) stop: Option<oneshot::Sender<()>>,
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
    pub(super) async fn start(name: &str, cfg: &ProcessConfig) -> Result<Conn, BackendError> {
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
    pub(super) async fn call(&self, method: &str, params: Value, path: &str) -> Answer {
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

/// Writes request lines to the program's stdin; closes it when the backend is dropped.
pub(super) async fn writer(
    mut stdin: ChildStdin,
    mut rx: mpsc::Receiver<Vec<u8>>,
    shared: Arc<Shared>,
) {
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
pub(super) async fn reader(stdout: impl AsyncRead + Unpin, shared: Arc<Shared>, max: usize) {
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
pub(super) async fn forward_stderr(stderr: impl AsyncRead + Unpin, name: String) {
    let mut lines = LineReader::new(stderr, MAX_STDERR_LINE);
    loop {
        let (line, truncated) = match lines.next_line().await {
            Ok(Line::Full(l)) => (l, false),
            Ok(Line::TooLong(l)) => (l, true),
            Ok(Line::Eof) | Err(_) => return,
        };
        let text = String::from_utf8_lossy(&line);
        let text = wire::safe_text(text.trim_end_matches('\r'), &[], MAX_STDERR_LINE);
        if truncated {
            tracing::info!(target: STDERR_TARGET, provider = %name, "{text} [… truncated]");
        } else {
            tracing::info!(target: STDERR_TARGET, provider = %name, "{text}");
        }
    }
}

/// Owns the child: reaps it when it exits, kills it when asked or after the shutdown grace.
pub(super) async fn waiter(mut child: Child, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
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
pub(super) fn describe_status(s: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(code), _) => code.to_string(),
        (None, Some(sig)) => format!("signal {sig}{}", signal_name(sig)),
        (None, None) => s.to_string(),
    }
}

pub(super) fn signal_name(sig: i32) -> &'static str {
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
