//! Injector: one shard of the injection pool.
//!
//! A container id always hashes to the same shard ([`shard_for`]), so its jobs are handled in
//! order by one actor. Per container there is at most one job in flight and one queued: a newer
//! job replaces the queued one. A shard runs up to `concurrency` containers at once; jobs beyond
//! that wait in a queue of `queue_capacity`; when that is full the job is dropped, counted in
//! `dso_events_dropped_total{reason="queue_full"}` and a reconcile is requested, so nothing is lost
//! for good.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::future::join_all;
use tokio::sync::oneshot;

use crate::backend::Fetched;
use crate::cache::Cache;
use crate::direct::{DirectError, DirectTarget, FallbackReason, Written};
use crate::engine::{ContainerAction, ContainerEngine, EngineError};
use crate::messages::{
    AuditRecord, ContainerJob, ContainerStatus, Drain, FetchError, FileStatus, GetSecret,
    GetShardStatus, Reconcile, SecretChanged, Subscribe, Trigger, Unsubscribe,
};
use crate::metrics::Metrics;
use crate::secret::SecretValue;
use crate::spec::{build_spec, tmpfs_mount_of, ReloadPolicy, SecretRule, SpecError, Target};
use crate::tarball::{
    build_b64_lines, build_tar, digest, inject_command, Transport, EXIT_FOREIGN, EXIT_NOT_TMPFS,
    EXIT_NO_TAR, EXIT_UNCHANGED, FOREIGN_MARKER, REPLACED_MARKER,
};

/// The shard of a container id: stable for the life of the process and across runs.
pub fn shard_for(id: &str, shards: usize) -> usize {
    // FNV-1a: stable (unlike std's RandomState), cheap, good enough spread for hex ids.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as usize
}

/// Routes jobs to shards. Cheap to clone.
#[derive(Clone)]
pub struct ShardRouter {
    shards: Arc<Vec<Addr<Injector>>>,
}

impl ShardRouter {
    /// A router over these shards (in shard order).
    pub fn new(shards: Vec<Addr<Injector>>) -> Self {
        Self {
            shards: Arc::new(shards),
        }
    }

    /// The shard actor for a container.
    pub fn shard(&self, id: &str) -> &Addr<Injector> {
        &self.shards[shard_for(id, self.shards.len())]
    }

    /// All shards.
    pub fn all(&self) -> &[Addr<Injector>] {
        &self.shards
    }

    /// Non-blocking delivery (used by the event stream). `false` when the mailbox is full or the
    /// shard is gone; the caller counts the drop and schedules a reconcile.
    pub fn try_route(&self, job: ContainerJob) -> bool {
        self.shard(&job.id).try_send(job).is_ok()
    }

    /// Delivery that waits for mailbox room (used by the reconciler).
    pub async fn route(&self, job: ContainerJob) -> bool {
        self.shard(&job.id).send(job).await.is_ok()
    }
}

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
    /// Per-host key of the content digests written to `.ready`.
    pub digest_key: Arc<zeroize::Zeroizing<Vec<u8>>>,
    /// Rotations arriving within this window are applied together.
    pub rotation_debounce: Duration,
    /// Rotations one shard runs at once (the agent-wide bound divided among the shards).
    pub rotation_concurrency: usize,
    /// Where deliveries, rotations and refusals are recorded (None: nowhere).
    pub audit: Option<Recipient<AuditRecord>>,
    /// Who applies the `restart` policy (one container of a Compose service at a time).
    pub restarter: Option<Recipient<crate::restarter::RequestRestart>>,
}

/// How one job ended.
#[derive(Debug)]
pub enum Outcome {
    /// Files are in place.
    Injected {
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
        reload: Option<Result<&'static str, String>>,
    },
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
            Outcome::Injected { changed: true, .. } => Some("success"),
            Outcome::Injected { changed: false, .. } => Some("unchanged"),
            Outcome::AlreadyInjected => Some("duplicate"),
            Outcome::NotManaged | Outcome::Stopped => None,
            Outcome::Gone => Some("container_gone"),
            Outcome::Refused { result, .. } => Some(result),
        }
    }
}

struct Managed {
    started_at: Option<String>,
    digest: String,
    keys: Vec<(String, String)>,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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

/// Failed rotations are retried this many times, with growing delays.
const MAX_ROTATION_RETRIES: u32 = 5;

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

    fn submit(&mut self, job: ContainerJob, ctx: &mut Context<Self>) {
        if let Some(slot) = self.pending.get_mut(&job.id) {
            // Collapse: the newest job replaces the queued one; the earliest receive time is kept
            // so the latency metric stays honest.
            let received = slot.received.min(job.received);
            *slot = ContainerJob { received, ..job };
            return;
        }
        if self.pending.len() >= self.settings.queue_capacity {
            self.metrics.dropped("queue_full");
            tracing::warn!(shard = self.shard, container = %short(&job.id), "injector queue full; job dropped, reconcile scheduled");
            if let Some(r) = &self.reconciler {
                let _ = r.try_send(Reconcile {
                    reason: "injector queue overflow",
                });
            }
            return;
        }
        if !self.running.contains(&job.id) {
            self.queue.push_back(job.id.clone());
        }
        self.pending.insert(job.id.clone(), job);
        self.metrics.queue_depth.inc();
        self.pump(ctx);
    }

    fn pump(&mut self, ctx: &mut Context<Self>) {
        // Rotations waiting for a rotation slot go back to the queue, in order, after this pass.
        let mut deferred = Vec::new();
        while self.running.len() < self.settings.concurrency.max(1) {
            let Some(id) = self.queue.pop_front() else {
                break;
            };
            let Some(job) = self.pending.remove(&id) else {
                continue;
            };
            if job.trigger == Trigger::Rotation
                && self.rotations_running >= self.settings.rotation_concurrency.max(1)
            {
                self.pending.insert(id.clone(), job);
                deferred.push(id);
                continue;
            }
            if job.trigger == Trigger::Rotation {
                self.rotations_running += 1;
            }
            self.metrics.queue_depth.dec();
            self.running.insert(id.clone());
            self.start(job, ctx);
        }
        for id in deferred.into_iter().rev() {
            self.queue.push_front(id);
        }
    }

    fn start(&mut self, job: ContainerJob, ctx: &mut Context<Self>) {
        let prev = self
            .managed
            .get(&job.id)
            .map(|m| (m.started_at.clone(), m.digest.clone()));
        let work = run_job(
            job.clone(),
            prev,
            self.engine.clone(),
            self.cache.clone(),
            self.settings.clone(),
            self.metrics.clone(),
        );
        work.into_actor(self)
            .map(move |outcome, act, ctx| act.finish(job, outcome, ctx))
            .spawn(ctx);
    }

    fn finish(
        &mut self,
        job: ContainerJob,
        (job_name, outcome): (String, Outcome),
        ctx: &mut Context<Self>,
    ) {
        let id = job.id.clone();
        self.running.remove(&id);
        if job.trigger == Trigger::Rotation {
            self.rotations_running = self.rotations_running.saturating_sub(1);
        }
        if let Some(m) = outcome.metric() {
            self.metrics.injection(m);
        }
        match &outcome {
            Outcome::Injected {
                started_at,
                names,
                digest,
                changed,
                replaced,
                keys,
                files,
                reload,
            } => {
                self.retries.remove(&id);
                let now = unix_now();
                let prev = self.status.get(&id);
                let delivered_at = match prev {
                    Some(prev) if !*changed && prev.digest.as_deref() == Some(digest.as_str()) => {
                        prev.delivered_at
                    }
                    _ => Some(now),
                };
                // A file holds its content since the delivery that last changed it.
                let files: Vec<FileStatus> = files
                    .iter()
                    .map(|f| {
                        let since = prev
                            .and_then(|p| p.files.iter().find(|o| o.name == f.name))
                            .filter(|o| o.digest == f.digest)
                            .and_then(|o| o.since)
                            .or(delivered_at);
                        FileStatus { since, ..f.clone() }
                    })
                    .collect();
                self.status.insert(
                    id.clone(),
                    ContainerStatus {
                        id: id.clone(),
                        name: job_name.clone(),
                        files: files.clone(),
                        digest: Some(digest.clone()),
                        result: if *changed { "success" } else { "unchanged" }.to_string(),
                        message: None,
                        delivered_at,
                        checked_at: now,
                    },
                );
                if job.trigger == Trigger::Rotation {
                    self.metrics
                        .rotation(if *changed { "success" } else { "unchanged" });
                }
                let _ = self.cache.try_send(Subscribe {
                    container: id.clone(),
                    keys: keys.clone(),
                });
                if self
                    .managed
                    .insert(
                        id.clone(),
                        Managed {
                            started_at: started_at.clone(),
                            digest: digest.clone(),
                            keys: keys.clone(),
                        },
                    )
                    .is_none()
                {
                    self.metrics.managed_containers.inc();
                }
                if *changed {
                    let event = if job.trigger == Trigger::Rotation || *replaced {
                        "rotated"
                    } else {
                        "delivered"
                    };
                    self.audit(
                        event,
                        &job,
                        &job_name,
                        &files,
                        Some(digest),
                        "success",
                        None,
                    );
                }
                match reload {
                    Some(Ok(policy)) => {
                        self.audit(
                            "reloaded",
                            &job,
                            &job_name,
                            &files,
                            Some(digest),
                            policy,
                            None,
                        );
                        if *policy != "restart" {
                            // Restarts are counted by the Restarter once they are done.
                            self.metrics.reload(policy, "ok");
                        }
                        tracing::info!(container = %short(&id), policy = *policy, "reload policy applied after new values");
                    }
                    Some(Err(e)) => {
                        self.audit(
                            "reload_failed",
                            &job,
                            &job_name,
                            &files,
                            Some(digest),
                            "error",
                            Some(e),
                        );
                        self.metrics.reload("error", "error");
                        tracing::error!(container = %short(&id), error = %e, "reload policy failed");
                    }
                    None => {}
                }
                let _ = replaced;
                if !changed {
                    tracing::debug!(container = %short(&id), trigger = job.trigger.as_str(), "secrets already in place");
                    return self.after(&id, ctx);
                }
                if job.trigger == Trigger::Reconcile {
                    self.metrics.reconcile_repairs.inc();
                }
                self.metrics
                    .injection_duration
                    .observe(job.received.elapsed().as_secs_f64());
                tracing::info!(
                    container = %short(&id),
                    trigger = job.trigger.as_str(),
                    files = names.len(),
                    names = %names.join(","),
                    digest = %digest,
                    duration_us = job.received.elapsed().as_micros() as u64,
                    "secrets injected"
                );
            }
            Outcome::Gone | Outcome::NotManaged | Outcome::Stopped => {
                if matches!(outcome, Outcome::Gone) {
                    tracing::info!(container = %short(&id), trigger = job.trigger.as_str(), "container stopped before its secrets were written; nothing to do");
                }
                self.status.remove(&id);
                self.forget(&id);
            }
            Outcome::AlreadyInjected => {}
            Outcome::Refused { result, message } => {
                let entry = self
                    .status
                    .entry(id.clone())
                    .or_insert_with(|| ContainerStatus {
                        id: id.clone(),
                        name: job_name.clone(),
                        files: Vec::new(),
                        digest: None,
                        result: String::new(),
                        message: None,
                        delivered_at: None,
                        checked_at: 0,
                    });
                entry.result = (*result).to_string();
                entry.message = Some(message.clone());
                entry.checked_at = unix_now();
                let files = entry.files.clone();
                self.audit(
                    "refused",
                    &job,
                    &job_name,
                    &files,
                    None,
                    result,
                    Some(message),
                );
                if job.trigger == Trigger::Rotation {
                    // The previous files stay in place (the set is replaced atomically or not at
                    // all); try again later.
                    self.metrics.rotation("failed");
                    let attempt = self.retries.entry(id.clone()).or_insert(0);
                    *attempt += 1;
                    if *attempt <= MAX_ROTATION_RETRIES {
                        let delay = Duration::from_secs(2u64.pow(*attempt));
                        let retry = ContainerJob {
                            id: id.clone(),
                            trigger: Trigger::Rotation,
                            received: Instant::now(),
                        };
                        ctx.run_later(delay, move |act, ctx| act.submit(retry, ctx));
                    } else {
                        self.retries.remove(&id);
                    }
                    tracing::error!(
                        container = %short(&id),
                        result = *result,
                        "rotation failed, previous files kept: {message}"
                    );
                    return self.after(&id, ctx);
                }
                self.forget(&id);
                tracing::error!(
                    container = %short(&id),
                    trigger = job.trigger.as_str(),
                    result = *result,
                    "injection refused: {message}"
                );
            }
        }
        self.after(&id, ctx);
    }

    /// After a job: start the queued one for this container, fill free slots, finish a drain.
    fn after(&mut self, id: &str, ctx: &mut Context<Self>) {
        if self.pending.contains_key(id) {
            self.queue.push_back(id.to_string());
        }
        self.pump(ctx);
        if self.draining && self.running.is_empty() {
            for w in self.drain_waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }
}

impl Injector {
    #[allow(clippy::too_many_arguments)]
    fn audit(
        &self,
        event: &'static str,
        job: &ContainerJob,
        name: &str,
        files: &[FileStatus],
        digest: Option<&str>,
        result: &str,
        message: Option<&str>,
    ) {
        let Some(to) = &self.settings.audit else {
            return;
        };
        let record = AuditRecord {
            ts_ms: unix_ms(),
            event,
            trigger: job.trigger.as_str(),
            container: job.id.clone(),
            name: name.to_string(),
            files: files.to_vec(),
            digest: digest.map(str::to_string),
            result: result.to_string(),
            message: message.map(str::to_string),
        };
        if to.try_send(record).is_err() {
            self.metrics.dropped("audit_full");
        }
    }

    /// Drops a container from the managed set (and the gauge) and releases its cache keys.
    fn forget(&mut self, id: &str) {
        if self.managed.remove(id).is_some() {
            self.metrics.managed_containers.dec();
            let _ = self.cache.try_send(Unsubscribe {
                container: id.to_string(),
            });
        }
        self.retries.remove(id);
    }

    fn flush_rotations(&mut self, ctx: &mut Context<Self>) {
        self.rotation_flush_scheduled = false;
        let now = Instant::now();
        for id in std::mem::take(&mut self.rotating) {
            self.submit(
                ContainerJob {
                    id,
                    trigger: Trigger::Rotation,
                    received: now,
                },
                ctx,
            );
        }
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

fn refused(result: &'static str, message: String) -> Outcome {
    Outcome::Refused { result, message }
}

/// One job, start to end, with the container's name (empty when unknown) for status. Pure async:
/// reads actor state only through its arguments.
async fn run_job(
    job: ContainerJob,
    prev: Option<(Option<String>, String)>,
    engine: Arc<dyn ContainerEngine>,
    cache: Addr<Cache>,
    settings: InjectorSettings,
    metrics: Arc<Metrics>,
) -> (String, Outcome) {
    if matches!(
        job.trigger,
        Trigger::Event(ContainerAction::Die | ContainerAction::Destroy)
    ) {
        return (String::new(), Outcome::Stopped);
    }
    let info = match engine.inspect(&job.id).await {
        Ok(i) => i,
        Err(EngineError::NotFound(_) | EngineError::NotRunning(_)) => {
            return (String::new(), Outcome::Gone)
        }
        Err(e) => return (String::new(), refused("engine_error", e.to_string())),
    };
    if !info.running {
        return (info.name, Outcome::Gone);
    }
    let name = info.name.clone();
    (
        name,
        inject(job, prev, info, engine, cache, settings, metrics).await,
    )
}

/// Everything after `inspect`: spec, checks, fetch, one write (direct or exec), reload policy.
async fn inject(
    job: ContainerJob,
    prev: Option<(Option<String>, String)>,
    info: crate::engine::ContainerInfo,
    engine: Arc<dyn ContainerEngine>,
    cache: Addr<Cache>,
    settings: InjectorSettings,
    metrics: Arc<Metrics>,
) -> Outcome {
    if let Some(scope) = &settings.scope {
        if !scope.matches(&info.name, &info.labels) {
            return Outcome::NotManaged;
        }
    }
    let spec = match build_spec(&info, &settings.rules) {
        Ok(Some(s)) => s,
        Ok(None) => return Outcome::NotManaged,
        Err(errs) => {
            return refused(
                "invalid_spec",
                format!(
                    "container `{}`: {}; nothing written",
                    info.name,
                    errs.iter()
                        .map(SpecError::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            )
        }
    };
    let Some(mount) = tmpfs_mount_of(&spec.dir, &info.tmpfs_mounts) else {
        return refused(
            "not_tmpfs",
            format!(
                "container `{}`: `{}` is not on a tmpfs mount of the container (add `--tmpfs {}` or `--mount type=tmpfs,dst={}`); nothing written",
                info.name, spec.dir, spec.dir, spec.dir
            ),
        );
    };

    // One fetch per distinct (provider, path); the cache coalesces across containers too.
    let mut sources: BTreeMap<(String, String), Option<Result<Fetched, FetchError>>> =
        BTreeMap::new();
    let mut unique = Vec::new();
    for f in &spec.files {
        let k = (f.source.provider.clone(), f.source.path.clone());
        if sources.insert(k, None).is_none() {
            unique.push(f.source.clone());
        }
    }
    let results = join_all(unique.iter().map(|s| {
        let cache = cache.clone();
        let source = s.clone();
        async move {
            match cache.send(GetSecret { source }).await {
                Ok(r) => r,
                Err(_) => Err(FetchError::ProviderGone("cache".to_string())),
            }
        }
    }))
    .await;
    for (s, r) in unique.iter().zip(results) {
        sources.insert((s.provider.clone(), s.path.clone()), Some(r));
    }

    let mut values: Vec<SecretValue> = Vec::with_capacity(spec.files.len());
    let mut versions: Vec<Option<String>> = Vec::with_capacity(spec.files.len());
    let mut errors = Vec::new();
    for f in &spec.files {
        let k = (f.source.provider.clone(), f.source.path.clone());
        match sources.get(&k) {
            Some(Some(Ok(fetched))) => match fetched.data.select(f.source.key.as_deref()) {
                Ok(v) => {
                    values.push(v);
                    versions.push(fetched.version.clone());
                }
                Err(e) => errors.push(format!("`{}` ({}): {e}", f.name, f.source)),
            },
            Some(Some(Err(e))) => errors.push(format!("`{}` ({}): {e}", f.name, f.source)),
            _ => errors.push(format!("`{}` ({}): not fetched", f.name, f.source)),
        }
    }
    drop(sources);
    if !errors.is_empty() {
        return refused(
            "provider_error",
            format!(
                "container `{}`: {}; nothing written",
                info.name,
                errors.join("; ")
            ),
        );
    }

    let pairs: Vec<_> = spec.files.iter().zip(values.iter()).collect();
    let digest = digest(&settings.digest_key, &pairs);
    // This very start of the container already got this very content: nothing to do.
    if job.trigger != Trigger::Manual {
        if let Some((prev_started, prev_digest)) = &prev {
            if prev_started.is_some() && *prev_started == info.started_at && *prev_digest == digest
            {
                return Outcome::AlreadyInjected;
            }
        }
    }
    // Per file: its source, backend version and a keyed digest of its own content (status, audit).
    let file_status: Vec<FileStatus> = pairs
        .iter()
        .zip(versions)
        .map(|((f, v), version)| FileStatus {
            name: f.name.clone(),
            source: f.source.to_string(),
            version,
            digest: crate::tarball::digest(&settings.digest_key, &[(f, v)]),
            since: None,
        })
        .collect();
    let names: Vec<String> = spec.files.iter().map(|f| f.name.clone()).collect();
    let keys: Vec<(String, String)> = spec
        .files
        .iter()
        .map(|f| (f.source.provider.clone(), f.source.path.clone()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let written = match write_direct(
        &job, &info, mount, &spec.dir, &digest, &pairs, &*engine, &metrics,
    )
    .await
    {
        Some(w) => w,
        None => {
            drop(pairs);
            write_exec(
                &job, &info, mount, &spec, &digest, values, &*engine, &metrics,
            )
            .await
        }
    };
    let (changed, replaced) = match written {
        Ok(w) => w,
        Err(outcome) => return outcome,
    };
    // The policy runs only when values the application may have read were replaced — never on a
    // first injection, never when nothing changed.
    let reload = if replaced {
        match &spec.reload {
            ReloadPolicy::None => None,
            ReloadPolicy::Signal(sig) => Some(
                engine
                    .signal(&job.id, sig)
                    .await
                    .map(|_| "signal")
                    .map_err(|e| format!("sending {sig}: {e}")),
            ),
            ReloadPolicy::Restart => Some(match &settings.restarter {
                Some(r) => r
                    .try_send(crate::restarter::RequestRestart {
                        id: job.id.clone(),
                        group: crate::restarter::compose_group(&info.labels),
                    })
                    .map(|_| "restart")
                    .map_err(|e| format!("scheduling the restart: {e}")),
                None => engine
                    .restart(&job.id)
                    .await
                    .map(|_| "restart")
                    .map_err(|e| format!("restarting: {e}")),
            }),
        }
    } else {
        None
    };
    Outcome::Injected {
        started_at: info.started_at,
        names,
        digest,
        changed,
        replaced,
        keys,
        files: file_status,
        reload,
    }
}

/// A write's result: (content changed, an earlier set was replaced), or the job's outcome.
type WriteResult = Result<(bool, bool), Outcome>;

/// The direct path (`/proc/<pid>/root`, no exec), when the engine offers it. None: use exec
/// (not offered, or not usable for this container — each reason counted and logged once).
#[allow(clippy::too_many_arguments)]
async fn write_direct(
    job: &ContainerJob,
    info: &crate::engine::ContainerInfo,
    mount: &str,
    dir: &str,
    digest: &str,
    pairs: &[(&crate::spec::SecretFile, &SecretValue)],
    engine: &dyn ContainerEngine,
    metrics: &Metrics,
) -> Option<WriteResult> {
    let writer = engine.direct_writer()?;
    let target = DirectTarget {
        container_id: if info.id.is_empty() {
            &job.id
        } else {
            &info.id
        },
        pid: info.pid.unwrap_or(0),
        dir,
        mount,
        started_at: info.started_at.as_deref(),
    };
    let mut written = writer.write(&target, digest, pairs);
    if let Err(DirectError::Gone {
        when: "before the write",
        ..
    }) = &written
    {
        // No /proc/<pid> although Docker said "running": exited meanwhile, or a pid this agent
        // cannot see (its own PID namespace). Docker tells which.
        if let Ok(again) = engine.inspect(&job.id).await {
            if again.running && again.pid == info.pid {
                written = Err(DirectError::Fallback {
                    reason: FallbackReason::PidNamespace,
                    detail: format!("pid {} is not visible to the agent", target.pid),
                });
            }
        }
    }
    let result = match written {
        Ok(Written::Unchanged) => Ok((false, false)),
        Ok(Written::New { replaced }) => Ok((true, replaced)),
        Err(DirectError::Fallback { reason, detail }) => {
            if metrics.direct_fallback(reason.as_str()) {
                tracing::info!(
                    reason = reason.as_str(),
                    container = %short(&job.id),
                    "direct writes not possible: {}; using exec for such containers ({detail})",
                    reason.explain()
                );
            }
            return None;
        }
        Err(e @ DirectError::NotTmpfs { .. }) => Err(refused(
            "not_tmpfs",
            format!("container `{}`: {e}; nothing written", info.name),
        )),
        Err(e @ DirectError::Foreign { .. }) => Err(refused(
            "foreign_entry",
            format!("container `{}`: {e}; the previous files (if any) are still in place", info.name),
        )),
        Err(e @ DirectError::Gone { .. }) => {
            tracing::info!(container = %short(&job.id), "{e}; container gone");
            Err(Outcome::Gone)
        }
        Err(e) => Err(refused(
            "write_failed",
            format!(
                "container `{}`: writing through /proc/<pid>/root: {e}; the previous files (if any) are still in place",
                info.name
            ),
        )),
    };
    if result.is_ok() {
        metrics.injection_mode("direct");
    }
    Some(result)
}

/// The exec path: one `docker exec` of the in-container script with the tar on stdin (or, in an
/// image without `tar`, base64 lines).
#[allow(clippy::too_many_arguments)]
async fn write_exec(
    job: &ContainerJob,
    info: &crate::engine::ContainerInfo,
    mount: &str,
    spec: &crate::spec::ContainerSpec,
    digest: &str,
    values: Vec<SecretValue>,
    engine: &dyn ContainerEngine,
    metrics: &Metrics,
) -> WriteResult {
    let pairs: Vec<_> = spec.files.iter().zip(values.iter()).collect();
    let tar = match build_tar(&pairs) {
        Ok(t) => t,
        Err(e) => return Err(refused("tar_error", e.to_string())),
    };
    drop(pairs);
    let files: Vec<_> = spec.files.iter().collect();
    let mut result = engine
        .exec(
            &job.id,
            &inject_command(mount, &spec.dir, digest, &files, Transport::Tar),
            &tar,
        )
        .await;
    drop(tar);
    if matches!(&result, Ok(out) if out.exit_code == Some(EXIT_NO_TAR)) {
        // No tar in the image: the same files as base64 lines, still one exec, still atomic.
        let payload = build_b64_lines(&values.iter().collect::<Vec<_>>());
        result = engine
            .exec(
                &job.id,
                &inject_command(mount, &spec.dir, digest, &files, Transport::Base64Lines),
                &payload,
            )
            .await;
    }
    drop(values);
    let written = match result {
        Ok(out) if out.exit_code == Some(0) || out.exit_code == Some(EXIT_UNCHANGED) => {
            metrics.injection_mode("exec");
            let replaced = out.exit_code == Some(0)
                && out.output.lines().any(|l| l.trim() == REPLACED_MARKER);
            Ok((out.exit_code == Some(0), replaced))
        }
        Ok(out) if out.exit_code == Some(EXIT_NOT_TMPFS) => Err(refused(
            "not_tmpfs",
            format!(
                "container `{}`: `{}` is not provably on the container's tmpfs (no tmpfs mount at `{mount}` in the container's mountinfo, or a symlink or another mount below it); nothing written",
                info.name, spec.dir
            ),
        )),
        Ok(out) if out.exit_code == Some(EXIT_FOREIGN) => Err(refused(
            "foreign_entry",
            format!(
                "container `{}`: {} in {} is an entry DSO did not create and does not remove (a non-empty directory, a fifo, …); remove it (or recreate the container); the previous files (if any) are still in place",
                info.name,
                foreign_entry(&out.output, &spec.files),
                spec.dir
            ),
        )),
        Ok(out) if out.exit_code == Some(EXIT_NO_TAR) => Err(refused(
            "no_tar",
            format!(
                "container `{}` has neither `tar` nor `base64` (DSO streams the files into the container through `sh`); nothing written",
                info.name
            ),
        )),
        Ok(out) => Err(refused(
            "exec_failed",
            format!(
                "container `{}`: injection command exited with {}: {}",
                info.name,
                out.exit_code.map_or("no code".to_string(), |c| c.to_string()),
                out.output.trim()
            ),
        )),
        Err(EngineError::NotFound(_) | EngineError::NotRunning(_)) => Err(Outcome::Gone),
        Err(e) => Err(refused("exec_failed", format!("container `{}`: {e}", info.name))),
    };
    // An exec that failed because the container was being stopped or removed meanwhile (exit 137,
    // "cannot exec in a stopped container", a 500 from a container being removed) is not a
    // failure to report: the container is gone.
    if matches!(
        &written,
        Err(Outcome::Refused {
            result: "exec_failed",
            ..
        })
    ) {
        match engine.inspect(&job.id).await {
            Ok(i) if i.running => {}
            Ok(_) | Err(EngineError::NotFound(_) | EngineError::NotRunning(_)) => {
                return Err(Outcome::Gone)
            }
            Err(_) => {}
        }
    }
    written
}

/// The entry a foreign-entry verdict names, when it is one of DSO's names (the script prints it;
/// text from inside the container is never logged otherwise).
fn foreign_entry(output: &str, files: &[crate::spec::SecretFile]) -> String {
    let fixed = [
        "..data",
        ".ready",
        "..dso_staging",
        "..dso_link",
        "..dso_ready",
    ];
    output
        .lines()
        .filter_map(|l| l.trim().strip_prefix(FOREIGN_MARKER))
        .find(|n| {
            fixed.contains(n)
                || files.iter().any(|f| f.name == *n)
                || n.strip_prefix("..data_").is_some_and(|h| {
                    !h.is_empty() && h.len() <= 64 && h.bytes().all(|b| b.is_ascii_hexdigit())
                })
        })
        .map_or_else(|| "an entry".to_string(), |n| format!("`{n}`"))
}

impl Actor for Injector {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
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

impl Handler<crate::messages::Prune> for Injector {
    type Result = ();

    fn handle(&mut self, msg: crate::messages::Prune, _ctx: &mut Self::Context) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        let ids: Vec<String> = (0..4000).map(|i| format!("{:064x}", i * 7919)).collect();
        let mut counts = [0usize; 8];
        for id in &ids {
            let s = shard_for(id, 8);
            assert_eq!(s, shard_for(id, 8));
            counts[s] += 1;
        }
        for c in counts {
            assert!(c > 300, "uneven spread: {counts:?}");
        }
        assert_eq!(shard_for("abc", 1), 0);
    }
}
