//! Restarter: applies the `restart` reload policy without taking a service down.
//!
//! Containers of the same Compose service (`com.docker.compose.project` +
//! `com.docker.compose.service` labels) restart one at a time: each waits until the previous one
//! is running again — and healthy, if it has a healthcheck — plus a random splay. Containers
//! outside Compose are their own group.
//!
//! One restart, one outcome: a request for a container whose restart call has not returned yet
//! is part of that restart (the container starts afresh and is injected with the current values,
//! the ones that request is about); it neither queues a second restart nor logs a second result.
//! A request that comes after the call returned is about values written into the restarted
//! container, and is queued.
//!
//! A Swarm task is never restarted here: its **service** is rolled (`RequestRoll`), once per
//! change — the service's other tasks ask for the same change and are answered from `rolled`
//! (or join the roll under way); the engine makes it idempotent across agents (`dso.rolled`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use rand::Rng;

use crate::engine::ContainerEngine;
use crate::messages::{RequestRestart, RequestRoll};
use crate::metrics::Metrics;
use crate::model::RollOutcome;

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
    /// Containers whose restart call is under way.
    restarting: HashSet<String>,
    /// Swarm services: the change of the roll under way or last asked for, per service.
    rolled: HashMap<String, String>,
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
            restarting: HashSet::new(),
            rolled: HashMap::new(),
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
        self.restarting.insert(id.clone());
        let call = {
            let (engine, target) = (engine.clone(), id.clone());
            async move { engine.restart(&target).await.map_err(|e| e.to_string()) }
        };
        let target = id.clone();
        call.into_actor(self)
            .then(move |res, act, _ctx| {
                // From now on new values reach the restarted container: a request is a new restart.
                act.restarting.remove(&target);
                Self::wait_ready(engine, target, settings, splay, res).into_actor(act)
            })
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

    /// After the restart call: waits until the container runs (and is healthy), then the splay.
    async fn wait_ready(
        engine: Arc<dyn ContainerEngine>,
        target: String,
        settings: RestarterSettings,
        splay: Duration,
        restarted: Result<(), String>,
    ) -> Result<(), String> {
        restarted?;
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
        if self.restarting.contains(&msg.id) {
            tracing::debug!(container = %&msg.id[..msg.id.len().min(12)], "restart already under way; the restarted container gets the current values");
            return;
        }
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

impl Handler<RequestRoll> for Restarter {
    type Result = ();

    fn handle(&mut self, msg: RequestRoll, ctx: &mut Self::Context) {
        let RequestRoll { task, change, roll } = msg;
        let service = task.service.clone();
        if self.rolled.get(&service) == Some(&change) {
            tracing::debug!(service = %service, change = %change, "service already rolled (or rolling) for this change");
            return;
        }
        self.rolled.insert(service.clone(), change.clone());
        let engine = self.engine.clone();
        let chg = change.clone();
        async move { engine.roll_service(&task, &chg, roll).await }
            .into_actor(self)
            .map(move |res, act, _ctx| match res {
                Ok(RollOutcome::Rolled) => {
                    act.metrics.reload("restart", "ok");
                    tracing::info!(service = %service, change = %change, "Swarm service rolled after new secret values (service update --force)");
                }
                Ok(RollOutcome::AlreadyRolled) => {
                    tracing::info!(service = %service, change = %change, "Swarm service already rolled for this change by another agent");
                }
                Ok(RollOutcome::Marked) => {
                    tracing::debug!(service = %service, change = %change, "Swarm service labelled with the change its tasks run with");
                }
                Ok(RollOutcome::NotManager) => {
                    tracing::info!(service = %service, change = %change, "not a Swarm manager: the service is rolled by an agent on a manager node");
                }
                Err(e) => {
                    // Forget it: the next delivery of this change may try again.
                    if act.rolled.get(&service) == Some(&change) {
                        act.rolled.remove(&service);
                    }
                    act.metrics.reload("restart", "error");
                    tracing::error!(service = %service, change = %change, error = %e, "rolling the Swarm service after new secret values failed");
                }
            })
            .spawn(ctx);
    }
}
