//! Restarter: applies the `restart` reload policy without taking a service down.
//!
//! Containers of the same Compose service (`com.docker.compose.project` +
//! `com.docker.compose.service` labels) restart one at a time: each waits until the previous one
//! is running again — and healthy, if it has a healthcheck — plus a random splay. Containers
//! outside Compose are their own group.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use rand::Rng;

use crate::engine::ContainerEngine;
use crate::messages::RequestRestart;
use crate::metrics::Metrics;

/// The restart group of a container from its labels.
pub fn compose_group(labels: &HashMap<String, String>) -> Option<String> {
    let service = labels.get("com.docker.compose.service")?;
    let project = labels
        .get("com.docker.compose.project")
        .map(String::as_str)
        .unwrap_or("");
    Some(format!("{project}/{service}"))
}

/// Restarter settings.
#[derive(Debug, Clone)]
pub struct RestarterSettings {
    /// Most extra wait after a container is back, chosen at random up to this.
    pub splay: Duration,
    /// Longest wait for a restarted container to be running (and healthy).
    pub ready_timeout: Duration,
    /// Mailbox capacity. Injectors `try_send` one `RequestRestart` per container whose values
    /// were replaced, all at once when a rotation fans out to a restart-policy service; a full
    /// mailbox fails that reload (counted, logged). The agent passes `agent.queue_capacity`: the
    /// operator's bound on work waiting per actor, sized like one shard's queue.
    pub mailbox: usize,
}

/// The actor.
pub struct Restarter {
    engine: Arc<dyn ContainerEngine>,
    metrics: Arc<Metrics>,
    settings: RestarterSettings,
    queues: HashMap<String, VecDeque<String>>,
    busy: HashSet<String>,
}

impl Restarter {
    /// A restarter using `engine`.
    pub fn new(
        engine: Arc<dyn ContainerEngine>,
        metrics: Arc<Metrics>,
        settings: RestarterSettings,
    ) -> Self {
        Self {
            engine,
            metrics,
            settings,
            queues: HashMap::new(),
            busy: HashSet::new(),
        }
    }

    fn next(&mut self, group: String, ctx: &mut Context<Self>) {
        let Some(id) = self.queues.get_mut(&group).and_then(VecDeque::pop_front) else {
            self.queues.remove(&group);
            self.busy.remove(&group);
            return;
        };
        self.busy.insert(group.clone());
        let engine = self.engine.clone();
        let settings = self.settings.clone();
        let splay = if settings.splay.is_zero() {
            Duration::ZERO
        } else {
            settings
                .splay
                .mul_f64(rand::thread_rng().gen_range(0.0..1.0))
        };
        let target = id.clone();
        async move {
            engine.restart(&target).await.map_err(|e| e.to_string())?;
            let deadline = Instant::now() + settings.ready_timeout;
            loop {
                match engine.inspect(&target).await {
                    Ok(i) if i.running && i.health.as_deref().is_none_or(|h| h == "healthy") => break,
                    Ok(_) | Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    Ok(i) => {
                        return Err(format!(
                            "not running/healthy {:?} after {:?}",
                            i.health, settings.ready_timeout
                        ))
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
            tokio::time::sleep(splay).await;
            Ok(())
        }
        .into_actor(self)
        .map(move |res: Result<(), String>, act, ctx| {
            match res {
                Ok(()) => {
                    act.metrics.reload("restart", "ok");
                    tracing::info!(container = %&id[..id.len().min(12)], group = %group, "restarted after new secret values");
                }
                Err(e) => {
                    act.metrics.reload("restart", "error");
                    tracing::error!(container = %&id[..id.len().min(12)], group = %group, error = %e, "restart after new secret values failed");
                }
            }
            act.next(group, ctx);
        })
        .spawn(ctx);
    }
}

impl Actor for Restarter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.settings.mailbox);
    }
}

impl Handler<RequestRestart> for Restarter {
    type Result = ();

    fn handle(&mut self, msg: RequestRestart, ctx: &mut Self::Context) {
        let group = msg.group.unwrap_or_else(|| format!("container:{}", msg.id));
        let queue = self.queues.entry(group.clone()).or_default();
        if !queue.contains(&msg.id) {
            queue.push_back(msg.id);
        }
        if !self.busy.contains(&group) {
            self.next(group, ctx);
        }
    }
}
