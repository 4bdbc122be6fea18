//! ProviderConnection: one actor per configured backend, owning its one connection.
//!
//! Every request carries the provider's timeout. After [`MAX_CONSECUTIVE_FAILURES`] connection
//! failures in a row the actor stops itself; its `actix::Supervisor` restarts it, which drops the
//! connection and builds a new one from the factory (re-reading tokens, re-authenticating), and
//! counts `dso_provider_restarts_total`. Answers such as "not found" are not failures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::backend::{BackendError, Fetched, SecretBackend};
use crate::messages::{Fetch, FetchVersion, IsUp};
use crate::metrics::{Metrics, ProviderLabel, ProviderResultLabel};

/// Consecutive connection failures that restart the actor.
pub const MAX_CONSECUTIVE_FAILURES: u32 = 5;

/// The circuit breaker's state (the value of `dso_provider_circuit_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Requests go to the backend.
    Closed = 0,
    /// Requests fail fast (and the cache serves stale values) until the backoff has passed.
    Open = 1,
    /// One trial request goes through; its result closes or re-opens the breaker.
    HalfOpen = 2,
}

/// Backoff of the open breaker after `n` restarts in a row: 1 s doubling to 60 s, ±25 % jitter.
pub fn circuit_backoff(n: u32) -> Duration {
    use rand::Rng;
    let base = 1000u64
        .saturating_mul(1u64 << n.saturating_sub(1).min(6))
        .min(60_000);
    Duration::from_millis((base as f64 * rand::thread_rng().gen_range(0.75..1.25)) as u64)
}

/// Builds a fresh backend connection.
pub type BackendFactory =
    Arc<dyn Fn() -> Result<Arc<dyn SecretBackend>, BackendError> + Send + Sync + 'static>;

/// The actor.
pub struct ProviderConnection {
    name: String,
    factory: BackendFactory,
    backend: Option<Arc<dyn SecretBackend>>,
    build_error: Option<BackendError>,
    timeout: Duration,
    consecutive_failures: u32,
    /// Circuit breaker: restarts without a success in between (drives the backoff).
    restarts_in_row: u32,
    /// Circuit breaker: open (fail fast) until then.
    open_until: Option<Instant>,
    /// Circuit breaker: the one trial request of the half-open state is in flight.
    trial_in_flight: bool,
    /// Token bucket as GCRA: (emission interval, burst tolerance, theoretical arrival time).
    limiter: Option<(Duration, Duration, Instant)>,
    up: bool,
    metrics: Arc<Metrics>,
    mailbox: usize,
    /// The pending probe while the provider is down (None while it is up: no timer at all).
    probe_timer: Option<SpawnHandle>,
}

/// How often a provider that is down is probed (within the circuit breaker's backoff).
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

impl ProviderConnection {
    /// A connection for provider `name`; nothing is built until the actor starts.
    pub fn new(
        name: String,
        factory: BackendFactory,
        timeout: Duration,
        metrics: Arc<Metrics>,
        mailbox: usize,
    ) -> Self {
        Self {
            name,
            factory,
            backend: None,
            build_error: None,
            timeout,
            consecutive_failures: 0,
            restarts_in_row: 0,
            open_until: None,
            trial_in_flight: false,
            limiter: None,
            up: false,
            metrics,
            mailbox,
            probe_timer: None,
        }
    }

    /// While the provider is down, makes sure one probe is scheduled: in [`PROBE_INTERVAL`], or
    /// when the open breaker allows the next trial if that is later. Nothing while it is up.
    fn schedule_probe(&mut self, ctx: &mut Context<Self>) {
        if self.up || self.probe_timer.is_some() {
            return;
        }
        let mut delay = PROBE_INTERVAL;
        if let Some(until) = self.open_until {
            delay = delay.max(until.saturating_duration_since(Instant::now()));
        }
        self.probe_timer = Some(ctx.run_later(delay, |act, ctx| {
            act.probe_timer = None;
            if !act.up && act.circuit() != CircuitState::Open {
                act.probe(ctx);
            }
            act.schedule_probe(ctx);
        }));
    }

    /// Limits requests to `rate` per second with bursts of `burst` (None: unlimited). Requests over
    /// the limit wait for their turn; they are not refused.
    pub fn with_rate_limit(mut self, limit: Option<(f64, u32)>) -> Self {
        self.limiter = limit.filter(|(r, _)| *r > 0.0).map(|(rate, burst)| {
            let interval = Duration::from_secs_f64(1.0 / rate);
            (interval, interval * burst.saturating_sub(1), Instant::now())
        });
        self
    }

    /// How long the next request must wait for a token (and takes it).
    fn take_token(&mut self) -> Duration {
        let Some((interval, tolerance, tat)) = self.limiter.as_mut() else {
            return Duration::ZERO;
        };
        let now = Instant::now();
        let start = (*tat).max(now);
        let wait = start.saturating_duration_since(now + *tolerance);
        *tat = start + *interval;
        wait
    }

    fn label(&self) -> ProviderLabel {
        ProviderLabel {
            provider: self.name.clone(),
        }
    }

    fn set_up(&mut self, up: bool) {
        self.up = up;
        self.metrics
            .provider_up
            .get_or_create(&self.label())
            .set(i64::from(up));
    }

    fn connect(&mut self) {
        match (self.factory)() {
            Ok(b) => {
                self.backend = Some(b);
                self.build_error = None;
            }
            Err(e) => {
                tracing::error!(provider = %self.name, error = %e, "cannot build provider connection");
                self.backend = None;
                self.build_error = Some(e);
            }
        }
    }

    fn set_circuit(&mut self, state: CircuitState) {
        self.metrics
            .provider_circuit_state
            .get_or_create(&self.label())
            .set(state as i64);
    }

    /// Where the breaker stands now; moves open → half-open when the backoff has passed.
    fn circuit(&mut self) -> CircuitState {
        match self.open_until {
            None => CircuitState::Closed,
            Some(t) if Instant::now() < t => CircuitState::Open,
            Some(_) => {
                self.set_circuit(CircuitState::HalfOpen);
                CircuitState::HalfOpen
            }
        }
    }

    /// Records an outcome; stops the actor (→ restart) after too many failures in a row.
    fn record(&mut self, ok_or_answer: bool, ctx: &mut Context<Self>) {
        let was_trial = std::mem::take(&mut self.trial_in_flight);
        if ok_or_answer {
            if self.open_until.take().is_some() {
                tracing::info!(provider = %self.name, "circuit closed: the backend answers again");
            }
            self.restarts_in_row = 0;
            self.set_circuit(CircuitState::Closed);
            self.consecutive_failures = 0;
            if !self.up {
                tracing::info!(provider = %self.name, "provider reachable");
            }
            self.set_up(true);
            return;
        }
        self.set_up(false);
        self.schedule_probe(ctx);
        if was_trial {
            // The half-open trial failed: open again, for longer.
            self.restarts_in_row += 1;
            self.open(ctx);
            return;
        }
        self.consecutive_failures += 1;
        if self.consecutive_failures >= MAX_CONSECUTIVE_FAILURES {
            tracing::warn!(
                provider = %self.name,
                failures = self.consecutive_failures,
                "too many consecutive failures; restarting the provider connection"
            );
            ctx.stop();
        }
    }

    /// Opens the breaker for the current backoff.
    fn open(&mut self, _ctx: &mut Context<Self>) {
        let delay = circuit_backoff(self.restarts_in_row);
        self.open_until = Some(Instant::now() + delay);
        self.set_circuit(CircuitState::Open);
        tracing::warn!(
            provider = %self.name,
            retry_in_ms = delay.as_millis() as u64,
            "circuit open: not calling the backend until the next trial"
        );
    }

    fn probe(&mut self, ctx: &mut Context<Self>) {
        let Some(backend) = self.backend.clone() else {
            self.set_up(false);
            self.schedule_probe(ctx);
            return;
        };
        match self.circuit() {
            CircuitState::Open => return,
            CircuitState::HalfOpen if self.trial_in_flight => return,
            CircuitState::HalfOpen => self.trial_in_flight = true,
            CircuitState::Closed => {}
        }
        let timeout = self.timeout;
        async move {
            match tokio::time::timeout(timeout, backend.probe()).await {
                Ok(r) => r,
                Err(_) => Err(BackendError::Timeout(timeout)),
            }
        }
        .into_actor(self)
        .map(|res, act, ctx| {
            let ok = res.is_ok();
            if let Err(e) = &res {
                tracing::warn!(provider = %act.name, error = %e, "provider probe failed");
            }
            if act.trial_in_flight {
                act.record(ok, ctx);
                return;
            }
            // A failed probe marks the provider down but does not count toward a restart.
            act.set_up(ok);
            act.schedule_probe(ctx);
        })
        .spawn(ctx);
    }
}

impl Actor for ProviderConnection {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // `agent.queue_capacity`: the Cache's `Fetch`/`FetchVersion` misses (`send`: they wait).
        ctx.set_mailbox_capacity(self.mailbox);
        // Every provider has its series from the start (a 0 is a fact; an absent series is not).
        let _ = self.metrics.provider_restarts.get_or_create(&self.label());
        let _ = self
            .metrics
            .provider_request_duration
            .get_or_create(&self.label());
        for result in [
            "ok",
            "not_found",
            "denied",
            "unavailable",
            "timeout",
            "config",
        ] {
            let _ = self
                .metrics
                .provider_requests
                .get_or_create(&ProviderResultLabel {
                    provider: self.name.clone(),
                    result: result.to_string(),
                });
        }
        let _ = self
            .metrics
            .provider_circuit_state
            .get_or_create(&self.label());
        self.consecutive_failures = 0;
        self.trial_in_flight = false;
        self.connect();
        if self.restarts_in_row > 0 {
            // Restarted after repeated failures: back off before touching the backend again.
            self.open(ctx);
        }
        self.probe_timer = None;
        self.probe(ctx);
        // While down, probe (every second, within the breaker's backoff) so readiness and the
        // circuit recover without traffic. Up, nothing wakes this actor but requests.
        self.schedule_probe(ctx);
    }
}

impl actix::Supervised for ProviderConnection {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        self.metrics
            .provider_restarts
            .get_or_create(&self.label())
            .inc();
        tracing::info!(provider = %self.name, "provider connection restarting");
        self.backend = None;
        self.restarts_in_row += 1;
    }
}

type BackendCall<T> = Box<
    dyn FnOnce(
            Arc<dyn SecretBackend>,
        ) -> futures_util::future::BoxFuture<'static, Result<T, BackendError>>
        + Send,
>;

impl ProviderConnection {
    /// Runs one backend request through the breaker, the token bucket and the timeout, and counts it.
    fn call<T: Send + 'static>(
        &mut self,
        op: BackendCall<T>,
    ) -> ResponseActFuture<Self, Result<T, BackendError>> {
        let fail_fast = match self.circuit() {
            CircuitState::Closed => false,
            CircuitState::Open => true,
            CircuitState::HalfOpen if self.trial_in_flight => true,
            CircuitState::HalfOpen => {
                self.trial_in_flight = true;
                false
            }
        };
        if fail_fast {
            self.metrics
                .provider_requests
                .get_or_create(&ProviderResultLabel {
                    provider: self.name.clone(),
                    result: "circuit_open".to_string(),
                })
                .inc();
            let msg = format!(
                "circuit open after repeated failures of provider `{}`; retrying the backend shortly",
                self.name
            );
            return Box::pin(actix::fut::ready(Err(BackendError::Unavailable(msg))));
        }
        let backend = self.backend.clone();
        let build_error = self.build_error.clone();
        let timeout = self.timeout;
        let started = Instant::now();
        let wait = self.take_token();
        Box::pin(
            async move {
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                let Some(backend) = backend else {
                    return Err(build_error.unwrap_or_else(|| {
                        BackendError::Unavailable("connection not built".to_string())
                    }));
                };
                match tokio::time::timeout(timeout, op(backend)).await {
                    Ok(r) => r,
                    Err(_) => Err(BackendError::Timeout(timeout)),
                }
            }
            .into_actor(self)
            .map(move |res, act, ctx| {
                let result = match &res {
                    Ok(_) => "ok",
                    Err(e) => e.metric_label(),
                };
                act.metrics
                    .provider_requests
                    .get_or_create(&ProviderResultLabel {
                        provider: act.name.clone(),
                        result: result.to_string(),
                    })
                    .inc();
                act.metrics
                    .provider_request_duration
                    .get_or_create(&act.label())
                    .observe(started.elapsed().as_secs_f64());
                let healthy = match &res {
                    Ok(_) => true,
                    Err(e) => !e.is_connection_failure() && !matches!(e, BackendError::Config(_)),
                };
                act.record(healthy, ctx);
                res
            }),
        )
    }
}

impl Handler<Fetch> for ProviderConnection {
    type Result = ResponseActFuture<Self, Result<Fetched, BackendError>>;

    fn handle(&mut self, msg: Fetch, _ctx: &mut Self::Context) -> Self::Result {
        self.call(Box::new(move |b| {
            Box::pin(async move { b.fetch_versioned(&msg.path).await })
        }))
    }
}

impl Handler<FetchVersion> for ProviderConnection {
    type Result = ResponseActFuture<Self, Result<Option<String>, BackendError>>;

    fn handle(&mut self, msg: FetchVersion, _ctx: &mut Self::Context) -> Self::Result {
        self.call(Box::new(move |b| {
            Box::pin(async move { b.version(&msg.path).await })
        }))
    }
}

impl Handler<IsUp> for ProviderConnection {
    type Result = bool;

    fn handle(&mut self, _msg: IsUp, _ctx: &mut Self::Context) -> bool {
        self.up
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretData;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// A backend whose probe fails until told otherwise, counting probes.
    #[derive(Default)]
    struct Probed {
        down: AtomicBool,
        probes: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl SecretBackend for Probed {
        async fn fetch(&self, path: &str) -> Result<SecretData, BackendError> {
            Err(BackendError::NotFound {
                path: path.to_string(),
            })
        }

        async fn probe(&self) -> Result<(), BackendError> {
            self.probes.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err(BackendError::Unavailable("down".into()));
            }
            Ok(())
        }
    }

    /// Down, the provider is probed about every second until it answers; up, no timer is left:
    /// nothing probes it (nor wakes it) any more.
    #[actix_rt::test]
    async fn a_down_provider_is_probed_until_up_then_left_alone() {
        let backend = Arc::new(Probed::default());
        backend.down.store(true, Ordering::SeqCst);
        let (metrics, _registry) = Metrics::new("test");
        let b = backend.clone();
        let addr = actix::Supervisor::start(move |_| {
            ProviderConnection::new(
                "p".into(),
                Arc::new(move || Ok(b.clone() as Arc<dyn SecretBackend>)),
                Duration::from_secs(5),
                metrics.clone(),
                100,
            )
        });
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let probes = backend.probes.load(Ordering::SeqCst);
        assert!(probes >= 2, "probed while down ({probes})");
        assert!(!addr.send(IsUp).await.unwrap());

        backend.down.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(addr.send(IsUp).await.unwrap(), "up after the next probe");
        let up_at = backend.probes.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(
            backend.probes.load(Ordering::SeqCst),
            up_at,
            "no probe while up"
        );
    }
}
