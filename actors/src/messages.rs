//! Every typed message between actors. Actors share no mutable state: they talk only through these.

use std::time::Instant;

use actix::prelude::*;

use crate::backend::{BackendError, Fetched};
use crate::model::ContainerAction;
use crate::secret::SecretRef;

/// Why an injection job exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A Docker event.
    Event(ContainerAction),
    /// The reconciler found the container.
    Reconcile,
    /// Someone asked (admin API, CLI).
    Manual,
    /// A secret the container uses changed in its backend.
    Rotation,
}

impl Trigger {
    /// Label for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Event(a) => a.as_str(),
            Trigger::Reconcile => "reconcile",
            Trigger::Manual => "manual",
            Trigger::Rotation => "rotation",
        }
    }
}

/// EventWatcher/Reconciler → Injector shard: do something about one container.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct ContainerJob {
    /// Container id.
    pub id: String,
    /// Why.
    pub trigger: Trigger,
    /// When the agent learnt of it (start of `dso_injection_duration_seconds`).
    pub received: Instant,
}

/// Supervisor → Injector: finish what is in flight, accept nothing new, then answer.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Drain;

/// Injector → Cache: the data stored at one provider path (with its backend version).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Fetched, FetchError>")]
pub struct GetSecret {
    /// Provider and path (the key part is applied by the caller).
    pub source: SecretRef,
}

/// Cache → ProviderConnection: fetch one path from the backend.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Fetched, BackendError>")]
pub struct Fetch {
    /// Path inside the backend.
    pub path: String,
}

/// Cache → ProviderConnection: the backend's current version of one path, without its value
/// (`None`: the backend has no cheap version; fetch to compare).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Option<String>, BackendError>")]
pub struct FetchVersion {
    /// Path inside the backend.
    pub path: String,
}

/// Anyone → ProviderConnection / EventWatcher: are you healthy?
#[derive(Debug, Message)]
#[rtype(result = "bool")]
pub struct IsUp;

/// Supervisor → EventWatcher: connected, and if not, the last engine error (for `/readyz`).
#[derive(Debug, Message)]
#[rtype(result = "EngineHealth")]
pub struct GetEngineHealth;

/// Answer to [`GetEngineHealth`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineHealth {
    /// The event stream is connected.
    pub up: bool,
    /// Why the last connection attempt failed (cleared on connect). Engine errors only: never
    /// container output.
    pub error: Option<String>,
}

/// Anyone → Reconciler: list running containers and send the ones that need secrets to injection.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Reconcile {
    /// Why (for logs).
    pub reason: &'static str,
}

/// Signal handler → Supervisor: drain and stop.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// EventWatcher → Supervisor: the engine stayed unreachable; exit with this code.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Fatal {
    /// What happened.
    pub reason: String,
    /// How the process exits.
    pub code: crate::exit::ExitCode,
}

/// HTTP `/readyz` → Supervisor: Docker reachable and every provider up?
#[derive(Debug, Message)]
#[rtype(result = "Readiness")]
pub struct GetReadiness;

/// Answer to [`GetReadiness`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Readiness {
    /// Docker event stream connected.
    pub docker: bool,
    /// Why it is not (the last engine error, e.g. a TLS failure named as one).
    pub docker_error: Option<String>,
    /// Provider name → up.
    pub providers: Vec<(String, bool)>,
}

impl Readiness {
    /// Everything up.
    pub fn ready(&self) -> bool {
        self.docker && self.providers.iter().all(|(_, up)| *up)
    }
}

/// Why the cache could not produce a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// No provider has that name.
    #[error("unknown provider `{0}` (not in the config)")]
    UnknownProvider(String),
    /// The backend answered with an error.
    #[error("provider `{provider}`: {source}")]
    Backend {
        /// Provider name.
        provider: String,
        /// The backend's error.
        source: BackendError,
    },
    /// The provider actor was restarting or gone.
    #[error("provider `{0}` is restarting; try again")]
    ProviderGone(String),
}

/// Injector → Cache: the (provider, path) keys a container's files come from; replaces what the
/// container subscribed before. Subscribed keys are refreshed every `refresh_interval`.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    /// Container id.
    pub container: String,
    /// (provider, path) keys.
    pub keys: Vec<(String, String)>,
}

/// Injector → Cache: the container is gone; its keys are no longer needed for it.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    /// Container id.
    pub container: String,
}

/// Cache → Supervisor → every Injector shard: a secret's value changed in its backend.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct SecretChanged {
    /// Provider name.
    pub provider: String,
    /// Path in the provider.
    pub path: String,
}

/// One secret file as status shows it (never a value).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FileStatus {
    /// File name.
    pub name: String,
    /// `<provider>/<path>[#<key>]`.
    pub source: String,
    /// The backend's version of the value (KV v2 version, AWS VersionId, …), when it has one.
    pub version: Option<String>,
    /// Keyed digest of this file's content (name, mode, owner, value): changes when it changes.
    pub digest: String,
    /// Unix time this content was delivered (kept across deliveries that did not change it).
    pub since: Option<u64>,
}

/// What the agent knows about one container that asked for secrets.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ContainerStatus {
    /// Container id.
    pub id: String,
    /// Container name.
    pub name: String,
    /// Files delivered (empty when refused).
    pub files: Vec<FileStatus>,
    /// Digest of the content in the container (the value of `.ready`).
    pub digest: Option<String>,
    /// Last result (`success`, `unchanged`, `invalid_spec`, …).
    pub result: String,
    /// Why, when refused (never a value).
    pub message: Option<String>,
    /// Unix time the current content was delivered.
    pub delivered_at: Option<u64>,
    /// Unix time of the last job for this container.
    pub checked_at: u64,
}

/// Supervisor → Injector: the status of this shard's containers.
#[derive(Debug, Message)]
#[rtype(result = "Vec<ContainerStatus>")]
pub struct GetShardStatus;

/// Admin → Supervisor: the whole agent's status.
#[derive(Debug, Message)]
#[rtype(result = "AgentStatus")]
pub struct GetStatus;

/// One provider as status shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProviderStatus {
    /// Name.
    pub name: String,
    /// Reached on its last request or probe.
    pub up: bool,
}

/// Answer to [`GetStatus`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct AgentStatus {
    /// Agent version.
    pub version: String,
    /// Docker event stream connected.
    pub docker: bool,
    /// Why it is not (the last engine error, e.g. a TLS failure named as one).
    pub docker_error: Option<String>,
    /// Providers.
    pub providers: Vec<ProviderStatus>,
    /// Containers that asked for secrets, sorted by name.
    pub containers: Vec<ContainerStatus>,
    /// Jobs waiting in the shards.
    pub queue_depth: i64,
    /// Secrets held in the cache.
    pub cache_entries: i64,
}

/// Admin → Cache: check one secret against its backend now (webhook-triggered rotation).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<bool, FetchError>")]
pub struct CheckNow {
    /// Provider name.
    pub provider: String,
    /// Path in the provider.
    pub path: String,
}

/// Admin → Supervisor: inject one container now (by id or name). Answers the full id.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<String, String>")]
pub struct InjectNow {
    /// Container id or name.
    pub id: String,
}

/// Injector → audit log: one delivery, rotation or refusal. Never a value.
#[derive(Debug, Clone, Message, serde::Serialize)]
#[rtype(result = "()")]
pub struct AuditRecord {
    /// Unix time in milliseconds.
    pub ts_ms: u64,
    /// `delivered`, `rotated`, `refused`, `reloaded`, `reload_failed`.
    pub event: &'static str,
    /// What caused it (`start`, `reconcile`, `rotation`, `manual`).
    pub trigger: &'static str,
    /// Container id.
    pub container: String,
    /// Container name.
    pub name: String,
    /// Files and their sources.
    pub files: Vec<FileStatus>,
    /// Content digest (the value of `.ready`).
    pub digest: Option<String>,
    /// Result label (as in `dso_injections_total`).
    pub result: String,
    /// Why, for refusals and failed reloads.
    pub message: Option<String>,
}

/// Reconciler → every Injector shard: these containers are running; forget the others (their
/// status, their cache subscriptions — so their secrets leave memory after the TTL).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Prune {
    /// Ids of every running container.
    pub running: std::sync::Arc<std::collections::HashSet<String>>,
}

/// Supervisor → EventWatcher: stop following events (shutdown).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopWatching;

/// Injector → Restarter: restart this container (after its secrets changed).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct RequestRestart {
    /// Container id.
    pub id: String,
    /// Restart group (Compose project/service); None: the container alone.
    pub group: Option<String>,
}

/// Injector → Restarter: roll this Swarm service for this change (its task's secrets changed).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct RequestRoll {
    /// The task container that asks, and the service it says it belongs to.
    pub task: crate::model::SwarmTask,
    /// The change ([`crate::tarball::rolled_digest`]): every task of one rotation asks with the
    /// same one, and the service is rolled once.
    pub change: String,
    /// False for a first delivery: record `change` on the service (no roll), so that another
    /// agent delivering the same values (its own digest key: it sees them as replaced) does not
    /// roll it.
    pub roll: bool,
}
