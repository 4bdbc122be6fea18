//! The container-engine trait: every Docker call the actors make goes through it.
//!
//! The real adapter (bollard) lives in the `dso` crate; [`crate::fake::FakeEngine`] records calls
//! for unit tests.

use std::time::SystemTime;

use async_trait::async_trait;
use futures_util::stream::BoxStream;

use crate::model::{
    ContainerInfo, ContainerSummary, EngineEvent, ExecOutput, RollOutcome, SwarmTask,
};

/// Why an engine call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The container does not exist (any more).
    #[error("container {0} not found")]
    NotFound(String),
    /// The container exists but is not running.
    #[error("container {0} is not running")]
    NotRunning(String),
    /// The engine could not be reached or returned an error.
    #[error("docker engine: {0}")]
    Engine(String),
    /// An exec did not end within `agent.exec_timeout` (create, start, output and inspect under
    /// one deadline).
    #[error("the injection exec did not finish within {}s; {}", .after.as_secs_f64(), kill_note(*.killed))]
    ExecTimeout {
        /// The deadline.
        after: std::time::Duration,
        /// True when the agent killed the hung process (it sees the container's processes).
        killed: bool,
    },
    /// An earlier exec in this container timed out and is still running: no second one is started
    /// (retries must not pile up hung processes).
    #[error("an earlier injection exec in this container timed out and is still running; no new exec until it ends")]
    ExecBusy,
}

fn kill_note(killed: bool) -> &'static str {
    if killed {
        "its process was killed"
    } else {
        "the agent cannot see its process (not in the host PID namespace), so it may still run"
    }
}

/// A stream of engine events; ends or yields an error when the connection drops.
pub type EventStream = BoxStream<'static, Result<EngineEvent, EngineError>>;

/// The container engine.
#[async_trait]
pub trait ContainerEngine: Send + Sync + 'static {
    /// `docker inspect` of one container.
    async fn inspect(&self, id: &str) -> Result<ContainerInfo, EngineError>;
    /// Running containers.
    async fn list_running(&self) -> Result<Vec<ContainerSummary>, EngineError>;
    /// Runs `cmd` as root inside the container with `stdin` streamed to it; waits for it to end.
    async fn exec(&self, id: &str, cmd: &[String], stdin: &[u8])
        -> Result<ExecOutput, EngineError>;
    /// Container events (start/die/destroy) since `since` (None: from now).
    async fn events(&self, since: Option<SystemTime>) -> Result<EventStream, EngineError>;
    /// A cheap reachability check (`/_ping`).
    async fn ping(&self) -> Result<(), EngineError>;
    /// Sends a signal (e.g. `SIGHUP`) to the container's main process.
    async fn signal(&self, id: &str, signal: &str) -> Result<(), EngineError>;
    /// Restarts the container (Docker's own restart: stop with its timeout, then start).
    async fn restart(&self, id: &str) -> Result<(), EngineError>;
    /// Rolls the Swarm service of `task` for change `change` (`docker service update --force`):
    /// on a manager, first proves from the engine that `task.task` is a task of `task.service`
    /// running `task.container` (labels are untrusted: a plain container must not make DSO roll
    /// someone else's service), then reads the service and updates it at its version index with `ForceUpdate`
    /// incremented and the label `dso.rolled=<change>`, unless it already carries that label. A
    /// write that lost a race with another agent's is read again. With `roll` false (a first
    /// delivery) only the label is set: the tasks already run with `change`. Never `docker
    /// restart`s a task.
    async fn roll_service(
        &self,
        task: &SwarmTask,
        change: &str,
        roll: bool,
    ) -> Result<RollOutcome, EngineError>;
}
