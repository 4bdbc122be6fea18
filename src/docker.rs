//! The bollard adapter: the real [`ContainerEngine`].

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::MountType;
use bollard::query_parameters::{
    EventsOptions, KillContainerOptions, ListContainersOptions, RestartContainerOptions,
    UpdateServiceOptions,
};
use bollard::Docker;
use dso_actors::engine::{ContainerEngine, EngineError, EventStream};
use dso_actors::model::{
    ContainerAction, ContainerInfo, ContainerSummary, EngineEvent, ExecOutput, RollOutcome,
    SwarmTask, ROLLED_LABEL,
};
use futures_util::{StreamExt, TryStreamExt};
use tokio::io::AsyncWriteExt;

use crate::endpoint::Endpoint;

/// Most exec stdout kept (the injection script prints at most one word; the rest is counted).
const MAX_EXEC_STDOUT: usize = 256;
/// Default `agent.exec_timeout`.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(30);

/// Docker Engine through bollard.
#[derive(Clone, Debug)]
pub struct BollardEngine {
    docker: Docker,
    /// `agent.exec_timeout`.
    exec_timeout: Duration,
    /// Execs that timed out and may still run, per container.
    exec_guard: crate::hung::HungExecs,
}

/// Why the Docker client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The host string is not something bollard can connect to.
    #[error("agent.docker_host `{host}`: {reason}")]
    BadHost {
        /// The configured host.
        host: String,
        /// bollard's reason.
        reason: String,
    },
    /// The TLS files could not be used.
    #[error(transparent)]
    Tls(#[from] crate::docker_tls::TlsSetupError),
}

/// Seconds bollard waits for one request.
const REQUEST_TIMEOUT_SECS: u64 = 120;

impl BollardEngine {
    /// A client for `endpoint`. Does not connect yet.
    pub fn connect(endpoint: &Endpoint) -> Result<Self, ConnectError> {
        let bad = |e: bollard::errors::Error| ConnectError::BadHost {
            host: endpoint.describe(),
            reason: e.to_string(),
        };
        let docker = match endpoint {
            Endpoint::Unix(path) => Docker::connect_with_unix(
                &path.to_string_lossy(),
                REQUEST_TIMEOUT_SECS,
                bollard::API_DEFAULT_VERSION,
            )
            .map_err(bad)?,
            Endpoint::Tcp { addr, tls: None } => Docker::connect_with_http(
                &format!("http://{addr}"),
                REQUEST_TIMEOUT_SECS,
                bollard::API_DEFAULT_VERSION,
            )
            .map_err(bad)?,
            Endpoint::Tcp {
                addr,
                tls: Some(files),
            } => crate::docker_tls::connect(addr, files, REQUEST_TIMEOUT_SECS)?,
        };
        Ok(Self {
            docker,
            exec_timeout: DEFAULT_EXEC_TIMEOUT,
            exec_guard: crate::hung::HungExecs::default(),
        })
    }

    /// Settles the API version with the daemon (Engine 20.10 speaks 1.41). Returns the version.
    pub async fn negotiate(self) -> Result<(Self, String), EngineError> {
        let docker = self.docker.negotiate_version().await.map_err(map_err)?;
        let v = docker.client_version().to_string();
        Ok((
            Self {
                docker,
                exec_timeout: self.exec_timeout,
                exec_guard: self.exec_guard,
            },
            v,
        ))
    }

    /// The client's API version.
    pub fn api_version(&self) -> String {
        self.docker.client_version().to_string()
    }

    /// An image's `Config.Entrypoint` and `Config.Cmd`; `None` when the image is not on the host.
    pub async fn image_command(
        &self,
        image: &str,
    ) -> Result<Option<(Vec<String>, Vec<String>)>, EngineError> {
        match self.docker.inspect_image(image).await.map_err(map_err) {
            Ok(r) => {
                let c = r.config.unwrap_or_default();
                Ok(Some((
                    c.entrypoint.unwrap_or_default(),
                    c.cmd.unwrap_or_default(),
                )))
            }
            Err(EngineError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `agent.exec_timeout`: one deadline over an exec's create, start, output and inspect.
    pub fn with_exec_timeout(mut self, timeout: Duration) -> Self {
        self.exec_timeout = timeout;
        self
    }

    /// Starts exec `exec_id`, streams `stdin` to it and reads its output until it ends; then its
    /// exit code. The output is untrusted (the container controls it): only the first bytes of
    /// stdout are kept (for the script's fixed vocabulary), stderr is counted and dropped.
    async fn run_exec(&self, exec_id: &str, stdin: &[u8]) -> Result<ExecOutput, EngineError> {
        let started = self
            .docker
            .start_exec(
                exec_id,
                Some(StartExecOptions {
                    detach: false,
                    tty: false,
                    output_capacity: None,
                }),
            )
            .await
            .map_err(map_err)?;
        let StartExecResults::Attached {
            mut output,
            mut input,
        } = started
        else {
            return Err(EngineError::Engine("exec started detached".to_string()));
        };
        let write = async {
            let r = input.write_all(stdin).await;
            // Closing our side gives the command EOF on stdin.
            let _ = input.shutdown().await;
            r
        };
        let read = async {
            let mut stdout = Vec::new();
            let mut total = 0usize;
            while let Some(chunk) = output.next().await {
                let chunk = chunk.map_err(map_err)?;
                let (is_stdout, bytes) = match chunk {
                    LogOutput::StdOut { message } => (true, message),
                    LogOutput::StdErr { message }
                    | LogOutput::Console { message }
                    | LogOutput::StdIn { message } => (false, message),
                };
                total = total.saturating_add(bytes.len());
                if is_stdout && stdout.len() < MAX_EXEC_STDOUT {
                    let room = MAX_EXEC_STDOUT - stdout.len();
                    stdout.extend_from_slice(&bytes[..bytes.len().min(room)]);
                }
            }
            Ok::<_, EngineError>((stdout, total))
        };
        let (w, read) = tokio::join!(write, read);
        let (stdout, output_len) = read?;
        if let Err(e) = w {
            // The command may exit before reading all of stdin (e.g. the tmpfs check failed).
            tracing::debug!(error = %e, "exec stdin closed early");
        }
        let inspect = self.docker.inspect_exec(exec_id).await.map_err(map_err)?;
        Ok(ExecOutput {
            exit_code: inspect.exit_code,
            output: String::from_utf8_lossy(&stdout).into_owned(),
            output_len,
        })
    }
}

fn map_err(e: bollard::errors::Error) -> EngineError {
    match e {
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            message,
        } => EngineError::NotFound(message),
        bollard::errors::Error::DockerResponseServerError {
            status_code: 409,
            message,
        } => EngineError::NotRunning(message),
        bollard::errors::Error::DockerResponseServerError {
            status_code,
            message,
        } if crate::docker_tls::plain_http_to_tls(status_code, &message) => EngineError::Engine(
            "TLS: the engine speaks TLS on this port; set agent.tls_ca, tls_cert and tls_key \
             (or DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH)"
                .to_string(),
        ),
        // With its sources: hyper's "client error (Connect)" alone does not say what failed
        // (refused, EAGAIN on a full accept queue, EMFILE, ...).
        other => EngineError::Engine(crate::providers::wire::error_chain(&other)),
    }
}

/// An engine event's action as the agent sees it: Docker's names and Podman's (`died`, `remove`).
fn action_of(action: &str) -> Option<ContainerAction> {
    match action {
        "start" => Some(ContainerAction::Start),
        "die" | "died" => Some(ContainerAction::Die),
        "destroy" | "remove" => Some(ContainerAction::Destroy),
        _ => None,
    }
}

#[async_trait]
impl ContainerEngine for BollardEngine {
    async fn inspect(&self, id: &str) -> Result<ContainerInfo, EngineError> {
        let r = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(map_err)?;
        let config = r.config.unwrap_or_default();
        let state = r.state.unwrap_or_default();
        let host = r.host_config.unwrap_or_default();
        let mut tmpfs: Vec<String> = host.tmpfs.unwrap_or_default().into_keys().collect();
        for m in host.mounts.unwrap_or_default() {
            if m.typ == Some(MountType::TMPFS) {
                if let Some(t) = m.target {
                    tmpfs.push(t);
                }
            }
        }
        let health = state
            .health
            .as_ref()
            .and_then(|h| h.status)
            .map(|s| s.to_string())
            .filter(|s| !s.is_empty() && s != "none");
        let upper_dir = r.graph_driver.and_then(|g| g.data.get("UpperDir").cloned());
        let literal_refs =
            dso_actors::hints::literal_references(config.env.as_deref().unwrap_or_default());
        // The facts DSO needs, logged by DSO (bollard's own debug output of the answer, which
        // holds the container's environment, is filtered out: see `crate::logging`).
        tracing::debug!(
            container = id,
            running = state.running.unwrap_or(false),
            pid = state.pid.unwrap_or(0),
            tmpfs = tmpfs.len(),
            labels = config.labels.as_ref().map_or(0, |l| l.len()),
            "container inspected"
        );
        Ok(ContainerInfo {
            id: r.id.unwrap_or_else(|| id.to_string()),
            name: r
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            labels: config.labels.unwrap_or_default(),
            image: config.image.unwrap_or_default(),
            user: config.user.unwrap_or_default(),
            running: state.running.unwrap_or(false),
            tmpfs_mounts: tmpfs,
            upper_dir,
            started_at: state.started_at,
            health,
            pid: state
                .pid
                .and_then(|p| u32::try_from(p).ok())
                .filter(|p| *p > 0),
            literal_refs,
        })
    }

    async fn list_running(&self) -> Result<Vec<ContainerSummary>, EngineError> {
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: false,
                ..Default::default()
            }))
            .await
            .map_err(map_err)?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                Some(ContainerSummary {
                    id: c.id?,
                    labels: c.labels.unwrap_or_default(),
                })
            })
            .collect())
    }

    async fn exec(
        &self,
        id: &str,
        cmd: &[String],
        stdin: &[u8],
    ) -> Result<ExecOutput, EngineError> {
        self.exec_guard.check(&self.docker, id).await?;
        let deadline = tokio::time::Instant::now() + self.exec_timeout;
        let timed_out = || EngineError::ExecTimeout {
            after: self.exec_timeout,
            killed: false,
        };
        let create = self.docker.create_exec(
            id,
            CreateExecOptions::<String> {
                attach_stdin: Some(true),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                tty: Some(false),
                user: Some("0".to_string()),
                cmd: Some(cmd.to_vec()),
                ..Default::default()
            },
        );
        let exec = tokio::time::timeout_at(deadline, create)
            .await
            .map_err(|_| timed_out())?
            .map_err(map_err)?;
        match tokio::time::timeout_at(deadline, self.run_exec(&exec.id, stdin)).await {
            Ok(r) => r,
            Err(_) => {
                let killed = self.exec_guard.hung(&self.docker, id, &exec.id).await;
                Err(EngineError::ExecTimeout {
                    after: self.exec_timeout,
                    killed,
                })
            }
        }
    }

    async fn events(&self, since: Option<SystemTime>) -> Result<EventStream, EngineError> {
        let mut filters = HashMap::new();
        filters.insert("type".to_string(), vec!["container".to_string()]);
        // Podman 4.3's compat API matches its own names in the filter (`died`, `remove`) while
        // it reports `die`; Docker ignores names it does not emit. Both sets, one mapping.
        filters.insert(
            "event".to_string(),
            ["start", "die", "died", "destroy", "remove"]
                .map(String::from)
                .to_vec(),
        );
        let since = since.map(|t| {
            let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
            format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
        });
        let stream = self
            .docker
            .events(Some(EventsOptions {
                since,
                until: None,
                filters: Some(filters),
            }))
            .map_err(map_err)
            .try_filter_map(|m| async move {
                let Some(action) = m.action.as_deref().and_then(action_of) else {
                    return Ok(None);
                };
                let Some(id) = m.actor.and_then(|a| a.id) else {
                    return Ok(None);
                };
                Ok(Some(EngineEvent {
                    id,
                    action,
                    time_nanos: m.time_nano.unwrap_or(0),
                }))
            });
        Ok(Box::pin(stream))
    }

    async fn ping(&self) -> Result<(), EngineError> {
        self.docker.ping().await.map(|_| ()).map_err(map_err)
    }

    async fn signal(&self, id: &str, signal: &str) -> Result<(), EngineError> {
        self.docker
            .kill_container(
                id,
                Some(KillContainerOptions {
                    signal: signal.to_string(),
                }),
            )
            .await
            .map_err(map_err)
    }

    async fn restart(&self, id: &str) -> Result<(), EngineError> {
        self.docker
            .restart_container(id, Some(RestartContainerOptions::default()))
            .await
            .map_err(map_err)
    }

    async fn roll_service(
        &self,
        task: &SwarmTask,
        change: &str,
        roll: bool,
    ) -> Result<RollOutcome, EngineError> {
        let info = self.docker.info().await.map_err(map_err)?;
        if !info
            .swarm
            .and_then(|s| s.control_available)
            .unwrap_or(false)
        {
            return Ok(RollOutcome::NotManager);
        }
        self.prove_task(task).await?;
        let service = task.service.as_str();
        // A write at a stale version index ("update out of sequence") lost a race with another
        // agent's roll (or an operator's update): read again and decide again.
        for _ in 0..ROLL_ATTEMPTS {
            let current = self
                .docker
                .inspect_service(service, None)
                .await
                .map_err(map_err)?;
            let version = current.version.and_then(|v| v.index).ok_or_else(|| {
                EngineError::Engine(format!("service {service} has no version index"))
            })?;
            let version = i32::try_from(version).map_err(|_| {
                EngineError::Engine(format!(
                    "service {service}: version index {version} too large"
                ))
            })?;
            let mut spec = current.spec.unwrap_or_default();
            let labels = spec.labels.get_or_insert_with(HashMap::new);
            if labels.get(ROLLED_LABEL).map(String::as_str) == Some(change) {
                return Ok(RollOutcome::AlreadyRolled);
            }
            // A mark (a first delivery) labels only a service that has no label yet: it must
            // never stand in for a roll that older tasks still need (a task started during a
            // rotation gets the new values first; the others still run on the old ones).
            if !roll && labels.contains_key(ROLLED_LABEL) {
                return Ok(RollOutcome::AlreadyRolled);
            }
            labels.insert(ROLLED_LABEL.to_string(), change.to_string());
            // `docker service update --force`: the spec unchanged but for ForceUpdate (and the
            // label), so Swarm replaces the tasks under the service's own UpdateConfig. A service
            // label alone changes no task.
            if roll {
                let task = spec.task_template.get_or_insert_with(Default::default);
                task.force_update = Some(task.force_update.unwrap_or(0).wrapping_add(1));
            }
            let options = UpdateServiceOptions {
                version,
                ..Default::default()
            };
            match self
                .docker
                .update_service(service, spec, options, None)
                .await
            {
                Ok(_) if roll => return Ok(RollOutcome::Rolled),
                Ok(_) => return Ok(RollOutcome::Marked),
                Err(bollard::errors::Error::DockerResponseServerError { message, .. })
                    if message.contains("out of sequence") =>
                {
                    tracing::debug!(
                        service,
                        "service changed while rolling it; reading it again"
                    );
                }
                Err(e) => return Err(map_err(e)),
            }
        }
        Err(EngineError::Engine(format!(
            "service {service} kept changing: {ROLL_ATTEMPTS} update attempts out of sequence"
        )))
    }
}

impl BollardEngine {
    /// The container's Swarm labels are untrusted (anyone who creates a container sets them):
    /// the roll goes ahead only when the manager knows the task, the task belongs to the service
    /// and runs this very container.
    async fn prove_task(&self, claim: &SwarmTask) -> Result<(), EngineError> {
        let refuse = |why: &str| {
            Err(EngineError::Engine(format!(
                "container {} says it is a task of Swarm service {} but {why}: service not rolled",
                short(&claim.container),
                short(&claim.service),
            )))
        };
        // Ids go into request paths (the Injector only builds claims from id-like labels; checked
        // again here, where the paths are made).
        if !SwarmTask::is_id(&claim.task) {
            return refuse("it has no valid com.docker.swarm.task.id label");
        }
        if !SwarmTask::is_id(&claim.service) {
            return refuse("its com.docker.swarm.service.id label is not an id");
        }
        let task = match self.docker.inspect_task(&claim.task).await {
            Ok(t) => t,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => return refuse("the manager knows no such task"),
            Err(e) => return Err(map_err(e)),
        };
        if task.service_id.as_deref() != Some(claim.service.as_str()) {
            return refuse("its task belongs to another service");
        }
        let runs = task
            .status
            .and_then(|s| s.container_status)
            .and_then(|c| c.container_id);
        if runs.as_deref() != Some(claim.container.as_str()) {
            return refuse("its task runs another container");
        }
        Ok(())
    }
}

/// The first 12 bytes of an id, for messages (ids are checked ASCII before they get here).
fn short(id: &str) -> &str {
    id.get(..id.len().min(12)).unwrap_or("?")
}

/// Reads and writes of one roll before giving up (each retry follows a concurrent update).
const ROLL_ATTEMPTS: usize = 5;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_and_podman_event_names_map_to_the_same_actions() {
        assert_eq!(action_of("start"), Some(ContainerAction::Start));
        for die in ["die", "died"] {
            assert_eq!(action_of(die), Some(ContainerAction::Die));
        }
        for gone in ["destroy", "remove"] {
            assert_eq!(action_of(gone), Some(ContainerAction::Destroy));
        }
        for other in ["create", "init", "cleanup", "sync", "exec_die", "stop"] {
            assert_eq!(action_of(other), None, "{other}");
        }
    }
}
