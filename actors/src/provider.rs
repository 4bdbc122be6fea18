//! ProviderConnection: one actor per configured backend, owning its one connection.
//!
//! Every request carries the provider's timeout. After [`MAX_CONSECUTIVE_FAILURES`] connection
//! failures in a row the actor stops itself; its `actix::Supervisor` restarts it, which drops the
//! connection and builds a new one from the factory (re-reading tokens, re-authenticating), and
//! counts `dso_provider_restarts_total`. Answers such as "not found" are not failures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::backend::{BackendError, SecretBackend};
use crate::messages::{Fetch, IsUp};
use crate::metrics::{Metrics, ProviderLabel, ProviderResultLabel};
use crate::secret::SecretData;

/// Consecutive connection failures that restart the actor.
pub const MAX_CONSECUTIVE_FAILURES: u32 = 5;

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
    up: bool,
    metrics: Arc<Metrics>,
    mailbox: usize,
}

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
            up: false,
            metrics,
            mailbox,
        }
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

    /// Records an outcome; stops the actor (→ restart) after too many failures in a row.
    fn record(&mut self, ok_or_answer: bool, ctx: &mut Context<Self>) {
        if ok_or_answer {
            self.consecutive_failures = 0;
            if !self.up {
                tracing::info!(provider = %self.name, "provider reachable");
            }
            self.set_up(true);
            return;
        }
        self.consecutive_failures += 1;
        self.set_up(false);
        if self.consecutive_failures >= MAX_CONSECUTIVE_FAILURES {
            tracing::warn!(
                provider = %self.name,
                failures = self.consecutive_failures,
                "too many consecutive failures; restarting the provider connection"
            );
            ctx.stop();
        }
    }

    fn probe(&mut self, ctx: &mut Context<Self>) {
        let Some(backend) = self.backend.clone() else {
            self.set_up(false);
            return;
        };
        let timeout = self.timeout;
        async move {
            match tokio::time::timeout(timeout, backend.probe()).await {
                Ok(r) => r,
                Err(_) => Err(BackendError::Timeout(timeout)),
            }
        }
        .into_actor(self)
        .map(|res, act, _ctx| {
            let ok = res.is_ok();
            if let Err(e) = &res {
                tracing::warn!(provider = %act.name, error = %e, "provider probe failed");
            }
            // A failed probe marks the provider down but does not count toward a restart.
            act.set_up(ok);
        })
        .spawn(ctx);
    }
}

impl Actor for ProviderConnection {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
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
        self.consecutive_failures = 0;
        self.connect();
        self.probe(ctx);
        // While down, probe every 10 s so readiness recovers without traffic.
        ctx.run_interval(Duration::from_secs(10), |act, ctx| {
            if !act.up {
                act.probe(ctx);
            }
        });
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
    }
}

impl Handler<Fetch> for ProviderConnection {
    type Result = ResponseActFuture<Self, Result<SecretData, BackendError>>;

    fn handle(&mut self, msg: Fetch, _ctx: &mut Self::Context) -> Self::Result {
        let backend = self.backend.clone();
        let build_error = self.build_error.clone();
        let timeout = self.timeout;
        let started = Instant::now();
        Box::pin(
            async move {
                let Some(backend) = backend else {
                    return Err(build_error.unwrap_or_else(|| {
                        BackendError::Unavailable("connection not built".to_string())
                    }));
                };
                match tokio::time::timeout(timeout, backend.fetch(&msg.path)).await {
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

impl Handler<IsUp> for ProviderConnection {
    type Result = bool;

    fn handle(&mut self, _msg: IsUp, _ctx: &mut Self::Context) -> bool {
        self.up
    }
}
