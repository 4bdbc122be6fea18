//! What a finished job changes in its shard: the status ledger, the managed set (and the cache
//! keys it subscribes), metrics, the audit log, and the retry of a failed rotation.

use std::time::{Duration, Instant};

use actix::prelude::*;

use super::{short, Delivered, Injector, Managed, Outcome};
use crate::messages::{
    AuditRecord, ContainerJob, ContainerStatus, FileStatus, Subscribe, Trigger, Unsubscribe,
};

/// Failed rotations are retried this many times, with growing delays.
const MAX_ROTATION_RETRIES: u32 = 5;

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

/// The job a ledger entry is about: what the audit records name.
struct Subject<'a> {
    job: &'a ContainerJob,
    name: &'a str,
}

impl Injector {
    /// Books the end of a job, then lets the queue move on.
    pub(super) fn finish(
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
        let subject = Subject {
            job: &job,
            name: &job_name,
        };
        match outcome {
            Outcome::Injected(done) => self.injected(&subject, *done),
            Outcome::Gone | Outcome::NotManaged | Outcome::Stopped => {
                if matches!(outcome, Outcome::Gone) {
                    tracing::info!(container = %short(&id), trigger = job.trigger.as_str(), "container stopped before its secrets were written; nothing to do");
                }
                self.status.remove(&id);
                self.forget(&id);
            }
            Outcome::AlreadyInjected => {}
            Outcome::Refused { result, message } => {
                self.refused(&subject, result, &message, ctx);
            }
        }
        self.after(&id, ctx);
    }

    /// Files are in place: status, managed set, cache subscription, audit, reload, metrics.
    fn injected(&mut self, s: &Subject<'_>, done: Delivered) {
        let (job, id) = (s.job, &s.job.id);
        self.retries.remove(id);
        let files = self.record_delivery(s, &done);
        if job.trigger == Trigger::Rotation {
            self.metrics
                .rotation(if done.changed { "success" } else { "unchanged" });
        }
        let _ = self.cache.try_send(Subscribe {
            container: id.clone(),
            keys: done.keys.clone(),
        });
        let managed = Managed {
            started_at: done.started_at.clone(),
            digest: done.digest.clone(),
            keys: done.keys.clone(),
        };
        if self.managed.insert(id.clone(), managed).is_none() {
            self.metrics.managed_containers.inc();
        }
        let digest = Some(done.digest.as_str());
        if done.changed {
            let event = if job.trigger == Trigger::Rotation || done.replaced {
                "rotated"
            } else {
                "delivered"
            };
            self.audit(event, s, &files, digest, "success", None);
        }
        if let Some(r) = &done.reload {
            match &r.result {
                Ok(()) => {
                    self.audit("reloaded", s, &files, digest, r.policy, None);
                    if r.count_now {
                        self.metrics.reload(r.policy, "ok");
                    }
                    tracing::info!(container = %short(id), policy = r.policy, "reload policy applied after new values");
                }
                Err(e) => {
                    self.audit("reload_failed", s, &files, digest, "error", Some(e));
                    self.metrics.reload("error", "error");
                    tracing::error!(container = %short(id), error = %e, "reload policy failed");
                }
            }
        }
        if !done.changed {
            tracing::debug!(container = %short(id), trigger = job.trigger.as_str(), "secrets already in place");
            return;
        }
        if job.trigger == Trigger::Reconcile {
            self.metrics.reconcile_repairs.inc();
        }
        self.metrics
            .injection_duration
            .observe(job.received.elapsed().as_secs_f64());
        tracing::info!(
            container = %short(id),
            trigger = job.trigger.as_str(),
            files = done.names.len(),
            names = %done.names.join(","),
            digest = %done.digest,
            duration_us = job.received.elapsed().as_micros() as u64,
            "secrets injected"
        );
    }

    /// The status ledger entry of a delivery: a file holds its content since the delivery that
    /// last changed it. Returns the files as recorded.
    fn record_delivery(&mut self, s: &Subject<'_>, done: &Delivered) -> Vec<FileStatus> {
        let id = &s.job.id;
        let now = unix_now();
        let prev = self.status.get(id);
        let delivered_at = match prev {
            Some(prev) if !done.changed && prev.digest.as_deref() == Some(done.digest.as_str()) => {
                prev.delivered_at
            }
            _ => Some(now),
        };
        let files: Vec<FileStatus> = done
            .files
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
                name: s.name.to_string(),
                files: files.clone(),
                digest: Some(done.digest.clone()),
                result: if done.changed { "success" } else { "unchanged" }.to_string(),
                message: None,
                delivered_at,
                checked_at: now,
            },
        );
        files
    }

    /// Refused before anything was written: status, audit; a rotation keeps the old files and is
    /// retried with backoff, anything else forgets the container until its next event.
    fn refused(
        &mut self,
        s: &Subject<'_>,
        result: &'static str,
        message: &str,
        ctx: &mut Context<Self>,
    ) {
        let (job, id) = (s.job, &s.job.id);
        let entry = self
            .status
            .entry(id.clone())
            .or_insert_with(|| ContainerStatus {
                id: id.clone(),
                name: s.name.to_string(),
                files: Vec::new(),
                digest: None,
                result: String::new(),
                message: None,
                delivered_at: None,
                checked_at: 0,
            });
        entry.result = result.to_string();
        entry.message = Some(message.to_string());
        entry.checked_at = unix_now();
        let files = entry.files.clone();
        self.audit("refused", s, &files, None, result, Some(message));
        if job.trigger == Trigger::Rotation {
            // The previous files stay in place (the set is replaced atomically or not at all);
            // try again later.
            self.metrics.rotation("failed");
            self.retry_rotation(id, ctx);
            tracing::error!(
                container = %short(id),
                result,
                "rotation failed, previous files kept: {message}"
            );
            return;
        }
        self.forget(id);
        tracing::error!(
            container = %short(id),
            trigger = job.trigger.as_str(),
            result,
            "injection refused: {message}"
        );
    }

    /// Schedules the next attempt of a failed rotation (2 s, 4 s, … up to
    /// [`MAX_ROTATION_RETRIES`] attempts).
    fn retry_rotation(&mut self, id: &str, ctx: &mut Context<Self>) {
        let attempt = self.retries.entry(id.to_string()).or_insert(0);
        *attempt += 1;
        if *attempt <= MAX_ROTATION_RETRIES {
            let delay = Duration::from_secs(2u64.pow(*attempt));
            let retry = ContainerJob {
                id: id.to_string(),
                trigger: Trigger::Rotation,
                received: Instant::now(),
            };
            ctx.run_later(delay, move |act, ctx| act.submit(retry, ctx));
        } else {
            self.retries.remove(id);
        }
    }

    fn audit(
        &self,
        event: &'static str,
        s: &Subject<'_>,
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
            trigger: s.job.trigger.as_str(),
            container: s.job.id.clone(),
            name: s.name.to_string(),
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
    pub(super) fn forget(&mut self, id: &str) {
        if self.managed.remove(id).is_some() {
            self.metrics.managed_containers.dec();
            let _ = self.cache.try_send(Unsubscribe {
                container: id.to_string(),
            });
        }
        self.retries.remove(id);
    }
}
