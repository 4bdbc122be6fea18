//! Supervisor: builds the actor tree, restarts what stops, and runs the shutdown drain.
//!
//! ```text
//! Supervisor
//! ├── EventWatcher            (actix::Supervisor: restarted if it stops)
//! ├── Injector × shards       (container id → shard by a stable hash)
//! ├── ProviderConnection × N  (actix::Supervisor: restarted after 5 consecutive failures)
//! ├── Cache
//! └── Reconciler
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::join_all;

use crate::backend::Fetched;
use crate::cache::{Cache, CacheSettings};
use crate::direct::DirectWriter;
use crate::engine::ContainerEngine;
use crate::injector::{Injector, InjectorSettings, ShardRouter};
use crate::messages::{
    AgentStatus, CheckNow, ContainerJob, Drain, Fatal, FetchError, GetEngineHealth, GetReadiness,
    GetSecret, GetShardStatus, GetStatus, InjectNow, IsUp, ProviderStatus, Readiness, Reconcile,
    SecretChanged, Shutdown, StopWatching, Subscribe, Trigger, Unsubscribe,
};
use crate::metrics::Metrics;
use crate::provider::{BackendFactory, ProviderConnection};
use crate::reconciler::Reconciler;
use crate::spec::{SecretRule, Target};
use crate::watcher::EventWatcher;

/// One configured backend.
pub struct ProviderSpec {
    /// Provider name (the `<provider>` of references).
    pub name: String,
    /// Builds its connection (called again on every restart).
    pub factory: BackendFactory,
    /// Per-request timeout.
    pub timeout: Duration,
    /// How often secrets in use are re-checked for changes (None: never).
    pub refresh_interval: Option<Duration>,
    /// Token bucket: (requests per second, burst); None: unlimited.
    pub rate_limit: Option<(f64, u32)>,
}

/// Settings of the whole tree.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// Number of injector shards (4–32).
    pub shards: usize,
    /// Mailbox and queue capacity (`agent.queue_capacity`) of the Supervisor, each Injector shard
    /// (and its job queue), the Cache, each ProviderConnection and the Restarter. The EventWatcher
    /// and the Reconciler have small fixed ones ([`crate::watcher::WATCHER_MAILBOX`],
    /// [`crate::reconciler::RECONCILER_MAILBOX`]): see why there.
    pub queue_capacity: usize,
    /// Containers one shard works on at once (inspect, fetch, write).
    pub shard_concurrency: usize,
    /// `docker exec`s running at once, all shards together (one semaphore shared by the shards).
    pub exec_concurrency: usize,
    /// Cache TTL.
    pub cache_ttl: Duration,
    /// Most cache entries.
    pub cache_max_entries: usize,
    /// Stale-if-error window past the TTL.
    pub cache_max_stale: Duration,
    /// `[[secrets]]` rules.
    pub rules: Arc<Vec<SecretRule>>,
    /// Manage only matching containers.
    pub scope: Option<Target>,
    /// `[[access]]` rules: which container may receive which reference (empty: all).
    pub access: Arc<crate::access::AccessRules>,
    /// Failed Docker reconnects in a row before exiting.
    pub docker_max_reconnects: u32,
    /// Periodic reconcile (None: off).
    pub reconcile_interval: Option<Duration>,
    /// Longest wait for in-flight injections on shutdown.
    pub drain_timeout: Duration,
    /// Per-host key of the content digests written to `.ready`.
    pub digest_key: Arc<zeroize::Zeroizing<Vec<u8>>>,
    /// Changes that arrive within this window are applied together.
    pub rotation_debounce: Duration,
    /// Where deliveries, rotations and refusals are recorded.
    pub audit: Option<Recipient<crate::messages::AuditRecord>>,
    /// Most random extra wait between restarts of one Compose service's containers.
    pub restart_splay: Duration,
    /// Rotations in flight at once, agent-wide.
    pub max_concurrent_rotations: usize,
}

/// The root actor.
pub struct Supervisor {
    engine: Arc<dyn ContainerEngine>,
    direct: Option<Arc<dyn DirectWriter>>,
    providers: Vec<ProviderSpec>,
    settings: AgentSettings,
    metrics: Arc<Metrics>,
    tree: Option<Tree>,
}

struct Tree {
    watcher: Addr<EventWatcher>,
    router: ShardRouter,
    providers: Vec<(String, Addr<ProviderConnection>)>,
    reconciler: Addr<Reconciler>,
    cache: Addr<Cache>,
}

/// Addresses the binary's edges (HTTP, signals) use.
#[derive(Clone)]
pub struct Handles {
    /// The supervisor.
    pub supervisor: Addr<Supervisor>,
}

impl Supervisor {
    /// A supervisor for this engine and these providers. `direct`: the writer of the direct
    /// path, handed to every injector shard (None: every write is an exec, `write_mode = "exec"`).
    pub fn new(
        engine: Arc<dyn ContainerEngine>,
        direct: Option<Arc<dyn DirectWriter>>,
        providers: Vec<ProviderSpec>,
        settings: AgentSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            engine,
            direct,
            providers,
            settings,
            metrics,
            tree: None,
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let cap = self.settings.queue_capacity;
        // Mailbox: `agent.queue_capacity`. The Supervisor takes the Cache's `SecretChanged`
        // announcements (a burst when many keys rotate together; a full mailbox there is counted
        // and repaired by a reconcile) and the admin and HTTP requests (`send`: they wait for
        // room). The operator's one knob for work waiting per actor bounds it, like the others.
        ctx.set_mailbox_capacity(cap);
        let mut provider_addrs = Vec::new();
        let mut by_name = HashMap::new();
        let mut refresh = HashMap::new();
        for p in self.providers.drain(..) {
            if let Some(every) = p.refresh_interval {
                refresh.insert(p.name.clone(), every);
            }
            let metrics = self.metrics.clone();
            let (name, factory, timeout, limit) =
                (p.name.clone(), p.factory.clone(), p.timeout, p.rate_limit);
            let addr = actix::Supervisor::start(move |_| {
                ProviderConnection::new(name, factory, timeout, metrics, cap).with_rate_limit(limit)
            });
            by_name.insert(p.name.clone(), addr.clone());
            provider_addrs.push((p.name, addr));
        }
        let cache = Cache::new(
            CacheSettings {
                ttl: self.settings.cache_ttl,
                max_entries: self.settings.cache_max_entries,
                mailbox: cap,
                refresh,
                max_stale: self.settings.cache_max_stale,
            },
            by_name,
            self.metrics.clone(),
        )
        .with_changes(ctx.address().recipient())
        .start();

        // The reconciler and the shards refer to each other: take the reconciler's address first.
        let rctx: Context<Reconciler> = Context::new();
        let reconciler_addr = rctx.address();
        let restarter = crate::restarter::Restarter::new(
            self.engine.clone(),
            self.metrics.clone(),
            crate::restarter::RestarterSettings {
                splay: self.settings.restart_splay,
                ready_timeout: Duration::from_secs(120),
                mailbox: cap,
            },
        )
        .start();
        let injector_settings = InjectorSettings {
            concurrency: self.settings.shard_concurrency,
            queue_capacity: cap,
            rules: self.settings.rules.clone(),
            scope: self.settings.scope.clone(),
            access: self.settings.access.clone(),
            digest_key: self.settings.digest_key.clone(),
            rotation_debounce: self.settings.rotation_debounce,
            rotation_concurrency: self
                .settings
                .max_concurrent_rotations
                .div_ceil(self.settings.shards.max(1))
                .max(1),
            audit: self.settings.audit.clone(),
            restarter: Some(restarter),
            direct: self.direct.clone(),
            exec_permits: Some(Arc::new(tokio::sync::Semaphore::new(
                self.settings.exec_concurrency.max(1),
            ))),
        };
        let shards: Vec<Addr<Injector>> = (0..self.settings.shards)
            .map(|i| {
                Injector::new(
                    i,
                    self.engine.clone(),
                    cache.clone(),
                    Some(reconciler_addr.clone().recipient()),
                    injector_settings.clone(),
                    self.metrics.clone(),
                    cap,
                )
                .start()
            })
            .collect();
        let router = ShardRouter::new(shards);
        let reconciler = rctx.run(Reconciler::new(
            self.engine.clone(),
            router.clone(),
            self.settings.rules.clone(),
            self.settings.scope.clone(),
            self.metrics.clone(),
            self.settings.reconcile_interval,
        ));

        let (engine, r, rec, fatal, metrics, max) = (
            self.engine.clone(),
            router.clone(),
            reconciler.clone().recipient(),
            ctx.address().recipient(),
            self.metrics.clone(),
            self.settings.docker_max_reconnects,
        );
        let watcher = actix::Supervisor::start(move |_| {
            EventWatcher::new(engine, r, rec, fatal, metrics, max)
        });
        tracing::info!(
            shards = self.settings.shards,
            providers = provider_addrs.len(),
            "actor system started"
        );
        self.tree = Some(Tree {
            watcher,
            router,
            providers: provider_addrs,
            reconciler,
            cache,
        });
    }
}

impl Handler<GetReadiness> for Supervisor {
    type Result = ResponseFuture<Readiness>;

    fn handle(&mut self, _msg: GetReadiness, _ctx: &mut Self::Context) -> Self::Result {
        let Some(tree) = &self.tree else {
            return Box::pin(async { Readiness::default() });
        };
        let watcher = tree.watcher.clone();
        let providers = tree.providers.clone();
        Box::pin(async move {
            let engine = watcher.send(GetEngineHealth).await.unwrap_or_default();
            let ups = join_all(providers.iter().map(|(_, a)| a.send(IsUp))).await;
            Readiness {
                docker: engine.up,
                docker_error: engine.error,
                providers: providers
                    .iter()
                    .zip(ups)
                    .map(|((n, _), up)| (n.clone(), up.unwrap_or(false)))
                    .collect(),
            }
        })
    }
}

impl Handler<Reconcile> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Reconcile, _ctx: &mut Self::Context) {
        if let Some(t) = &self.tree {
            let _ = t.reconciler.try_send(msg);
        }
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _msg: Shutdown, _ctx: &mut Self::Context) -> Self::Result {
        let tree = self
            .tree
            .as_ref()
            .map(|t| (t.watcher.clone(), t.router.clone()));
        let timeout = self.settings.drain_timeout;
        Box::pin(
            async move {
                let Some((watcher, router)) = tree else {
                    return;
                };
                let _ = watcher.send(StopWatching).await;
                let drains = join_all(router.all().iter().map(|s| s.send(Drain)));
                if tokio::time::timeout(timeout, drains).await.is_err() {
                    tracing::warn!(
                        ?timeout,
                        "shutdown: in-flight injections did not finish in time"
                    );
                }
            }
            .into_actor(self)
            .map(|_, _, _| {
                tracing::info!("shutdown complete");
                System::current().stop_with_code(crate::exit::ExitCode::Ok.as_i32());
            }),
        )
    }
}

impl Handler<Fatal> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Fatal, _ctx: &mut Self::Context) {
        tracing::error!(code = msg.code.code(), "fatal: {}", msg.reason);
        System::current().stop_with_code(msg.code.as_i32());
    }
}

impl Handler<SecretChanged> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: SecretChanged, _ctx: &mut Self::Context) {
        let Some(t) = &self.tree else {
            return;
        };
        // Every shard checks its own containers; a full mailbox is counted and repaired by a
        // reconcile pass (which compares digests, so it also applies the new value).
        for shard in t.router.all() {
            if shard.try_send(msg.clone()).is_err() {
                self.metrics.dropped("mailbox_full");
                let _ = t.reconciler.try_send(Reconcile {
                    reason: "rotation fan-out overflow",
                });
            }
        }
    }
}

impl Handler<GetStatus> for Supervisor {
    type Result = ResponseFuture<AgentStatus>;

    fn handle(&mut self, _msg: GetStatus, _ctx: &mut Self::Context) -> Self::Result {
        let Some(t) = &self.tree else {
            return Box::pin(async { AgentStatus::default() });
        };
        let (watcher, providers, router) =
            (t.watcher.clone(), t.providers.clone(), t.router.clone());
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let engine = watcher.send(GetEngineHealth).await.unwrap_or_default();
            let ups = join_all(providers.iter().map(|(_, a)| a.send(IsUp))).await;
            let shards = join_all(router.all().iter().map(|s| s.send(GetShardStatus))).await;
            let mut containers: Vec<_> = shards.into_iter().flatten().flatten().collect();
            containers.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
            AgentStatus {
                version: metrics.build_info_version().unwrap_or_default(),
                docker: engine.up,
                docker_error: engine.error,
                providers: providers
                    .iter()
                    .zip(ups)
                    .map(|((name, _), up)| ProviderStatus {
                        name: name.clone(),
                        up: up.unwrap_or(false),
                    })
                    .collect(),
                containers,
                queue_depth: metrics.queue_depth.get(),
                cache_entries: metrics.cache_entries.get(),
            }
        })
    }
}

impl Handler<InjectNow> for Supervisor {
    type Result = ResponseFuture<Result<String, String>>;

    fn handle(&mut self, msg: InjectNow, _ctx: &mut Self::Context) -> Self::Result {
        let Some(t) = &self.tree else {
            return Box::pin(async { Err("agent is starting".to_string()) });
        };
        let (engine, router) = (self.engine.clone(), t.router.clone());
        Box::pin(async move {
            // Resolve a name to the full id: the shard is chosen by id.
            let info = engine.inspect(&msg.id).await.map_err(|e| e.to_string())?;
            let job = ContainerJob {
                id: info.id.clone(),
                trigger: Trigger::Manual,
                received: std::time::Instant::now(),
            };
            if router.route(job).await {
                Ok(info.id)
            } else {
                Err("injector shard unavailable".to_string())
            }
        })
    }
}

impl Handler<CheckNow> for Supervisor {
    type Result = ResponseFuture<Result<bool, FetchError>>;

    fn handle(&mut self, msg: CheckNow, _ctx: &mut Self::Context) -> Self::Result {
        let Some(t) = &self.tree else {
            return Box::pin(async { Ok(false) });
        };
        let cache = t.cache.clone();
        let provider = msg.provider.clone();
        Box::pin(async move {
            cache
                .send(msg)
                .await
                .unwrap_or(Err(FetchError::ProviderGone(provider)))
        })
    }
}

impl Handler<Subscribe> for Supervisor {
    type Result = ResponseFuture<()>;

    /// Keeps keys re-checked by the Cache for a `dso run --watch` (the admin socket's
    /// `/v1/resolve` with `watch`): its changes then come from the agent's one refresh loop.
    fn handle(&mut self, msg: Subscribe, _ctx: &mut Self::Context) -> Self::Result {
        let cache = self.tree.as_ref().map(|t| t.cache.clone());
        Box::pin(async move {
            if let Some(cache) = cache {
                let _ = cache.send(msg).await;
            }
        })
    }
}

impl Handler<Unsubscribe> for Supervisor {
    type Result = ResponseFuture<()>;

    /// Ends a `dso run --watch` subscription.
    fn handle(&mut self, msg: Unsubscribe, _ctx: &mut Self::Context) -> Self::Result {
        let cache = self.tree.as_ref().map(|t| t.cache.clone());
        Box::pin(async move {
            if let Some(cache) = cache {
                let _ = cache.send(msg).await;
            }
        })
    }
}

impl Handler<GetSecret> for Supervisor {
    type Result = ResponseFuture<Result<Fetched, FetchError>>;

    /// Reads one secret through the Cache (for `dso run` over the admin socket).
    fn handle(&mut self, msg: GetSecret, _ctx: &mut Self::Context) -> Self::Result {
        let provider = msg.source.provider.clone();
        let Some(t) = &self.tree else {
            return Box::pin(async move { Err(FetchError::ProviderGone(provider)) });
        };
        let cache = t.cache.clone();
        Box::pin(async move {
            cache
                .send(msg)
                .await
                .unwrap_or(Err(FetchError::ProviderGone(provider)))
        })
    }
}
