//! Cache: one actor holding fetched secrets for `ttl`, keyed by (provider, path).
//!
//! Concurrent misses for the same key cause one backend fetch: the first miss starts it, the others
//! wait on it. Entries are bounded by `max_entries` (oldest evicted first) and zeroed when dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::messages::{Fetch, FetchError, GetSecret};
use crate::metrics::Metrics;
use crate::provider::ProviderConnection;
use crate::secret::SecretData;

type Key = (String, String);
type Waiter = oneshot::Sender<Result<SecretData, FetchError>>;

struct Entry {
    data: SecretData,
    fetched: Instant,
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
}

/// The actor.
pub struct Cache {
    settings: CacheSettings,
    providers: HashMap<String, Addr<ProviderConnection>>,
    entries: HashMap<Key, Entry>,
    pending: HashMap<Key, Vec<Waiter>>,
    metrics: Arc<Metrics>,
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
        }
    }

    fn sweep(&mut self) {
        let ttl = self.settings.ttl;
        self.entries.retain(|_, e| e.fetched.elapsed() < ttl);
        self.metrics.cache_entries.set(self.entries.len() as i64);
    }

    fn insert(&mut self, key: Key, data: SecretData) {
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
        self.entries.insert(
            key,
            Entry {
                data,
                fetched: Instant::now(),
            },
        );
        self.metrics.cache_entries.set(self.entries.len() as i64);
    }
}

impl Actor for Cache {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.settings.mailbox);
        let every = (self.settings.ttl / 2).max(Duration::from_secs(1));
        ctx.run_interval(every, |act, _| act.sweep());
    }
}

impl Handler<GetSecret> for Cache {
    type Result = ResponseFuture<Result<SecretData, FetchError>>;

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
            if let Ok(data) = &res {
                act.insert(key.clone(), data.clone());
            }
            for w in act.pending.remove(&key).unwrap_or_default() {
                let _ = w.send(res.clone());
            }
        })
        .spawn(ctx);
        receive
    }
}
