//! The direct write path from the shard's side: the agent's [`crate::direct::DirectWriter`] (when
//! it has one), the `PidNamespace` diagnosis, and what each answer means for the job.

use crate::direct::{DirectError, DirectTarget, FallbackReason, Written};
use crate::engine::ContainerEngine;
use crate::messages::ContainerJob;
use crate::metrics::Metrics;
use crate::model::{ContainerInfo, SecretFile};
use crate::secret::SecretValue;

use super::{refused, short, InjectorSettings, Outcome, WriteResult};

/// Where and what one direct write puts.
pub(super) struct DirectJob<'a> {
    pub job: &'a ContainerJob,
    pub info: &'a ContainerInfo,
    pub mount: &'a str,
    pub dir: &'a str,
    pub digest: &'a str,
    pub pairs: &'a [(&'a SecretFile, &'a SecretValue)],
}

/// The direct path (`/proc/<pid>/root`, no exec), when the agent has a writer. None: use exec
/// (no writer, or not usable for this container — each reason counted and logged once).
pub(super) async fn write_direct(
    w: DirectJob<'_>,
    settings: &InjectorSettings,
    engine: &dyn ContainerEngine,
    metrics: &Metrics,
) -> Option<WriteResult> {
    let writer = settings.direct.as_deref()?;
    let (job, info) = (w.job, w.info);
    let target = DirectTarget {
        container_id: if info.id.is_empty() {
            &job.id
        } else {
            &info.id
        },
        pid: info.pid.unwrap_or(0),
        dir: w.dir,
        mount: w.mount,
        started_at: info.started_at.as_deref(),
    };
    let mut written = writer.write(&target, w.digest, w.pairs);
    if let Err(DirectError::Gone {
        when: "before the write",
        ..
    }) = &written
    {
        // No /proc/<pid> although Docker said "running": exited meanwhile, or a pid this agent
        // cannot see (its own PID namespace). Docker tells which.
        if let Ok(again) = engine.inspect(&job.id).await {
            if again.running && again.pid == info.pid {
                written = Err(DirectError::Fallback {
                    reason: FallbackReason::PidNamespace,
                    detail: format!("pid {} is not visible to the agent", target.pid),
                });
            }
        }
    }
    let result = match written {
        Ok(Written::Unchanged) => Ok((false, false)),
        Ok(Written::New { replaced }) => Ok((true, replaced)),
        Err(DirectError::Fallback { reason, detail }) => {
            if metrics.direct_fallback(reason.as_str()) {
                tracing::info!(
                    reason = reason.as_str(),
                    container = %short(&job.id),
                    "direct writes not possible: {}; using exec for such containers ({detail})",
                    reason.explain()
                );
            }
            return None;
        }
        Err(e @ DirectError::NotTmpfs { .. }) => Err(refused(
            "not_tmpfs",
            format!("container `{}`: {e}; nothing written", info.name),
        )),
        Err(e @ DirectError::Foreign { .. }) => Err(refused(
            "foreign_entry",
            format!(
                "container `{}`: {e}; the previous files (if any) are still in place",
                info.name
            ),
        )),
        Err(e @ (DirectError::UnknownOwner(_) | DirectError::Accounts { .. })) => Err(refused(
            "unknown_owner",
            format!(
                "container `{}`: {e} (its User or a dso.secret.*.uid/.gid label names it); nothing written",
                info.name
            ),
        )),
        Err(e @ DirectError::Gone { .. }) => {
            tracing::info!(container = %short(&job.id), "{e}; container gone");
            Err(Outcome::Gone)
        }
        Err(e) => Err(refused(
            "write_failed",
            format!(
                "container `{}`: writing through /proc/<pid>/root: {e}; the previous files (if any) are still in place",
                info.name
            ),
        )),
    };
    if result.is_ok() {
        metrics.injection_mode("direct");
    }
    Some(result)
}
