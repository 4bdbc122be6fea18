//! Cache: one actor holding fetched secrets for `ttl`, keyed by (provider, path).
//!
//! Concurrent misses for the same key cause one backend fetch: the first miss starts it, the others
//! wait on it. Entries are bounded by `max_entries` (oldest evicted first) and zeroed when dropped.
//!
//! Refreshes are driven by one timer set to the earliest `next_check` of a subscribed entry (never
//! a poll): with nothing subscribed the Cache does not wake up at all, and under load its timer
//! fires at most every [`REFRESH_GRANULARITY`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::backend::Fetched;
use crate::messages::{
    CheckNow, Fetch, FetchError, FetchVersion, GetSecret, SecretChanged, Subscribe, Unsubscribe,
};
use crate::metrics::Metrics;
use crate::provider::ProviderConnection;

type Key = (String, String);

/// Least time between two refresh passes: deadlines closer together than this are served by one pass.
pub const REFRESH_GRANULARITY: Duration = Duration::from_millis(100);
type Waiter = oneshot::Sender<Result<Fetched, FetchError>>;

struct Entry {
    data: Fetched,
    fetched: Instant,
    /// When a subscribed entry is checked against the backend next (jittered).
    next_check: Instant,
}

/// Cache settings.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// How long a fetched value is served without asking the backend again.
    pub ttl: Duration,
    /// Most entries held.
    pub max_entries: usize,
    /// Mailbox capacity.
    pub mailbox: usize,
    /// Per provider: how often subscribed secrets are re-checked (absent: never).
    pub refresh: HashMap<String, Duration>,
    /// How long past `ttl` a value may still be served while its backend is down.
    pub max_stale: Duration,
}

/// True for failures of the backend itself (not answers such as "not found").
fn is_outage(e: &FetchError) -> bool {
    match e {
        FetchError::Backend { source, .. } => {
            matches!(
                source,
                crate::backend::BackendError::Unavailable(_)
                    | crate::backend::BackendError::Timeout(_)
            )
        }
        FetchError::ProviderGone(_) => true,
        FetchError::UnknownProvider(_) => false,
    }
}

/// The actor.
pub struct Cache {
    settings: CacheSettings,
    providers: HashMap<String, Addr<ProviderConnection>>,
    entries: HashMap<Key, Entry>,
    pending: HashMap<Key, Vec<Waiter>>,
    metrics: Arc<Metrics>,
    subs: HashMap<String, Vec<Key>>,
    refcount: HashMap<Key, usize>,
    changes: Option<Recipient<SecretChanged>>,
    /// Providers whose backend said it has no cheap version: refreshed by fetching.
    no_versions: HashSet<String>,
    /// The refresh timer: when it fires and its handle (None: nothing subscribed, no timer).
    refresh_timer: Option<(Instant, SpawnHandle)>,
    /// When the last refresh pass ran (passes are at least [`REFRESH_GRANULARITY`] apart).
    last_pass: Option<Instant>,
}

/// How one periodic check of a subscribed secret ended.
enum Checked {
    /// The backend's version equals the cached one: nothing to fetch.
    Unchanged,
    /// Fetched (the version differed, or the backend has none).
    Fetched(Fetched),
    /// The backend could not answer.
    Failed(String),
}

impl Cache {
    /// A cache in front of these provider connections.
    pub fn new(
        settings: CacheSettings,
        providers: HashMap<String, Addr<ProviderConnection>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            settings,
            providers,
            entries: HashMap::new(),
            pending: HashMap::new(),
            metrics,
            subs: HashMap::new(),
            refcount: HashMap::new(),
            changes: None,
            no_versions: HashSet::new(),
            refresh_timer: None,
            last_pass: None,
        }
    }

    /// Makes sure a refresh pass runs no later than `due` (or [`REFRESH_GRANULARITY`] after the
    /// last pass, whichever is later). A timer already set earlier is kept.
    fn arm_refresh(&mut self, due: Instant, ctx: &mut Context<Self>) {
        let due = match self.last_pass {
            Some(last) => due.max(last + REFRESH_GRANULARITY),
            None => due,
        };
        if let Some((at, handle)) = self.refresh_timer {
            if at <= due {
                return;
            }
            ctx.cancel_future(handle);
        }
        let handle = ctx.run_later(due.saturating_duration_since(Instant::now()), |act, ctx| {
            act.refresh_timer = None;
            act.refresh_due(ctx);
        });
        self.refresh_timer = Some((due, handle));
    }

    /// Arms the refresh timer for `key` when it is subscribed and cached.
    fn arm_for(&mut self, key: &Key, ctx: &mut Context<Self>) {
        if !self.refcount.contains_key(key) {
            return;
        }
        if let Some(at) = self.entries.get(key).map(|e| e.next_check) {
            self.arm_refresh(at, ctx);
        }
    }

    /// Stores a value fetched to check for changes; when it differs from the cached one, announces
    /// the change (the Injectors rotate it). Returns whether it changed.
    fn store_checked(
        &mut self,
        key: Key,
        data: Fetched,
        checked_by: &'static str,
        ctx: &mut Context<Self>,
    ) -> bool {
        // Values are compared, not versions: a new version with the same content changes nothing.
        let changed = self
            .entries
            .get(&key)
            .is_some_and(|e| e.data.data != data.data);
        self.insert(key.clone(), data, ctx);
        if changed {
            tracing::info!(provider = %key.0, path = %key.1, checked_by, "secret changed in its backend");
            if let Some(to) = &self.changes {
                let _ = to.try_send(SecretChanged {
                    provider: key.0,
                    path: key.1,
                });
            }
        }
        changed
    }

    /// Where changed secrets are announced.
    pub fn with_changes(mut self, to: Recipient<SecretChanged>) -> Self {
        self.changes = Some(to);
        self
    }

    fn next_check(&self, provider: &str) -> Instant {
        let every = self
            .settings
            .refresh
            .get(provider)
            .copied()
            .unwrap_or(Duration::from_secs(3600 * 24 * 365));
        // ±10 % jitter so secrets fetched together are not re-checked together.
        let jitter = rand::random::<f64>() * 0.2 + 0.9;
        Instant::now() + every.mul_f64(jitter)
    }

    /// Re-fetches subscribed entries that are due; announces values that changed. Re-arms the
    /// timer for the earliest deadline left (none when nothing is subscribed).
    fn refresh_due(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        self.last_pass = Some(now);
        let mut due: Vec<Key> = Vec::new();
        let mut next: Option<Instant> = None;
        for (k, e) in &self.entries {
            if !self.refcount.contains_key(k) {
                continue;
            }
            if e.next_check <= now && !self.pending.contains_key(k) {
                due.push(k.clone());
            } else if e.next_check > now {
                next = Some(next.map_or(e.next_check, |n| n.min(e.next_check)));
            } else {
                // Due but its previous check is still in flight: look again shortly.
                next = Some(now + REFRESH_GRANULARITY);
            }
        }
        for key in due {
            let Some(provider) = self.providers.get(&key.0).cloned() else {
                continue;
            };
            // Not due again until this check finished (or the next interval).
            let next_check = self.next_check(&key.0);
            if let Some(e) = self.entries.get_mut(&key) {
                e.next_check = next_check;
            }
            next = Some(next.map_or(next_check, |n| n.min(next_check)));
            self.pending.insert(key.clone(), Vec::new());
            let path = key.1.clone();
            // Ask for the version first where the backend has one (a metadata read, no value).
            let known = if self.no_versions.contains(&key.0) {
                None
            } else {
                self.entries.get(&key).and_then(|e| e.data.version.clone())
            };
            async move {
                let mut versionless = false;
                if let Some(known) = known {
                    match provider.send(FetchVersion { path: path.clone() }).await {
                        Ok(Ok(Some(v))) if v == known => return (Checked::Unchanged, false),
                        Ok(Ok(Some(_))) => {}
                        Ok(Ok(None)) => versionless = true,
                        Ok(Err(e)) => return (Checked::Failed(e.to_string()), false),
                        Err(_) => return (Checked::Failed("provider restarting".into()), false),
                    }
                }
                let checked = match provider.send(Fetch { path }).await {
                    Ok(Ok(data)) => Checked::Fetched(data),
                    Ok(Err(e)) => Checked::Failed(e.to_string()),
                    Err(_) => Checked::Failed("provider restarting".into()),
                };
                (checked, versionless)
            }
                .into_actor(self)
                .map(move |(res, versionless), act, ctx| {
                    if versionless {
                        act.no_versions.insert(key.0.clone());
                    }
                    let waiters = act.pending.remove(&key).unwrap_or_default();
                    match res {
                        Checked::Unchanged => {
                            if let Some(e) = act.entries.get_mut(&key) {
                                // Confirmed current: serve it for another ttl.
                                e.fetched = Instant::now();
                                for w in waiters {
                                    let _ = w.send(Ok(e.data.clone()));
                                }
                            }
                        }
                        Checked::Fetched(data) => {
                            for w in waiters {
                                let _ = w.send(Ok(data.clone()));
                            }
                            act.store_checked(key.clone(), data, "refresh", ctx);
                        }
                        Checked::Failed(msg) => {
                            // Keep serving the value we have; try again at the next interval.
                            tracing::warn!(provider = %key.0, path = %key.1, error = %msg, "refresh failed; keeping the current value");
                            for w in waiters {
                                let _ = w.send(Err(FetchError::ProviderGone(key.0.clone())));
                            }
                        }
                    }
                })
                .spawn(ctx);
        }
        if let Some(at) = next {
            self.arm_refresh(at, ctx);
        }
    }

    fn sweep(&mut self) {
        let ttl = self.settings.ttl;
        let refcount = &self.refcount;
        // Secrets in use stay (they are refreshed); the others are kept for stale-if-error until
        // ttl + max_stale, then dropped (and zeroed).
        let keep = ttl + self.settings.max_stale;
        self.entries
            .retain(|k, e| refcount.contains_key(k) || e.fetched.elapsed() < keep);
        self.metrics.cache_entries.set(self.entries.len() as i64);
    }

    fn insert(&mut self, key: Key, data: Fetched, ctx: &mut Context<Self>) {
        if self.entries.len() >= self.settings.max_entries && !self.entries.contains_key(&key) {
            self.sweep();
            if self.entries.len() >= self.settings.max_entries {
                if let Some(oldest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, e)| e.fetched)
                    .map(|(k, _)| k.clone())
                {
                    self.entries.remove(&oldest);
                }
            }
        }
        // A refresh already scheduled the next check when it was dispatched: keep that schedule
        // (re-scheduling at completion would stretch the period by the fetch time).
        let next_check = match self.entries.get(&key) {
            Some(e) if e.next_check > Instant::now() => e.next_check,
            _ => self.next_check(&key.0),
        };
        self.entries.insert(
            key.clone(),
            Entry {
                data,
                fetched: Instant::now(),
                next_check,
            },
        );
        self.metrics.cache_entries.set(self.entries.len() as i64);
        self.arm_for(&key, ctx);
    }
}

impl Actor for Cache {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // `agent.queue_capacity` (through `CacheSettings::mailbox`): every shard's `GetSecret`s
        // (`send`: they wait for room) and its `Subscribe`/`Unsubscribe` (`try_send`).
        ctx.set_mailbox_capacity(self.settings.mailbox);
        let every = (self.settings.ttl / 2).max(Duration::from_secs(1));
        ctx.run_interval(every, |act, _| act.sweep());
    }
}

impl Handler<GetSecret> for Cache {
    type Result = ResponseFuture<Result<Fetched, FetchError>>;

    fn handle(&mut self, msg: GetSecret, ctx: &mut Self::Context) -> Self::Result {
        let key: Key = (msg.source.provider.clone(), msg.source.path.clone());
        if let Some(e) = self.entries.get(&key) {
            if e.fetched.elapsed() < self.settings.ttl {
                self.metrics.cache_hits.inc();
                let data = e.data.clone();
                return Box::pin(async move { Ok(data) });
            }
        }
        let (tx, rx) = oneshot::channel();
        let provider_name = key.0.clone();
        let receive = Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(FetchError::ProviderGone(provider_name)))
        });
        if let Some(waiters) = self.pending.get_mut(&key) {
            self.metrics.cache_coalesced.inc();
            waiters.push(tx);
            return receive;
        }
        self.metrics.cache_misses.inc();
        let Some(provider) = self.providers.get(&key.0).cloned() else {
            let _ = tx.send(Err(FetchError::UnknownProvider(key.0)));
            return receive;
        };
        self.pending.insert(key.clone(), vec![tx]);
        let path = key.1.clone();
        let name = key.0.clone();
        async move {
            match provider.send(Fetch { path }).await {
                Ok(Ok(data)) => Ok(data),
                Ok(Err(source)) => Err(FetchError::Backend {
                    provider: name,
                    source,
                }),
                Err(_) => Err(FetchError::ProviderGone(name)),
            }
        }
        .into_actor(self)
        .map(move |res, act, ctx| {
            let res = match res {
                Ok(data) => {
                    act.insert(key.clone(), data.clone(), ctx);
                    Ok(data)
                }
                // Stale-if-error: the backend cannot answer (down, timeout, restarting) but we
                // still hold a value younger than ttl + max_stale: serve it, and count it.
                Err(e) if is_outage(&e) => match act.entries.get(&key) {
                    Some(entry)
                        if entry.fetched.elapsed() < act.settings.ttl + act.settings.max_stale =>
                    {
                        let age = entry.fetched.elapsed();
                        act.metrics.cache_stale_served.inc();
                        act.metrics.secret_stale_seconds.set(age.as_secs() as i64);
                        tracing::warn!(
                            provider = %key.0,
                            path = %key.1,
                            age_s = age.as_secs(),
                            error = %e,
                            "backend unavailable; serving the last known value (stale-if-error)"
                        );
                        Ok(entry.data.clone())
                    }
                    _ => Err(e),
                },
                Err(e) => Err(e),
            };
            for w in act.pending.remove(&key).unwrap_or_default() {
                let _ = w.send(res.clone());
            }
        })
        .spawn(ctx);
        receive
    }
}

impl Handler<Subscribe> for Cache {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, ctx: &mut Self::Context) {
        let old = self
            .subs
            .insert(msg.container, msg.keys.clone())
            .unwrap_or_default();
        for k in &msg.keys {
            *self.refcount.entry(k.clone()).or_insert(0) += 1;
        }
        self.release(old);
        for k in &msg.keys {
            self.arm_for(k, ctx);
        }
    }
}

impl Handler<Unsubscribe> for Cache {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _ctx: &mut Self::Context) {
        if let Some(old) = self.subs.remove(&msg.container) {
            self.release(old);
        }
    }
}

impl Cache {
    fn release(&mut self, keys: Vec<Key>) {
        for k in keys {
            if let Some(n) = self.refcount.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    self.refcount.remove(&k);
                }
            }
        }
    }
}

impl Handler<CheckNow> for Cache {
    type Result = ResponseActFuture<Self, Result<bool, FetchError>>;

    /// Fetches one secret now; when its value differs from the cached one, the cache is updated and
    /// the change announced exactly as a periodic refresh would.
    fn handle(&mut self, msg: CheckNow, _ctx: &mut Self::Context) -> Self::Result {
        let key: Key = (msg.provider.clone(), msg.path.clone());
        let provider = self.providers.get(&key.0).cloned();
        Box::pin(
            async move {
                let Some(provider) = provider else {
                    return Err(FetchError::UnknownProvider(msg.provider));
                };
                match provider.send(Fetch { path: msg.path }).await {
                    Ok(Ok(data)) => Ok(data),
                    Ok(Err(source)) => Err(FetchError::Backend {
                        provider: msg.provider,
                        source,
                    }),
                    Err(_) => Err(FetchError::ProviderGone(msg.provider)),
                }
            }
            .into_actor(self)
            .map(move |res, act, ctx| {
                let data = res?;
                Ok(act.store_checked(key.clone(), data, "request", ctx))
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::SecretBackend;
    use crate::fake::FakeBackend;
    use crate::secret::{SecretData, SecretRef, SecretValue};

    fn cache_with(backend: Arc<FakeBackend>, refresh: Duration) -> Addr<Cache> {
        let (metrics, _registry) = Metrics::new("test");
        let m = metrics.clone();
        let provider = actix::Supervisor::start(move |_| {
            ProviderConnection::new(
                "p".into(),
                Arc::new(move || Ok(backend.clone() as Arc<dyn SecretBackend>)),
                Duration::from_secs(5),
                m,
                100,
            )
        });
        Cache::new(
            CacheSettings {
                ttl: Duration::from_secs(60),
                max_entries: 100,
                mailbox: 100,
                refresh: HashMap::from([("p".to_string(), refresh)]),
                max_stale: Duration::from_secs(3600),
            },
            HashMap::from([("p".to_string(), provider)]),
            metrics,
        )
        .start()
    }

    fn key() -> Key {
        ("p".to_string(), "db".to_string())
    }

    /// The refresh timer follows subscriptions: a cached secret nobody uses is never re-checked;
    /// subscribed, it is re-checked at each of its deadlines (no poll finds it: the timer is armed
    /// by the subscription and re-armed by each pass); unsubscribed, the checks stop.
    #[actix_rt::test]
    async fn refreshes_follow_subscriptions_without_polling() {
        let backend = FakeBackend::new();
        backend
            .versioned
            .store(true, std::sync::atomic::Ordering::SeqCst);
        backend.put("db", SecretData::Value(SecretValue::new(b"v1".to_vec())));
        let cache = cache_with(backend.clone(), Duration::from_millis(200));
        let source: SecretRef = "p/db".parse().unwrap();
        assert!(cache.send(GetSecret { source }).await.unwrap().is_ok());
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(
            backend.version_count(),
            0,
            "not subscribed: never re-checked"
        );

        cache
            .send(Subscribe {
                container: "c".into(),
                keys: vec![key()],
            })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(900)).await;
        let checks = backend.version_count();
        assert!(
            checks >= 2,
            "subscribed: re-checked at its deadlines ({checks})"
        );

        cache
            .send(Unsubscribe {
                container: "c".into(),
            })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = backend.version_count();
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(
            backend.version_count(),
            after,
            "unsubscribed: no more checks"
        );
    }
}
