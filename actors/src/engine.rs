//! The container-engine trait: every Docker call the actors make goes through it.
//!
//! The real adapter (bollard) lives in the `dso` crate; [`crate::fake::FakeEngine`] records calls
//! for unit tests.

use std::collections::HashMap;
use std::time::SystemTime;

use async_trait::async_trait;
use futures_util::stream::BoxStream;

/// What the actors need to know about one container (a slice of `docker inspect`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerInfo {
    /// Full container id.
    pub id: String,
    /// Name without the leading `/`.
    pub name: String,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// `Config.User` as given (`""`, `"1000"`, `"1000:1000"`, `"app"`).
    pub user: String,
    /// True while the container is running.
    pub running: bool,
    /// Mount points inside the container that are tmpfs (`--tmpfs` and `--mount type=tmpfs`).
    pub tmpfs_mounts: Vec<String>,
    /// `GraphDriver.Data.UpperDir` when the driver has one (overlay2): where the writable layer lives.
    pub upper_dir: Option<String>,
    /// `State.StartedAt`, used to tell a fresh start from a stale event.
    pub started_at: Option<String>,
    /// `State.Health.Status` (`starting`, `healthy`, `unhealthy`) when the image has a healthcheck.
    pub health: Option<String>,
    /// `State.Pid`: the main process as the host sees it (None or 0 when not running).
    pub pid: Option<u32>,
}

/// A container from `docker ps` (running only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSummary {
    /// Full container id.
    pub id: String,
    /// Labels.
    pub labels: HashMap<String, String>,
}

/// Container lifecycle actions the agent acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContainerAction {
    /// The container started (or restarted).
    Start,
    /// The container's main process exited.
    Die,
    /// The container was removed.
    Destroy,
}

impl ContainerAction {
    /// Label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerAction::Start => "start",
            ContainerAction::Die => "die",
            ContainerAction::Destroy => "destroy",
        }
    }
}

/// One event from the engine's event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineEvent {
    /// Container id.
    pub id: String,
    /// What happened.
    pub action: ContainerAction,
    /// Engine timestamp in nanoseconds since the epoch (0 if unknown).
    pub time_nanos: i64,
}

/// The result of one exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit code of the command (None if the engine did not report one).
    pub exit_code: Option<i64>,
    /// The first bytes the command wrote to stdout (stderr is counted, never kept). Untrusted: a
    /// hostile container controls it. It is compared against the injection script's fixed
    /// vocabulary and never copied into a message, the audit log, the status ledger or a metric.
    pub output: String,
    /// How many bytes the command wrote to stdout and stderr together (the only thing a message may
    /// say about its output).
    pub output_len: usize,
}

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
    #[error("the injection exec did not finish within {}; {}", humanize(*.after), kill_note(*.killed))]
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

fn humanize(d: std::time::Duration) -> String {
    format!("{}s", d.as_secs_f64())
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
    /// The writer that puts files straight into a container's filesystem, without exec
    /// (`agent.write_mode = "auto"`). None (the default): every write is an exec.
    fn direct_writer(&self) -> Option<&dyn crate::direct::DirectWriter> {
        None
    }
}
