//! The bollard adapter: the real [`ContainerEngine`].

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::MountType;
use bollard::query_parameters::{
    EventsOptions, KillContainerOptions, ListContainersOptions, RestartContainerOptions,
};
use bollard::Docker;
use dso_actors::engine::{ContainerEngine, EngineError, EventStream};
use dso_actors::model::{
    ContainerAction, ContainerInfo, ContainerSummary, EngineEvent, ExecOutput,
};
use futures_util::{StreamExt, TryStreamExt};
use tokio::io::AsyncWriteExt;

/// Most exec output kept (the injection script prints at most a line or two).
const MAX_EXEC_OUTPUT: usize = 8 * 1024;

/// Docker Engine through bollard.
#[derive(Clone, Debug)]
pub struct BollardEngine {
    docker: Docker,
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
}

impl BollardEngine {
    /// A client for `host` (`unix:///var/run/docker.sock`, `tcp://…`). Does not connect yet.
    pub fn connect(host: &str) -> Result<Self, ConnectError> {
        let docker = if let Some(path) = host.strip_prefix("unix://") {
            Docker::connect_with_unix(path, 120, bollard::API_DEFAULT_VERSION)
        } else {
            Docker::connect_with_host(host)
        }
        .map_err(|e| ConnectError::BadHost {
            host: host.to_string(),
            reason: e.to_string(),
        })?;
        Ok(Self { docker })
    }

    /// Settles the API version with the daemon (Engine 20.10 speaks 1.41). Returns the version.
    pub async fn negotiate(self) -> Result<(Self, String), EngineError> {
        let docker = self.docker.negotiate_version().await.map_err(map_err)?;
        let v = docker.client_version().to_string();
        Ok((Self { docker }, v))
    }

    /// The client's API version.
    pub fn api_version(&self) -> String {
        self.docker.client_version().to_string()
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
        other => EngineError::Engine(other.to_string()),
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
        Ok(ContainerInfo {
            id: r.id.unwrap_or_else(|| id.to_string()),
            name: r
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            labels: config.labels.unwrap_or_default(),
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
        let exec = self
            .docker
            .create_exec(
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
            )
            .await
            .map_err(map_err)?;
        let started = self
            .docker
            .start_exec(
                &exec.id,
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
            let mut text = String::new();
            while let Some(chunk) = output.next().await {
                let chunk = chunk.map_err(map_err)?;
                if text.len() < MAX_EXEC_OUTPUT {
                    text.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
                }
            }
            Ok::<_, EngineError>(text)
        };
        let (w, text) = tokio::join!(write, read);
        let text = text?;
        if let Err(e) = w {
            // The command may exit before reading all of stdin (e.g. the tmpfs check failed).
            tracing::debug!(error = %e, "exec stdin closed early");
        }
        let inspect = self.docker.inspect_exec(&exec.id).await.map_err(map_err)?;
        Ok(ExecOutput {
            exit_code: inspect.exit_code,
            output: text.chars().take(MAX_EXEC_OUTPUT).collect(),
        })
    }

    async fn events(&self, since: Option<SystemTime>) -> Result<EventStream, EngineError> {
        let mut filters = HashMap::new();
        filters.insert("type".to_string(), vec!["container".to_string()]);
        filters.insert(
            "event".to_string(),
            vec![
                "start".to_string(),
                "die".to_string(),
                "destroy".to_string(),
            ],
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
                let action = match m.action.as_deref() {
                    Some("start") => ContainerAction::Start,
                    Some("die") => ContainerAction::Die,
                    Some("destroy") => ContainerAction::Destroy,
                    _ => return Ok(None),
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
}
