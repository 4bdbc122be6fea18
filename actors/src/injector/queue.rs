//! Routing to shards and the per-container queue of one shard: at most one job in flight and one
//! queued per container (a newer job replaces the queued one), `concurrency` containers at once,
//! rotations within their own bound, `queue_capacity` waiting, overflow counted and repaired by a
//! reconcile.

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;

use super::{pipeline, short, Injector};
use crate::messages::{ContainerJob, Reconcile, Trigger};

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

impl Injector {
    /// Queues a job (collapsing it with a queued one for the same container) and starts what fits.
    pub(super) fn submit(&mut self, job: ContainerJob, ctx: &mut Context<Self>) {
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
        let work = pipeline::run_job(
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

    /// After a job: start the queued one for this container, fill free slots, finish a drain.
    pub(super) fn after(&mut self, id: &str, ctx: &mut Context<Self>) {
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

    /// The debounce window of rotations has passed: one rotation job per collected container.
    pub(super) fn flush_rotations(&mut self, ctx: &mut Context<Self>) {
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
