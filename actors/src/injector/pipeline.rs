//! One job, start to end, as small named steps: inspect → spec (scope, labels, access, tmpfs) → fetch →
//! digest (and the duplicate-start check) → write (direct, else exec) → reload. Pure async: it
//! reads the shard's state only through its arguments and returns an [`Outcome`] the shard books.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use actix::prelude::*;
use futures_util::future::join_all;

use crate::backend::Fetched;
use crate::cache::Cache;
use crate::engine::{ContainerEngine, EngineError};
use crate::hints;
use crate::messages::{ContainerJob, FetchError, FileStatus, GetSecret, Trigger};
use crate::metrics::{Metrics, CONTAINER_WARNING_REASONS};
use crate::model::{ContainerAction, ContainerInfo, SecretFile, SwarmTask};
use crate::secret::SecretValue;
use crate::spec::{build_spec, tmpfs_mount_of, ContainerSpec, ReloadPolicy, SpecError, Target};
use crate::tarball::{digest, rolled_digest};

use super::direct::{write_direct, DirectJob};
use super::exec::write_exec;
use super::{refused, reload, Delivered, InjectorSettings, Outcome};

/// The `(StartedAt, digest)` this shard last delivered to the container, if any.
pub(super) type Previous = Option<(Option<String>, String)>;

/// One job, start to end, with the container's name (empty when unknown) for status.
pub(super) async fn run_job(
    job: ContainerJob,
    prev: Previous,
    engine: Arc<dyn ContainerEngine>,
    cache: Addr<Cache>,
    settings: InjectorSettings,
    metrics: Arc<Metrics>,
) -> (String, Outcome) {
    if matches!(
        job.trigger,
        Trigger::Event(ContainerAction::Die | ContainerAction::Destroy)
    ) {
        return (String::new(), Outcome::Stopped);
    }
    let info = match engine.inspect(&job.id).await {
        Ok(i) => i,
        Err(EngineError::NotFound(_) | EngineError::NotRunning(_)) => {
            return (String::new(), Outcome::Gone)
        }
        Err(e) => return (String::new(), refused("engine_error", e.to_string())),
    };
    if !info.running {
        return (info.name, Outcome::Gone);
    }
    if matches!(job.trigger, Trigger::Event(ContainerAction::Start)) {
        warn_started(&info, &settings, &metrics);
    }
    let name = info.name.clone();
    let outcome = match inject(&job, prev, &info, &*engine, &cache, &settings, &metrics).await {
        Ok(o) | Err(o) => o,
    };
    (name, outcome)
}

/// A container in scope that just started: warn about literal references and unknown labels.
fn warn_started(info: &ContainerInfo, settings: &InjectorSettings, metrics: &Metrics) {
    let ignore: Vec<&str> = match &settings.scope {
        Some(scope) if !scope.matches(&info.name, &info.labels) => return,
        Some(Target::Label(key, _)) => vec![key.as_str()],
        _ => vec![],
    };
    let [literal, unknown] = CONTAINER_WARNING_REASONS;
    let name = hints::safe(&info.name);
    for var in &info.literal_refs {
        metrics.container_warning(literal);
        let var = hints::safe(var);
        tracing::warn!(
            container = %name,
            variable = %var,
            "container `{name}`: environment variable {var} holds a literal dso:// or dsofile:// \
             reference, so the application sees the reference, not the secret: it was started \
             without DSO (a plain `docker compose up`?); start it with `docker dso up`"
        );
    }
    for u in hints::unknown_labels(&info.labels, &ignore) {
        metrics.container_warning(unknown);
        let label = hints::safe(&u.label);
        tracing::warn!(
            container = %name,
            label = %label,
            "container `{name}`: label {label} is not a DSO label and is ignored; did you mean {}?",
            u.hint
        );
    }
}

/// Everything after `inspect`. `Err` ends the job early with that outcome.
async fn inject(
    job: &ContainerJob,
    prev: Previous,
    info: &ContainerInfo,
    engine: &dyn ContainerEngine,
    cache: &Addr<Cache>,
    settings: &InjectorSettings,
    metrics: &Metrics,
) -> Result<Outcome, Outcome> {
    let spec = plan(info, settings)?;
    let (values, versions) = fetch(&spec, info, cache).await?;
    let pairs: Vec<_> = spec.files.iter().zip(values.iter()).collect();
    let digest = digest(&settings.digest_key, &pairs);
    if already_injected(job, &prev, info, &digest) {
        return Ok(Outcome::AlreadyInjected);
    }
    let roll = swarm_roll(&spec, info, &pairs, &versions);
    let files = file_statuses(&pairs, versions, settings);
    let names: Vec<String> = spec.files.iter().map(|f| f.name.clone()).collect();
    let keys = keys(&spec);
    // `plan` checked that the directory is on one of the container's tmpfs mounts.
    let mount = tmpfs_mount_of(&spec.dir, &info.tmpfs_mounts).unwrap_or(spec.dir.as_str());
    let direct = DirectJob {
        job,
        info,
        mount,
        dir: &spec.dir,
        digest: &digest,
        pairs: &pairs,
    };
    let written = match write_direct(direct, settings, engine, metrics).await {
        Some(w) => w,
        None => {
            drop(pairs);
            write_exec(
                job,
                info,
                mount,
                &spec,
                &digest,
                values,
                engine,
                metrics,
                settings.exec_permits.as_deref(),
            )
            .await
        }
    };
    let (changed, replaced) = written?;
    // The policy runs only when values the application may have read were replaced — never on a
    // first injection, never when nothing changed.
    let reload = if replaced {
        reload::run(&spec.reload, info, &job.id, roll, engine, settings).await
    } else {
        if changed {
            reload::mark(roll, settings);
        }
        None
    };
    Ok(Outcome::Injected(Box::new(Delivered {
        started_at: info.started_at.clone(),
        names,
        digest,
        changed,
        replaced,
        keys,
        files,
        reload,
    })))
}

/// Which files the container gets: scope, labels and rules, `[[access]]`, and the tmpfs check. Any error refuses
/// the whole container; `NotManaged` when it asks for nothing.
fn plan(info: &ContainerInfo, settings: &InjectorSettings) -> Result<ContainerSpec, Outcome> {
    if let Some(scope) = &settings.scope {
        if !scope.matches(&info.name, &info.labels) {
            return Err(Outcome::NotManaged);
        }
    }
    let spec = match build_spec(info, &settings.rules) {
        Ok(Some(s)) => s,
        Ok(None) => return Err(Outcome::NotManaged),
        Err(errs) => {
            return Err(refused(
                "invalid_spec",
                format!(
                    "container `{}`: {}; nothing written",
                    info.name,
                    errs.iter()
                        .map(SpecError::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            ))
        }
    };
    if let Err(denied) = settings
        .access
        .check_container(info, spec.files.iter().map(|f| &f.source))
    {
        return Err(refused(
            "denied",
            format!("container `{}`: {denied}; nothing written", info.name),
        ));
    }
    if tmpfs_mount_of(&spec.dir, &info.tmpfs_mounts).is_none() {
        return Err(refused(
            "not_tmpfs",
            format!(
                "container `{}`: `{}` is not on a tmpfs mount of the container (add `--tmpfs {}` or `--mount type=tmpfs,dst={}`); nothing written",
                info.name, spec.dir, spec.dir, spec.dir
            ),
        ));
    }
    Ok(spec)
}

/// Each file's value and backend version, through the Cache: one `GetSecret` per distinct
/// (provider, path) (the cache coalesces across containers too). Any failure refuses the
/// container, naming each file, reference and cause.
async fn fetch(
    spec: &ContainerSpec,
    info: &ContainerInfo,
    cache: &Addr<Cache>,
) -> Result<(Vec<SecretValue>, Vec<Option<String>>), Outcome> {
    let mut sources: BTreeMap<(String, String), Option<Result<Fetched, FetchError>>> =
        BTreeMap::new();
    let mut unique = Vec::new();
    for f in &spec.files {
        let k = (f.source.provider.clone(), f.source.path.clone());
        if sources.insert(k, None).is_none() {
            unique.push(f.source.clone());
        }
    }
    let results = join_all(unique.iter().map(|s| {
        let cache = cache.clone();
        let source = s.clone();
        async move {
            match cache.send(GetSecret { source }).await {
                Ok(r) => r,
                Err(_) => Err(FetchError::ProviderGone("cache".to_string())),
            }
        }
    }))
    .await;
    for (s, r) in unique.iter().zip(results) {
        sources.insert((s.provider.clone(), s.path.clone()), Some(r));
    }

    let mut values: Vec<SecretValue> = Vec::with_capacity(spec.files.len());
    let mut versions: Vec<Option<String>> = Vec::with_capacity(spec.files.len());
    let mut errors = Vec::new();
    for f in &spec.files {
        let k = (f.source.provider.clone(), f.source.path.clone());
        match sources.get(&k) {
            Some(Some(Ok(fetched))) => match fetched.data.select(f.source.key.as_deref()) {
                Ok(v) => {
                    values.push(v);
                    versions.push(fetched.version.clone());
                }
                Err(e) => errors.push(format!("`{}` ({}): {e}", f.name, f.source)),
            },
            Some(Some(Err(e))) => errors.push(format!("`{}` ({}): {e}", f.name, f.source)),
            _ => errors.push(format!("`{}` ({}): not fetched", f.name, f.source)),
        }
    }
    drop(sources);
    if !errors.is_empty() {
        return Err(refused(
            "provider_error",
            format!(
                "container `{}`: {}; nothing written",
                info.name,
                errors.join("; ")
            ),
        ));
    }
    Ok((values, versions))
}

/// This very start of the container already got this very content (a manual inject always
/// writes).
fn already_injected(
    job: &ContainerJob,
    prev: &Previous,
    info: &ContainerInfo,
    digest: &str,
) -> bool {
    if job.trigger == Trigger::Manual {
        return false;
    }
    matches!(prev, Some((prev_started, prev_digest))
        if prev_started.is_some() && *prev_started == info.started_at && prev_digest == digest)
}

/// For a Swarm task whose policy is `restart`: its service and the change a roll would be for.
/// Labels are untrusted: a container whose labels claim a task (well-formed ids) is never `docker
/// restart`ed, and the engine refuses the roll when the claim does not hold; labels that are not
/// ids make no claim (such a container is restarted like any other).
fn swarm_roll(
    spec: &ContainerSpec,
    info: &ContainerInfo,
    pairs: &[(&SecretFile, &SecretValue)],
    versions: &[Option<String>],
) -> Option<reload::Roll> {
    if spec.reload != ReloadPolicy::Restart {
        return None;
    }
    let task = SwarmTask::from_labels(&info.id, &info.labels)?;
    Some(reload::Roll {
        change: rolled_digest(&task.service, pairs, versions),
        task,
    })
}

/// Per file: its source, backend version and a keyed digest of its own content (status, audit).
fn file_statuses(
    pairs: &[(&SecretFile, &SecretValue)],
    versions: Vec<Option<String>>,
    settings: &InjectorSettings,
) -> Vec<FileStatus> {
    pairs
        .iter()
        .zip(versions)
        .map(|((f, v), version)| FileStatus {
            name: f.name.clone(),
            source: f.source.to_string(),
            version,
            digest: digest(&settings.digest_key, &[(f, v)]),
            since: None,
        })
        .collect()
}

/// The distinct (provider, path) keys the files come from, sorted.
fn keys(spec: &ContainerSpec) -> Vec<(String, String)> {
    spec.files
        .iter()
        .map(|f| (f.source.provider.clone(), f.source.path.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}
