//! Execs that outlived `agent.exec_timeout`.
//!
//! Docker has no API to stop an exec. When one hangs (a hostile image's `sh` that never returns),
//! the agent gives up on it at the deadline, kills its process when it can see it — its host pid is
//! in `ExecInspect`, meaningful only to an agent in the host's PID namespace — and remembers it:
//! no new exec starts in that container while the hung one still runs, so retries (rotations,
//! reconcile passes, `dso inject`) cannot pile up hung processes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use dso_actors::engine::EngineError;

/// How long asking Docker about a hung exec may take.
const INSPECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Containers remembered at most (each entry is one container with a hung exec).
const MAX_REMEMBERED: usize = 10_000;

/// Per container, the exec that timed out there and may still run. Cheap to clone (shared).
#[derive(Clone, Debug, Default)]
pub struct HungExecs(Arc<Mutex<HashMap<String, String>>>);

/// What Docker says about an exec: (still running, host pid, container id).
async fn inspect(docker: &Docker, exec_id: &str) -> Option<(bool, Option<i64>, Option<String>)> {
    let r = tokio::time::timeout(INSPECT_TIMEOUT, docker.inspect_exec(exec_id)).await;
    match r {
        Ok(Ok(i)) => Some((i.running.unwrap_or(false), i.pid, i.container_id)),
        // The exec (or its container) is gone: nothing runs any more.
        Ok(Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        })) => Some((false, None, None)),
        _ => None,
    }
}

impl HungExecs {
    fn get(&self, container: &str) -> Option<String> {
        self.0.lock().ok()?.get(container).cloned()
    }

    fn forget(&self, container: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(container);
        }
    }

    /// Before a new exec in `container`: `ExecBusy` while an earlier timed-out exec still runs
    /// there (its process is killed again when visible), or when Docker cannot tell.
    pub async fn check(&self, docker: &Docker, container: &str) -> Result<(), EngineError> {
        let Some(exec_id) = self.get(container) else {
            return Ok(());
        };
        match inspect(docker, &exec_id).await {
            Some((false, _, _)) => {
                self.forget(container);
                Ok(())
            }
            Some((true, pid, cid)) => {
                kill_in_container(cid.as_deref(), pid);
                Err(EngineError::ExecBusy)
            }
            None => Err(EngineError::ExecBusy),
        }
    }

    /// After exec `exec_id` in `container` timed out: kills its process when the agent can see it
    /// (true) and remembers the exec either way, until Docker says it ended.
    pub async fn hung(&self, docker: &Docker, container: &str, exec_id: &str) -> bool {
        let killed = match inspect(docker, exec_id).await {
            Some((true, pid, cid)) => kill_in_container(cid.as_deref(), pid),
            Some((false, _, _)) => return true,
            None => false,
        };
        if let Ok(mut m) = self.0.lock() {
            if m.len() >= MAX_REMEMBERED {
                m.clear();
            }
            m.insert(container.to_string(), exec_id.to_string());
        }
        tracing::warn!(
            container = %container.get(..12).unwrap_or(container),
            killed,
            "an injection exec hung past agent.exec_timeout"
        );
        killed
    }
}

/// SIGKILL to host pid `pid`, only when it is a process of container `container_id` (its cgroup
/// is exactly the container's, `pidproof::cgroup_is_container`). Through a pidfd, so a pid reused meanwhile is never signalled. False
/// when the agent cannot see the process (its own PID namespace, no permission) or it is not the
/// container's.
fn kill_in_container(container_id: Option<&str>, pid: Option<i64>) -> bool {
    use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};
    let Some(cid) = container_id else {
        return false;
    };
    let Some(pid) = pid
        .and_then(|p| i32::try_from(p).ok())
        .filter(|p| *p > 0)
        .and_then(Pid::from_raw)
    else {
        return false;
    };
    let Ok(fd) = pidfd_open(pid, PidfdFlags::empty()) else {
        return false;
    };
    // The pidfd pins the process: if it exited and the pid was reused since, the cgroup read
    // below may be another process's, but the signal through the pidfd then fails (ESRCH).
    let cgroup =
        std::fs::read_to_string(format!("/proc/{}/cgroup", pid.as_raw_pid())).unwrap_or_default();
    // The same exact proof as the direct write path: a cgroup path that merely contains the id
    // (a host process in a look-alike cgroup) is not the container's.
    if !crate::pidproof::cgroup_is_container(&cgroup, cid) {
        return false;
    }
    pidfd_send_signal(&fd, Signal::KILL).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_kills_without_a_matching_container() {
        let me = i64::from(std::process::id());
        assert!(!kill_in_container(None, Some(me)));
        assert!(!kill_in_container(Some("short"), Some(me)));
        assert!(!kill_in_container(Some(&"a".repeat(64)), Some(me)));
        assert!(!kill_in_container(Some(&"a".repeat(64)), None));
        assert!(!kill_in_container(Some(&"a".repeat(64)), Some(-1)));
    }
}
