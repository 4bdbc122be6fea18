//! Cache: one actor holding fetched secrets for `ttl`, keyed by (provider, path).
//!
//! Concurrent misses for the same key cause one backend fetch: the first miss starts it, the others
//! wait on it. Entries are bounded by `max_entries` (oldest evicted first) and zeroed when dropped.

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
        }
    }

    /// Stores a value fetched to check for changes; when it differs from the cached one, announces
    /// the change (the Injectors rotate it). Returns whether it changed.
    fn store_checked(&mut self, key: Key, data: Fetched, checked_by: &'static str) -> bool {
        // Values are compared, not versions: a new version with the same content changes nothing.
        let changed = self
            .entries
            .get(&key)
            .is_some_and(|e| e.data.data != data.data);
        self.insert(key.clone(), data);
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

    /// Re-fetches subscribed entries that are due; announces values that changed.
    fn refresh_due(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let due: Vec<Key> = self
            .entries
            .iter()
            .filter(|(k, e)| {
                e.next_check <= now
                    && self.refcount.contains_key(*k)
                    && !self.pending.contains_key(*k)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            let Some(provider) = self.providers.get(&key.0).cloned() else {
                continue;
            };
            // Not due again until this check finished (or the next interval).
            let next = self.next_check(&key.0);
            if let Some(e) = self.entries.get_mut(&key) {
                e.next_check = next;
            }
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
                .map(move |(res, versionless), act, _ctx| {
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
                            act.store_checked(key.clone(), data, "refresh");
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

    fn insert(&mut self, key: Key, data: Fetched) {
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
            key,
            Entry {
                data,
                fetched: Instant::now(),
                next_check,
            },
        );
        self.metrics.cache_entries.set(self.entries.len() as i64);
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
        ctx.run_interval(Duration::from_millis(100), |act, ctx| act.refresh_due(ctx));
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
        .map(move |res, act, _ctx| {
            let res = match res {
                Ok(data) => {
                    act.insert(key.clone(), data.clone());
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

    fn handle(&mut self, msg: Subscribe, _ctx: &mut Self::Context) {
        let old = self
            .subs
            .insert(msg.container, msg.keys.clone())
            .unwrap_or_default();
        for k in msg.keys {
            *self.refcount.entry(k).or_insert(0) += 1;
        }
        self.release(old);
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
            .map(move |res, act, _ctx| {
                let data = res?;
                Ok(act.store_checked(key.clone(), data, "request"))
            }),
        )
    }
}
