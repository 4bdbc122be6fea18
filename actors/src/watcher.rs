//! EventWatcher: follows the engine's container event stream (start / die / destroy) and routes
//! each event to its injector shard.
//!
//! When the stream breaks it reconnects with exponential backoff and jitter, replaying from the
//! last event seen (`since`), and asks the Reconciler for a pass, which repairs whatever the replay
//! cannot. After `max_reconnects` failed attempts in a row it reports [`Fatal`] so the process
//! exits non-zero and Docker's restart policy (or systemd) takes over.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use rand::Rng;

use crate::engine::{ContainerEngine, EngineError};
use crate::injector::ShardRouter;
use crate::messages::{ContainerJob, Fatal, IsUp, Reconcile, StopWatching, Trigger};
use crate::metrics::{ActionLabel, Metrics};
use crate::model::EngineEvent;

/// The actor.
pub struct EventWatcher {
    engine: Arc<dyn ContainerEngine>,
    router: ShardRouter,
    reconciler: Recipient<Reconcile>,
    fatal: Recipient<Fatal>,
    metrics: Arc<Metrics>,
    max_reconnects: u32,
    failures: u32,
    connected: bool,
    ever_connected: bool,
    last_event: Option<SystemTime>,
    stopping: bool,
    stream: Option<SpawnHandle>,
}

impl EventWatcher {
    /// A watcher routing to `router`.
    pub fn new(
        engine: Arc<dyn ContainerEngine>,
        router: ShardRouter,
        reconciler: Recipient<Reconcile>,
        fatal: Recipient<Fatal>,
        metrics: Arc<Metrics>,
        max_reconnects: u32,
    ) -> Self {
        Self {
            engine,
            router,
            reconciler,
            fatal,
            metrics,
            max_reconnects,
            failures: 0,
            connected: false,
            ever_connected: false,
            last_event: None,
            stopping: false,
            stream: None,
        }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        let engine = self.engine.clone();
        // Replay from one second before the last event seen (engine timestamps are in seconds).
        let since = self
            .last_event
            .map(|t| t.checked_sub(Duration::from_secs(1)).unwrap_or(t));
        async move {
            // Ping first: an events request to a dead daemon may hang rather than fail.
            engine.ping().await?;
            engine.events(since).await
        }
        .into_actor(self)
        .map(|res, act, ctx| match res {
            Ok(stream) => {
                let reason = if act.ever_connected {
                    tracing::info!(
                        after_failures = act.failures,
                        "docker event stream reconnected"
                    );
                    "docker reconnect"
                } else {
                    tracing::info!("docker event stream connected");
                    "startup"
                };
                act.connected = true;
                act.ever_connected = true;
                act.failures = 0;
                act.stream = Some(ctx.add_stream(stream));
                // Subscribe first, then list: a container starting in between is seen by one of them.
                let _ = act.reconciler.try_send(Reconcile { reason });
            }
            Err(e) => act.retry(ctx, &e),
        })
        .wait(ctx);
    }

    fn retry(&mut self, ctx: &mut Context<Self>, err: &EngineError) {
        self.connected = false;
        if self.stopping {
            return;
        }
        self.failures += 1;
        self.metrics.docker_reconnects.inc();
        if self.failures > self.max_reconnects {
            let reason = format!(
                "docker unreachable after {} reconnect attempts: {err}",
                self.max_reconnects
            );
            tracing::error!("{reason}");
            let _ = self.fatal.try_send(Fatal {
                reason,
                code: crate::exit::ExitCode::DockerUnreachable,
            });
            return;
        }
        let delay = backoff(self.failures);
        tracing::warn!(attempt = self.failures, delay_ms = delay.as_millis() as u64, error = %err, "docker event stream unavailable; retrying");
        ctx.run_later(delay, |act, ctx| act.connect(ctx));
    }
}

/// Exponential backoff, 100 ms doubling to 5 s, with ±25 % jitter.
pub fn backoff(attempt: u32) -> Duration {
    let base = 100u64
        .saturating_mul(1u64 << attempt.min(7).saturating_sub(1))
        .min(5_000);
    let jitter = rand::thread_rng().gen_range(0.75..1.25);
    Duration::from_millis((base as f64 * jitter) as u64)
}

/// Mailbox capacity of the EventWatcher. Events arrive as a stream (`add_stream`), not through the
/// mailbox; the mailbox only carries control messages — `IsUp` from readiness and status probes
/// and one `StopWatching` at shutdown — whose senders `send` (wait for room). A few probes at once
/// is the most it ever holds, so a small fixed bound, not an operator setting.
pub const WATCHER_MAILBOX: usize = 16;

impl Actor for EventWatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(WATCHER_MAILBOX);
        self.connect(ctx);
    }
}

impl actix::Supervised for EventWatcher {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        self.connected = false;
        self.stream = None;
    }
}

impl StreamHandler<Result<EngineEvent, EngineError>> for EventWatcher {
    fn handle(&mut self, item: Result<EngineEvent, EngineError>, _ctx: &mut Self::Context) {
        let ev = match item {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(error = %e, "docker event stream error");
                return;
            }
        };
        self.metrics
            .events_received
            .get_or_create(&ActionLabel {
                action: ev.action.as_str().to_string(),
            })
            .inc();
        if ev.time_nanos > 0 {
            let t = UNIX_EPOCH + Duration::from_nanos(ev.time_nanos as u64);
            if self.last_event.is_none_or(|l| t > l) {
                self.last_event = Some(t);
            }
        }
        let job = ContainerJob {
            id: ev.id,
            trigger: Trigger::Event(ev.action),
            received: Instant::now(),
        };
        if !self.router.try_route(job) {
            self.metrics.dropped("mailbox_full");
            let _ = self.reconciler.try_send(Reconcile {
                reason: "injector mailbox full",
            });
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        self.stream = None;
        if self.stopping {
            return;
        }
        tracing::warn!("docker event stream ended");
        self.connected = false;
        self.retry(ctx, &EngineError::Engine("event stream ended".to_string()));
    }
}

impl Handler<IsUp> for EventWatcher {
    type Result = bool;

    fn handle(&mut self, _msg: IsUp, _ctx: &mut Self::Context) -> bool {
        self.connected
    }
}

impl Handler<StopWatching> for EventWatcher {
    type Result = ();

    fn handle(&mut self, _msg: StopWatching, ctx: &mut Self::Context) {
        self.stopping = true;
        if let Some(h) = self.stream.take() {
            ctx.cancel_future(h);
        }
        self.connected = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert!(backoff(1) <= Duration::from_millis(125));
        assert!(backoff(3) >= Duration::from_millis(300));
        for n in [7, 50, 100, 1000] {
            let d = backoff(n);
            assert!(
                d <= Duration::from_millis(6250) && d >= Duration::from_millis(3750),
                "{n}: {d:?}"
            );
        }
    }
}
