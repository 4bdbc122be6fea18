//! Injector: one shard of the injection pool.
//!
//! A container id always hashes to the same shard ([`shard_for`]), so its jobs are handled in
//! order by one actor. Per container there is at most one job in flight and one queued: a newer
//! job replaces the queued one. A shard runs up to `concurrency` containers at once; jobs beyond
//! that wait in a queue of `queue_capacity`; when that is full the job is dropped, counted in
//! `dso_events_dropped_total{reason="queue_full"}` and a reconcile is requested, so nothing is lost
//! for good.
//!
//! The rooms:
//! - `queue`: [`ShardRouter`], [`shard_for`] and the per-container queue (submit, pump, after).
//! - `pipeline`: one job as small async steps — inspect, spec, fetch, digest, write, reload.
//! - `direct` and `exec`: the two write paths (`/proc/<pid>/root`; one `docker exec` of the
//!   in-container script, whose exit codes are [`exec::ScriptExit`]).
//! - `reload`: the one place a reload policy is executed.
//! - `ledger`: what a finished job changes in the shard (status, managed set, audit, retries).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::cache::Cache;
use crate::direct::DirectWriter;
use crate::engine::ContainerEngine;
use crate::messages::{
    AuditRecord, ContainerJob, ContainerStatus, Drain, FileStatus, GetShardStatus, Prune,
    Reconcile, SecretChanged,
};
use crate::metrics::Metrics;
use crate::spec::{SecretRule, Target};

mod direct;
pub mod exec;
mod ledger;
mod pipeline;
mod queue;
mod reload;

pub use queue::{shard_for, ShardRouter};
use reload::Reloaded;

/// Injector settings.
#[derive(Debug, Clone)]
pub struct InjectorSettings {
    /// Containers injected at once by one shard.
    pub concurrency: usize,
    /// Jobs that may wait in one shard.
    pub queue_capacity: usize,
    /// `[[secrets]]` rules from the config.
    pub rules: Arc<Vec<SecretRule>>,
    /// Only containers matching this are managed (None: all).
    pub scope: Option<Target>,
    /// `[[access]]` rules: a container that asks for a reference no rule allows is refused whole.
    pub access: Arc<crate::access::AccessRules>,
    /// Per-host key of the content digests written to `.ready`.
    pub digest_key: Arc<zeroize::Zeroizing<Vec<u8>>>,
    /// Rotations arriving within this window are applied together.
    pub rotation_debounce: Duration,
    /// Rotations one shard runs at once (the agent-wide bound divided among the shards).
    pub rotation_concurrency: usize,
    /// Where deliveries, rotations and refusals are recorded (None: nowhere).
    pub audit: Option<Recipient<AuditRecord>>,
    /// Who applies the `restart` policy (one container of a Compose service at a time; a Swarm
    /// service rolled once per change).
    pub restarter: Option<Addr<crate::restarter::Restarter>>,
    /// The direct write path (`agent.write_mode = "auto"`); None: every write is an exec.
    pub direct: Option<Arc<dyn DirectWriter>>,
    /// The agent-wide exec budget (`agent.exec_concurrency`), shared by every shard: a job holds
    /// its injector slot for inspect, fetch and write, and a permit only around its exec, so
    /// many containers can be worked on while the engine runs a bounded number of execs. None:
    /// execs bounded by the slots alone.
    pub exec_permits: Option<Arc<tokio::sync::Semaphore>>,
}

/// Files delivered by one job (the successful end of the pipeline).
#[derive(Debug)]
struct Delivered {
    /// `State.StartedAt` at injection time.
    started_at: Option<String>,
    /// Names of the files.
    names: Vec<String>,
    /// Digest of the content now in the container.
    digest: String,
    /// False when the container already held exactly this content (nothing was replaced).
    changed: bool,
    /// True when an earlier set of values was replaced (not a first injection).
    replaced: bool,
    /// (provider, path) keys the files come from.
    keys: Vec<(String, String)>,
    /// Files and their sources, for status.
    files: Vec<FileStatus>,
    /// What the reload policy did, if it ran.
    reload: Option<Reloaded>,
}

/// How one job ended.
#[derive(Debug)]
enum Outcome {
    /// Files are in place (boxed: the other outcomes are small, and travel in `Result`s).
    Injected(Box<Delivered>),
    /// Same container start already injected; nothing to do.
    AlreadyInjected,
    /// The container asks for nothing (or is out of scope).
    NotManaged,
    /// A `die`/`destroy` event: forget the container (not an injection attempt, not counted).
    Stopped,
    /// The container stopped or vanished.
    Gone,
    /// Refused before anything was written; the message says why.
    Refused {
        /// Metric label.
        result: &'static str,
        /// Human explanation (never a value).
        message: String,
    },
}

impl Outcome {
    fn metric(&self) -> Option<&'static str> {
        match self {
            Outcome::Injected(d) if d.changed => Some("success"),
            Outcome::Injected(_) => Some("unchanged"),
            Outcome::AlreadyInjected => Some("duplicate"),
            Outcome::NotManaged | Outcome::Stopped => None,
            Outcome::Gone => Some("container_gone"),
            Outcome::Refused { result, .. } => Some(result),
        }
    }
}

/// A write's result: (content changed, an earlier set was replaced), or the job's outcome.
/// Defined here, beside [`Outcome`], so the write paths (`direct`, `exec`) and the `pipeline`
/// that calls them share it without importing each other.
type WriteResult = Result<(bool, bool), Outcome>;

fn refused(result: &'static str, message: String) -> Outcome {
    Outcome::Refused { result, message }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

struct Managed {
    started_at: Option<String>,
    digest: String,
    keys: Vec<(String, String)>,
}

/// The actor.
pub struct Injector {
    shard: usize,
    engine: Arc<dyn ContainerEngine>,
    cache: Addr<Cache>,
    reconciler: Option<Recipient<Reconcile>>,
    settings: InjectorSettings,
    metrics: Arc<Metrics>,
    mailbox: usize,
    running: HashSet<String>,
    rotations_running: usize,
    pending: HashMap<String, ContainerJob>,
    queue: VecDeque<String>,
    managed: HashMap<String, Managed>,
    draining: bool,
    drain_waiters: Vec<oneshot::Sender<()>>,
    rotating: HashSet<String>,
    rotation_flush_scheduled: bool,
    retries: HashMap<String, u32>,
    status: HashMap<String, ContainerStatus>,
}

impl Injector {
    /// Shard number `shard`.
    pub fn new(
        shard: usize,
        engine: Arc<dyn ContainerEngine>,
        cache: Addr<Cache>,
        reconciler: Option<Recipient<Reconcile>>,
        settings: InjectorSettings,
        metrics: Arc<Metrics>,
        mailbox: usize,
    ) -> Self {
        Self {
            shard,
            engine,
            cache,
            reconciler,
            settings,
            metrics,
            mailbox,
            running: HashSet::new(),
            rotations_running: 0,
            pending: HashMap::new(),
            queue: VecDeque::new(),
            managed: HashMap::new(),
            draining: false,
            drain_waiters: Vec::new(),
            rotating: HashSet::new(),
            rotation_flush_scheduled: false,
            retries: HashMap::new(),
            status: HashMap::new(),
        }
    }
}

impl Actor for Injector {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // `agent.queue_capacity`: the watcher `try_send`s (full: dropped, counted, reconcile),
        // the reconciler `send`s (waits for room).
        ctx.set_mailbox_capacity(self.mailbox);
    }
}

impl Handler<ContainerJob> for Injector {
    type Result = ();

    fn handle(&mut self, job: ContainerJob, ctx: &mut Self::Context) {
        if self.draining {
            return;
        }
        self.submit(job, ctx);
    }
}

impl Handler<Prune> for Injector {
    type Result = ();

    fn handle(&mut self, msg: Prune, _ctx: &mut Self::Context) {
        let gone: Vec<String> = self
            .status
            .keys()
            .chain(self.managed.keys())
            .filter(|id| !msg.running.contains(*id) && !self.running.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.status.remove(&id);
            self.forget(&id);
        }
    }
}

impl Handler<GetShardStatus> for Injector {
    type Result = MessageResult<GetShardStatus>;

    fn handle(&mut self, _msg: GetShardStatus, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.status.values().cloned().collect())
    }
}

impl Handler<SecretChanged> for Injector {
    type Result = ();

    fn handle(&mut self, msg: SecretChanged, ctx: &mut Self::Context) {
        let key = (msg.provider, msg.path);
        for (id, m) in &self.managed {
            if m.keys.contains(&key) {
                self.rotating.insert(id.clone());
            }
        }
        // Debounce: changes within the window are applied together, one job per container.
        if !self.rotating.is_empty() && !self.rotation_flush_scheduled {
            self.rotation_flush_scheduled = true;
            ctx.run_later(self.settings.rotation_debounce, |act, ctx| {
                act.flush_rotations(ctx)
            });
        }
    }
}

impl Handler<Drain> for Injector {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _msg: Drain, _ctx: &mut Self::Context) -> Self::Result {
        self.draining = true;
        let dropped = self.pending.len();
        self.metrics.queue_depth.dec_by(dropped as i64);
        self.pending.clear();
        self.queue.clear();
        if self.running.is_empty() {
            return Box::pin(async {});
        }
        let (tx, rx) = oneshot::channel();
        self.drain_waiters.push(tx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}
