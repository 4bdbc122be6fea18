//! The plain data the actors and their adapters exchange: what a container is (a slice of
//! `docker inspect`), its events, an exec's result, one file to write, and the names of the
//! layout in a container's secrets directory.
//!
//! A leaf: it depends on nothing in this crate but [`crate::secret`] (itself a leaf), so the
//! traits (`engine`, `direct`), the label parser (`spec`) and the writers can all use it without
//! pointing at each other.

use std::collections::HashMap;

use crate::secret::SecretRef;

/// Name of the marker file written last in a secrets directory (holds the content digest).
pub const READY_MARKER: &str = ".ready";

/// What the actors need to know about one container (a slice of `docker inspect`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerInfo {
    /// Full container id.
    pub id: String,
    /// Name without the leading `/`.
    pub name: String,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// `Config.Image`: the image name the container was created from, as given.
    pub image: String,
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
    /// Names (never values) of environment variables whose value is a literal `dso://` or
    /// `dsofile://` reference: started without `docker dso` ([`crate::hints`]).
    pub literal_refs: Vec<String>,
}

/// The label Docker puts on every Swarm task container: the id of the task's service.
pub const SWARM_SERVICE_LABEL: &str = "com.docker.swarm.service.id";

/// The label Docker puts on every Swarm task container: the id of the task itself.
pub const SWARM_TASK_LABEL: &str = "com.docker.swarm.task.id";

/// A container that says it is a Swarm task (its `com.docker.swarm.*` labels). Labels are
/// untrusted: the engine proves the claim (the task exists, belongs to `service` and runs
/// `container`) before it rolls anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwarmTask {
    /// Service id (`com.docker.swarm.service.id`).
    pub service: String,
    /// Task id (`com.docker.swarm.task.id`).
    pub task: String,
    /// The container's id.
    pub container: String,
}

impl SwarmTask {
    /// The claim a container's labels make, when both ids look like Swarm ids. Labels that do not
    /// (control characters, paths, empty) make no claim: such a container is not a Swarm task,
    /// and its label never reaches a log or a request path.
    pub fn from_labels(container: &str, labels: &HashMap<String, String>) -> Option<SwarmTask> {
        let service = labels.get(SWARM_SERVICE_LABEL)?;
        let task = labels.get(SWARM_TASK_LABEL)?;
        (Self::is_id(service) && Self::is_id(task)).then(|| SwarmTask {
            service: service.clone(),
            task: task.clone(),
            container: container.to_string(),
        })
    }

    /// Swarm ids are short ASCII alphanumerics (25 characters today): nothing else is one.
    pub fn is_id(s: &str) -> bool {
        !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric())
    }
}

/// The service label a roll carries: the change the service's tasks run with (see
/// [`crate::tarball::rolled_digest`]). A roll for a change the service already carries is a no-op.
pub const ROLLED_LABEL: &str = "dso.rolled";

/// What asking the engine to roll a Swarm service did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollOutcome {
    /// The service was updated with a new `ForceUpdate`: Swarm replaces its tasks, honouring the
    /// service's `UpdateConfig` (parallelism, delay, failure action).
    Rolled,
    /// The service already carries `dso.rolled=<this change>`: another agent (or an earlier task
    /// of the same service) rolled it.
    AlreadyRolled,
    /// This engine is not a Swarm manager: only a manager can update services; its agent rolls.
    NotManager,
    /// Asked not to roll (a first delivery): the label now records the change the tasks run
    /// with, so that another agent's later delivery of the same values does not roll.
    Marked,
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

/// Whose group a file gets when the group is given by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupName {
    /// A group of `/etc/group`.
    Group(String),
    /// The primary group of this user (`/etc/passwd`'s fourth field), as Docker does for
    /// `--user app`.
    PrimaryOf(String),
}

/// The names behind a file's `uid`/`gid`, when given as names (then the number is a placeholder
/// until [`resolve`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnerNames {
    /// `uid` is this user's (`/etc/passwd`).
    pub user: Option<String>,
    /// `gid` is this group's.
    pub group: Option<GroupName>,
}

impl OwnerNames {
    /// True when nothing is given by name.
    pub fn is_empty(&self) -> bool {
        self.user.is_none() && self.group.is_none()
    }
}

/// One file to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFile {
    /// File name inside the directory (validated: `[A-Za-z0-9._-]`, not `.`/`..`).
    pub name: String,
    /// Where its content comes from.
    pub source: SecretRef,
    /// Permission bits.
    pub mode: u32,
    /// Owner uid (a placeholder while `names.user` is set).
    pub uid: u32,
    /// Owner gid (a placeholder while `names.group` is set).
    pub gid: u32,
    /// The owner given by name, resolved from the container's own `/etc/passwd` and
    /// `/etc/group` at write time (`crate::owners`).
    pub names: OwnerNames,
}

/// A file owned by 1000:1001 from `local/x`, for unit tests.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn test_file(name: &str, mode: u32) -> SecretFile {
    SecretFile {
        name: name.into(),
        source: "local/x".parse().unwrap(),
        mode,
        uid: 1000,
        gid: 1001,
        names: OwnerNames::default(),
    }
}
