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
//! or join the roll under way (and take it over when it fails: the first asker may be a
//! container whose claim to be a task the engine refuses); the engine makes it idempotent across
//! agents (`dso.rolled`). A first delivery's mark never stands in for a roll.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use rand::Rng;

use crate::engine::ContainerEngine;
use crate::messages::{RequestRestart, RequestRoll};
use crate::metrics::Metrics;
use crate::model::{RollOutcome, SwarmTask};

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
    /// Swarm services: the change of the last roll done (or found done), per service.
    rolled: HashMap<String, String>,
    /// Swarm services: the change of the last mark asked for (first deliveries), per service.
    marked: HashMap<String, String>,
    /// Swarm services: the roll under way, and the other tasks that asked for the same change.
    rolling: HashMap<String, (String, Vec<SwarmTask>)>,
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
            marked: HashMap::new(),
            rolling: HashMap::new(),
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
        if !roll {
            if self.marked.get(&service) == Some(&change)
                || self.rolled.get(&service) == Some(&change)
            {
                return;
            }
            self.marked.insert(service, change.clone());
            self.roll(task, change, false, ctx);
            return;
        }
        if self.rolled.get(&service) == Some(&change) {
            tracing::debug!(service = %service, "service already rolled for this change");
            return;
        }
        if let Some((under_way, waiting)) = self.rolling.get_mut(&service) {
            if *under_way == change {
                waiting.push(task);
                return;
            }
        }
        // (A newer change while an older roll is under way starts its own: the engine's version
        // index orders the two updates.)
        self.rolling.insert(service, (change.clone(), Vec::new()));
        self.roll(task, change, true, ctx);
    }
}

impl Restarter {
    /// Asks the engine to roll (or, `roll` false, to mark) the service of `task` for `change`.
    /// Logs name the service, never the change (a digest that may be of values).
    fn roll(&mut self, task: SwarmTask, change: String, roll: bool, ctx: &mut Context<Self>) {
        let engine = self.engine.clone();
        let service = task.service.clone();
        let chg = change.clone();
        async move { engine.roll_service(&task, &chg, roll).await }
            .into_actor(self)
            .map(move |res, act, ctx| act.rolled(service, change, roll, res, ctx))
            .spawn(ctx);
    }

    fn rolled(
        &mut self,
        service: String,
        change: String,
        roll: bool,
        res: Result<RollOutcome, crate::engine::EngineError>,
        ctx: &mut Context<Self>,
    ) {
        let ok = res.is_ok();
        match res {
            Ok(_) if !roll => {
                tracing::debug!(service = %service, "Swarm service labelled with the change its tasks run with (when it had none)");
            }
            Ok(RollOutcome::Rolled) => {
                self.metrics.reload("restart", "ok");
                tracing::info!(service = %service, "Swarm service rolled after new secret values (service update --force)");
            }
            Ok(RollOutcome::AlreadyRolled | RollOutcome::Marked) => {
                tracing::info!(service = %service, "Swarm service already rolled for this change by another agent");
            }
            Ok(RollOutcome::NotManager) => {
                tracing::warn!(service = %service, "not a Swarm manager: new secret values are in the task's files, but the service is rolled only by an agent on a manager node that runs one of its tasks (docs/swarm.md)");
            }
            Err(e) => {
                if roll {
                    self.metrics.reload("restart", "error");
                }
                tracing::error!(service = %service, error = %e, "rolling the Swarm service after new secret values failed");
            }
        }
        if !roll {
            if !ok && self.marked.get(&service) == Some(&change) {
                self.marked.remove(&service);
            }
            return;
        }
        let Some((under_way, waiting)) = self.rolling.get_mut(&service) else {
            return;
        };
        if *under_way != change {
            if ok {
                self.rolled.insert(service, change);
            }
            return;
        }
        if ok {
            self.rolling.remove(&service);
            self.rolled.insert(service, change);
        } else if let Some(next) = waiting.pop() {
            // Another task asked for the same change: its claim may hold where this one's did not.
            self.roll(next, change, true, ctx);
        } else {
            // Forget it: the next delivery of this change may try again.
            self.rolling.remove(&service);
        }
    }
}
