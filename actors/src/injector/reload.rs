//! Reload dispatch: the one place a [`ReloadPolicy`] is executed, after values the application may
//! have read were replaced (never on a first injection, never when nothing changed). A new policy
//! is one variant of [`ReloadPolicy`] (parsed in `spec`) and one arm of [`run`].

use crate::engine::ContainerEngine;
use crate::model::{ContainerInfo, SwarmTask};
use crate::spec::ReloadPolicy;

use super::InjectorSettings;

/// What running a reload policy did.
#[derive(Debug)]
pub(super) struct Reloaded {
    /// The policy (`ReloadPolicy::as_str`): metric label and audit result.
    pub policy: &'static str,
    /// Done (or, for `restart`, scheduled), or what failed.
    pub result: Result<(), String>,
    /// Count `dso_reloads_total{policy,result="ok"}` now; false when the policy's own actor
    /// counts it once the work is really done (the Restarter, after the container is back).
    pub count_now: bool,
}

/// The Swarm roll a `restart` is for this container: a Swarm task's service and the change.
#[derive(Debug)]
pub(super) struct Roll {
    /// The task container and the service it says it belongs to (proved by the engine).
    pub task: SwarmTask,
    /// [`crate::tarball::rolled_digest`] of what was delivered.
    pub change: String,
}

/// Runs `policy` for container `info` (None: the policy is `none`). A Swarm task (`roll` is
/// Some) is never `docker restart`ed: Swarm would count it failed and start a replacement while
/// the restarted one runs on outside its control. Its service is rolled instead, once per change.
pub(super) async fn run(
    policy: &ReloadPolicy,
    info: &ContainerInfo,
    id: &str,
    roll: Option<Roll>,
    engine: &dyn ContainerEngine,
    settings: &InjectorSettings,
) -> Option<Reloaded> {
    let (result, count_now) = match policy {
        ReloadPolicy::None => return None,
        ReloadPolicy::Signal(sig) => (
            engine
                .signal(id, sig)
                .await
                .map_err(|e| format!("sending {sig}: {e}")),
            true,
        ),
        // The service, once per change, through the Restarter (which counts it); without one
        // (unit tests of a lone shard), the engine's roll at once.
        ReloadPolicy::Restart if roll.is_some() => {
            let Roll { task, change } = roll?;
            match &settings.restarter {
                Some(r) => (
                    r.try_send(crate::messages::RequestRoll {
                        task,
                        change,
                        roll: true,
                    })
                    .map_err(|e| format!("scheduling the service roll: {e}")),
                    false,
                ),
                None => (
                    engine
                        .roll_service(&task, &change, true)
                        .await
                        .map(drop)
                        .map_err(|e| format!("rolling service {}: {e}", task.service)),
                    true,
                ),
            }
        }
        // One container of a Compose service at a time, through the Restarter (which counts it);
        // without one (unit tests of a lone shard), Docker's own restart at once.
        ReloadPolicy::Restart => (
            match &settings.restarter {
                Some(r) => r
                    .try_send(crate::messages::RequestRestart {
                        id: id.to_string(),
                        group: crate::restarter::compose_group(&info.labels),
                    })
                    .map_err(|e| format!("scheduling the restart: {e}")),
                None => engine
                    .restart(id)
                    .await
                    .map_err(|e| format!("restarting: {e}")),
            },
            false,
        ),
    };
    Some(Reloaded {
        policy: policy.as_str(),
        result,
        count_now,
    })
}

/// After a first delivery to a Swarm task whose policy is `restart`: the service is labelled with
/// the change its tasks run with (no roll), through the Restarter, which asks once per change.
/// Best effort: a lost mark costs at most one extra roll later.
pub(super) fn mark(roll: Option<Roll>, settings: &InjectorSettings) {
    let (Some(Roll { task, change }), Some(r)) = (roll, &settings.restarter) else {
        return;
    };
    if let Err(e) = r.try_send(crate::messages::RequestRoll {
        task,
        change,
        roll: false,
    }) {
        tracing::debug!(error = %e, "Swarm service not labelled with its change");
    }
}
