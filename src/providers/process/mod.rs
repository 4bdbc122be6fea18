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

use super::wire;

mod child;
mod config;
mod rpc;
use child::*;
pub use config::*;
use rpc::*;

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
/// Most bytes of a garbage stdout line quoted (escaped) in an error.
const GARBAGE_QUOTE: usize = 60;
/// Longest error message of the program quoted in a [`BackendError`].
const MAX_ERROR_TEXT: usize = 200;
/// Requests queued for the writer task at most (then callers wait for room).
const WRITE_QUEUE: usize = 256;
/// How long a reader that saw stdout close waits for the exit status, to report it.
const EXIT_STATUS_WAIT: Duration = Duration::from_secs(2);
/// `PATH` given to the program when DSO itself has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A provider served by an external program. Its `Debug` output shows no environment values.
pub struct ProcessBackend {
    name: String,
    cfg: ProcessConfig,
    /// Longest wait for the program to start and answer `initialize`, and for each request.
    timeout: Duration,
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
    pub fn new(name: &str, cfg: &ProcessConfig, timeout: Duration) -> Result<Self, BackendError> {
        let problems = cfg.validate(&format!("providers.{name}"));
        if !problems.is_empty() {
            return Err(BackendError::Config(problems.join("; ")));
        }
        Ok(Self {
            name: name.to_string(),
            cfg: cfg.clone(),
            timeout,
            conn: OnceCell::new(),
        })
    }

    /// The running connection, spawning the program and initializing it the first time. A failed
    /// start is kept: this backend stays broken until the ProviderConnection rebuilds it.
    async fn conn(&self) -> Result<Arc<Conn>, BackendError> {
        self.conn
            .get_or_init(|| async {
                match tokio::time::timeout(self.timeout, Conn::start(&self.name, &self.cfg)).await {
                    Ok(r) => r.map(Arc::new),
                    Err(_) => Err(BackendError::Timeout(self.timeout)),
                }
            })
            .await
            .clone()
    }
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
mod tests;
