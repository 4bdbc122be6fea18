//! Reconciler: lists running containers and sends those that want secrets to their injector shard.
//!
//! Runs at start-up (once the event stream is subscribed, so nothing falls between the two), after
//! every Docker reconnect, when a queue overflowed, and every `interval`. Passes never overlap: a
//! request during a pass schedules exactly one more pass. The injector skips containers whose
//! current start was already injected, so a pass costs one inspect per labelled container.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::engine::ContainerEngine;
use crate::injector::ShardRouter;
use crate::messages::{ContainerJob, Reconcile, Trigger};
use crate::metrics::Metrics;
use crate::spec::{wants_secrets, SecretRule, Target};

/// The actor.
pub struct Reconciler {
    engine: Arc<dyn ContainerEngine>,
    router: ShardRouter,
    rules: Arc<Vec<SecretRule>>,
    scope: Option<Target>,
    metrics: Arc<Metrics>,
    interval: Option<Duration>,
    busy: bool,
    again: Option<&'static str>,
}

impl Reconciler {
    /// A reconciler; `interval` None disables periodic passes.
    pub fn new(
        engine: Arc<dyn ContainerEngine>,
        router: ShardRouter,
        rules: Arc<Vec<SecretRule>>,
        scope: Option<Target>,
        metrics: Arc<Metrics>,
        interval: Option<Duration>,
    ) -> Self {
        Self {
            engine,
            router,
            rules,
            scope,
            metrics,
            interval,
            busy: false,
            again: None,
        }
    }
}

/// Mailbox capacity of the Reconciler. Its one message, `Reconcile`, is idempotent and coalesces
/// (a request during a pass only marks one more pass), and its senders `try_send`: when the
/// mailbox is full, the passes already waiting re-derive everything the dropped request would
/// have. A small fixed bound is enough, not an operator setting.
pub const RECONCILER_MAILBOX: usize = 16;

impl Actor for Reconciler {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(RECONCILER_MAILBOX);
        if let Some(every) = self.interval {
            ctx.run_interval(every, |_, ctx| {
                ctx.notify(Reconcile { reason: "periodic" });
            });
        }
    }
}

impl Handler<Reconcile> for Reconciler {
    type Result = ();

    fn handle(&mut self, msg: Reconcile, ctx: &mut Self::Context) {
        if self.busy {
            self.again = Some(msg.reason);
            return;
        }
        self.busy = true;
        self.metrics.reconcile_runs.inc();
        let engine = self.engine.clone();
        let router = self.router.clone();
        let rules = self.rules.clone();
        let scope = self.scope.clone();
        let reason = msg.reason;
        let started = Instant::now();
        async move {
            let list = match engine.list_running().await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(reason, error = %e, "reconcile: cannot list containers");
                    return 0usize;
                }
            };
            // Whatever is not running any more is forgotten (its secrets leave memory).
            let running: std::sync::Arc<std::collections::HashSet<String>> =
                std::sync::Arc::new(list.iter().map(|c| c.id.clone()).collect());
            for shard in router.all() {
                let _ = shard
                    .send(crate::messages::Prune {
                        running: running.clone(),
                    })
                    .await;
            }
            let mut sent = 0;
            for c in list {
                // Names are only known after inspect; rules by name are checked by the injector.
                let by_label = wants_secrets("", &c.labels, &rules);
                let by_name = rules.iter().any(|r| {
                    r.targets
                        .iter()
                        .any(|t| matches!(t, crate::spec::Target::Name(_)))
                });
                if !(by_label || by_name) {
                    continue;
                }
                if let Some(s) = &scope {
                    if matches!(s, Target::Label(..)) && !s.matches("", &c.labels) {
                        continue;
                    }
                }
                let job = ContainerJob {
                    id: c.id,
                    trigger: Trigger::Reconcile,
                    received: Instant::now(),
                };
                if router.route(job).await {
                    sent += 1;
                }
            }
            tracing::debug!(reason, sent, "reconcile pass done");
            sent
        }
        .into_actor(self)
        .map(move |_, act, ctx| {
            act.metrics
                .reconcile_duration
                .observe(started.elapsed().as_secs_f64());
            act.busy = false;
            if let Some(reason) = act.again.take() {
                ctx.notify(Reconcile { reason });
            }
        })
        .spawn(ctx);
    }
}
