//! Recording fakes of [`ContainerEngine`] and [`SecretBackend`] for unit tests (feature `fake`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::backend::{BackendError, SecretBackend};
use crate::direct::{DirectError, DirectTarget, DirectWriter, FallbackReason, Written};
use crate::engine::{ContainerEngine, EngineError, EventStream};
use crate::model::{
    ContainerInfo, ContainerSummary, EngineEvent, ExecOutput, RollOutcome, SecretFile, SwarmTask,
};
use crate::secret::{SecretData, SecretValue};

/// One recorded engine call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineCall {
    /// `inspect(id)`.
    Inspect(String),
    /// `list_running()`.
    List,
    /// `exec(id, cmd, stdin)`.
    Exec {
        /// Container.
        id: String,
        /// argv.
        cmd: Vec<String>,
        /// stdin bytes (the tar).
        stdin: Vec<u8>,
    },
    /// `events(since)`.
    Events,
    /// `signal(id, sig)`.
    Signal(String, String),
    /// `restart(id)`.
    Restart(String),
    /// `roll_service(service, change, roll)`, whatever it answered.
    Roll(String, String, bool),
}

/// A fake engine: containers are whatever the test put in; every call is recorded.
#[derive(Default)]
pub struct FakeEngine {
    /// Containers by id.
    pub containers: Mutex<HashMap<String, ContainerInfo>>,
    /// Calls, in order.
    pub calls: Mutex<Vec<EngineCall>>,
    /// Exit code exec returns.
    pub exec_exit: Mutex<i64>,
    /// How long each exec takes.
    pub exec_delay: Mutex<Duration>,
    /// How long each restart call takes.
    pub restart_delay: Mutex<Duration>,
    /// Sender side of the event stream, once `events` was called.
    pub events_tx: Mutex<Option<mpsc::UnboundedSender<Result<EngineEvent, EngineError>>>>,
    /// When true, `ping` and `events` fail.
    pub down: Mutex<bool>,
    /// What exec prints (e.g. "replaced").
    pub exec_output: Mutex<String>,
    /// Execs running now, and the most seen at once.
    pub execs_in_flight: AtomicUsize,
    /// The most execs seen running at once.
    pub execs_max_in_flight: AtomicUsize,
    /// When true, `roll_service` answers [`RollOutcome::NotManager`] (a worker node's engine).
    pub worker: Mutex<bool>,
    /// The `dso.rolled` label per service, as `roll_service` left it.
    pub rolled: Mutex<HashMap<String, String>>,
    /// Rolls that really updated a service: (service, change).
    pub rolls_done: Mutex<Vec<(String, String)>>,
    /// Containers whose claim to be a Swarm task `roll_service` refuses (forged labels).
    pub forged_tasks: Mutex<Vec<String>>,
}

impl FakeEngine {
    /// A fake with no containers.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Adds a running container.
    pub fn add(&self, info: ContainerInfo) {
        if let Ok(mut c) = self.containers.lock() {
            c.insert(info.id.clone(), info);
        }
    }

    /// Recorded calls.
    pub fn calls(&self) -> Vec<EngineCall> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Recorded execs.
    pub fn execs(&self) -> Vec<(String, Vec<String>, Vec<u8>)> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                EngineCall::Exec { id, cmd, stdin } => Some((id, cmd, stdin)),
                _ => None,
            })
            .collect()
    }

    /// Rolls that updated a service (not the no-ops): (service, change).
    pub fn rolls(&self) -> Vec<(String, String)> {
        self.rolls_done
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Pushes an event into the stream (if subscribed).
    pub fn emit(&self, ev: EngineEvent) -> bool {
        self.events_tx
            .lock()
            .ok()
            .and_then(|tx| tx.as_ref().map(|tx| tx.send(Ok(ev)).is_ok()))
            .unwrap_or(false)
    }

    fn record(&self, c: EngineCall) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(c);
        }
    }
}

#[async_trait]
impl ContainerEngine for FakeEngine {
    async fn inspect(&self, id: &str) -> Result<ContainerInfo, EngineError> {
        self.record(EngineCall::Inspect(id.to_string()));
        self.containers
            .lock()
            .ok()
            .and_then(|c| c.get(id).cloned())
            .ok_or_else(|| EngineError::NotFound(id.to_string()))
    }

    async fn list_running(&self) -> Result<Vec<ContainerSummary>, EngineError> {
        self.record(EngineCall::List);
        let c = self
            .containers
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default();
        let mut v: Vec<_> = c
            .values()
            .filter(|i| i.running)
            .map(|i| ContainerSummary {
                id: i.id.clone(),
                labels: i.labels.clone(),
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(v)
    }

    async fn exec(
        &self,
        id: &str,
        cmd: &[String],
        stdin: &[u8],
    ) -> Result<ExecOutput, EngineError> {
        self.record(EngineCall::Exec {
            id: id.to_string(),
            cmd: cmd.to_vec(),
            stdin: stdin.to_vec(),
        });
        let now = self.execs_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.execs_max_in_flight.fetch_max(now, Ordering::SeqCst);
        let delay = self.exec_delay.lock().map(|d| *d).unwrap_or_default();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.execs_in_flight.fetch_sub(1, Ordering::SeqCst);
        let output = self
            .exec_output
            .lock()
            .map(|o| o.clone())
            .unwrap_or_default();
        Ok(ExecOutput {
            exit_code: Some(self.exec_exit.lock().map(|e| *e).unwrap_or(0)),
            output_len: output.len(),
            output,
        })
    }

    async fn events(&self, _since: Option<SystemTime>) -> Result<EventStream, EngineError> {
        self.record(EngineCall::Events);
        if self.down.lock().map(|d| *d).unwrap_or(false) {
            return Err(EngineError::Engine("fake engine down".into()));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut slot) = self.events_tx.lock() {
            *slot = Some(tx);
        }
        Ok(Box::pin(futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|item| (item, rx)) },
        )))
    }

    async fn ping(&self) -> Result<(), EngineError> {
        if self.down.lock().map(|d| *d).unwrap_or(false) {
            return Err(EngineError::Engine("fake engine down".into()));
        }
        Ok(())
    }

    async fn signal(&self, id: &str, signal: &str) -> Result<(), EngineError> {
        self.record(EngineCall::Signal(id.to_string(), signal.to_string()));
        Ok(())
    }

    async fn restart(&self, id: &str) -> Result<(), EngineError> {
        self.record(EngineCall::Restart(id.to_string()));
        let delay = self.restart_delay.lock().map(|d| *d).unwrap_or_default();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok(())
    }

    async fn roll_service(
        &self,
        task: &SwarmTask,
        change: &str,
        roll: bool,
    ) -> Result<RollOutcome, EngineError> {
        let service = task.service.as_str();
        self.record(EngineCall::Roll(
            service.to_string(),
            change.to_string(),
            roll,
        ));
        if self.worker.lock().map(|w| *w).unwrap_or(false) {
            return Ok(RollOutcome::NotManager);
        }
        if self
            .forged_tasks
            .lock()
            .map(|f| f.contains(&task.container))
            .unwrap_or(false)
        {
            return Err(EngineError::Engine(format!(
                "container {} is not a task of service {service}",
                task.container
            )));
        }
        let mut rolled = self
            .rolled
            .lock()
            .map_err(|_| EngineError::Engine("fake engine poisoned".into()))?;
        // As the real adapter: a mark labels only a service without a label; a roll is a no-op
        // only for the change the label names.
        if !roll {
            if rolled.contains_key(service) {
                return Ok(RollOutcome::AlreadyRolled);
            }
            rolled.insert(service.to_string(), change.to_string());
            return Ok(RollOutcome::Marked);
        }
        if rolled.get(service).map(String::as_str) == Some(change) {
            return Ok(RollOutcome::AlreadyRolled);
        }
        rolled.insert(service.to_string(), change.to_string());
        if let Ok(mut done) = self.rolls_done.lock() {
            done.push((service.to_string(), change.to_string()));
        }
        Ok(RollOutcome::Rolled)
    }
}

/// What [`FakeDirectWriter`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeDirect {
    /// Acts like a real directory: `Unchanged` when the last digest written to this container
    /// is the same, else `New` (replaced when something was written before).
    Write,
    /// Every write falls back to exec for this reason.
    Fallback(FallbackReason),
    /// The directory is not a tmpfs.
    NotTmpfs,
    /// The process exited.
    Gone,
    /// An I/O failure.
    Fail,
}

/// One recorded direct write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectCall {
    /// Container id.
    pub id: String,
    /// Pid given.
    pub pid: u32,
    /// Directory.
    pub dir: String,
    /// Digest.
    pub digest: String,
    /// File names, in order.
    pub names: Vec<String>,
}

/// A recording fake of the direct write path.
#[derive(Debug)]
pub struct FakeDirectWriter {
    /// How it answers.
    pub respond: Mutex<FakeDirect>,
    /// Calls, in order.
    pub calls: Mutex<Vec<DirectCall>>,
    /// Digest last written, per container.
    pub held: Mutex<HashMap<String, String>>,
}

impl FakeDirectWriter {
    /// A writer answering `respond`.
    pub fn new(respond: FakeDirect) -> Arc<Self> {
        Arc::new(Self {
            respond: Mutex::new(respond),
            calls: Mutex::new(Vec::new()),
            held: Mutex::new(HashMap::new()),
        })
    }

    /// Recorded calls.
    pub fn calls(&self) -> Vec<DirectCall> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl DirectWriter for FakeDirectWriter {
    fn write(
        &self,
        target: &DirectTarget<'_>,
        digest: &str,
        files: &[(&SecretFile, &SecretValue)],
    ) -> Result<Written, DirectError> {
        if let Ok(mut c) = self.calls.lock() {
            c.push(DirectCall {
                id: target.container_id.to_string(),
                pid: target.pid,
                dir: target.dir.to_string(),
                digest: digest.to_string(),
                names: files.iter().map(|(f, _)| f.name.clone()).collect(),
            });
        }
        let respond = self.respond.lock().map(|r| *r).unwrap_or(FakeDirect::Fail);
        match respond {
            FakeDirect::Write => {
                let prev = self.held.lock().ok().and_then(|mut h| {
                    h.insert(target.container_id.to_string(), digest.to_string())
                });
                Ok(match prev {
                    Some(p) if p == digest => Written::Unchanged,
                    Some(_) => Written::New { replaced: true },
                    None => Written::New { replaced: false },
                })
            }
            FakeDirect::Fallback(reason) => Err(DirectError::Fallback {
                reason,
                detail: "fake".to_string(),
            }),
            FakeDirect::NotTmpfs => Err(DirectError::NotTmpfs {
                dir: target.dir.to_string(),
                reason: "it is on overlay".to_string(),
            }),
            FakeDirect::Gone => Err(DirectError::Gone {
                pid: target.pid,
                when: "during the write",
            }),
            FakeDirect::Fail => Err(DirectError::Io {
                step: "writing",
                name: "x".to_string(),
                dir: target.dir.to_string(),
                source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            }),
        }
    }
}

/// A fake backend: a map of paths, a fetch counter, optional failure and delay.
#[derive(Default)]
pub struct FakeBackend {
    /// Data by path.
    pub data: Mutex<HashMap<String, SecretData>>,
    /// Fetches made.
    pub fetches: AtomicUsize,
    /// When set, every fetch fails with this.
    pub fail_with: Mutex<Option<BackendError>>,
    /// How long each fetch takes.
    pub delay: Mutex<Duration>,
    /// When true, the backend has versions (bumped by every `put`), like KV v2.
    pub versioned: std::sync::atomic::AtomicBool,
    /// Version reads made.
    pub version_reads: AtomicUsize,
    /// Version of each path.
    pub versions: Mutex<HashMap<String, u64>>,
}

impl FakeBackend {
    /// An empty backend.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Stores `data` at `path`.
    pub fn put(&self, path: &str, data: SecretData) {
        if let Ok(mut d) = self.data.lock() {
            d.insert(path.to_string(), data);
        }
        if let Ok(mut v) = self.versions.lock() {
            *v.entry(path.to_string()).or_insert(0) += 1;
        }
    }

    /// Version reads so far.
    pub fn version_count(&self) -> usize {
        self.version_reads.load(Ordering::SeqCst)
    }

    fn current_version(&self, path: &str) -> Option<String> {
        if !self.versioned.load(Ordering::SeqCst) {
            return None;
        }
        self.versions
            .lock()
            .ok()
            .and_then(|v| v.get(path).map(|n| n.to_string()))
    }

    /// Number of fetches so far.
    pub fn fetch_count(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl SecretBackend for FakeBackend {
    async fn fetch(&self, path: &str) -> Result<SecretData, BackendError> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        let delay = self.delay.lock().map(|d| *d).unwrap_or_default();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if let Some(e) = self.fail_with.lock().ok().and_then(|f| f.clone()) {
            return Err(e);
        }
        self.data
            .lock()
            .ok()
            .and_then(|d| d.get(path).cloned())
            .ok_or_else(|| BackendError::NotFound {
                path: path.to_string(),
            })
    }

    async fn fetch_versioned(&self, path: &str) -> Result<crate::backend::Fetched, BackendError> {
        let data = self.fetch(path).await?;
        Ok(crate::backend::Fetched {
            data,
            version: self.current_version(path),
        })
    }

    async fn version(&self, path: &str) -> Result<Option<String>, BackendError> {
        self.version_reads.fetch_add(1, Ordering::SeqCst);
        if let Some(e) = self.fail_with.lock().ok().and_then(|f| f.clone()) {
            return Err(e);
        }
        Ok(self.current_version(path))
    }
}
