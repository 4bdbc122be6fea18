//! `dso agent`: logging, the wiring of the actor system (engine, providers, Supervisor, admin
//! socket, HTTP endpoint), signals (SIGTERM drains; SIGHUP validates, then restarts in place).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use dso::config::{Config, WriteMode};
use dso::docker::BollardEngine;
use dso::http::AdminState;
use dso_actors::engine::ContainerEngine;
use dso_actors::exit::ExitCode;
use dso_actors::messages::Shutdown;
use dso_actors::metrics::Metrics;
use dso_actors::supervisor::{AgentSettings, ProviderSpec, Supervisor};

use crate::cli::LogFormat;

/// Loads the config, starts logging, runs the agent until a signal stops it.
pub fn agent(
    config: Option<&Path>,
    log_format: LogFormat,
    listen: Option<std::net::SocketAddr>,
) -> anyhow::Result<std::process::ExitCode> {
    let (cfg, name) = match super::load_config(config) {
        Ok(c) => c,
        Err(code) => return Ok(code.into()),
    };
    init_logging(log_format);
    run_agent(cfg, name, config.map(Path::to_path_buf), listen)
}

/// Logs to stderr, human or JSON lines: `DSO_LOG` (default `info`) for DSO's own crates; other
/// libraries' debug output never (see `dso::logging`).
fn init_logging(format: LogFormat) {
    dso::logging::init(matches!(format, LogFormat::Json));
}

/// Hardens the process, wires the actor system and runs it until a signal stops it; re-executes
/// itself after a SIGHUP that brought a valid, changed config.
fn run_agent(
    mut cfg: Config,
    config_name: String,
    config_path: Option<PathBuf>,
    listen: Option<std::net::SocketAddr>,
) -> anyhow::Result<std::process::ExitCode> {
    crate::hardening::disable_core_dumps();
    crate::hardening::lock_memory();
    let reexec = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reexec_flag = reexec.clone();
    // The file's config: what a SIGHUP compares the file with.
    let running_cfg = cfg.clone();
    if let Some(listen) = listen {
        cfg.agent.listen = listen;
    }
    let system = actix::System::new();
    let endpoint = cfg.agent.engine_endpoint().map_err(anyhow::Error::msg)?;
    let host = endpoint.describe();
    let setup: anyhow::Result<Result<dso::standby::LeaderLock, i32>> = system.block_on(async move {
        tracing::info!(version = env!("CARGO_PKG_VERSION"), config = %config_name, docker = %host, "dso agent starting");
        if let Some((from, to)) = dso::listen::raise_nofile_limit() {
            tracing::info!(from, to, "raised the open-files limit (soft RLIMIT_NOFILE) to the hard limit");
        }
        // agent.listen first: a hot standby answers /healthz (and /metrics, dso_leader 0) there.
        let (metrics, registry) = Metrics::new(env!("CARGO_PKG_VERSION"));
        let listener = tokio::net::TcpListener::bind(cfg.agent.listen)
            .await
            .with_context(|| format!("agent.listen: cannot listen on {}", cfg.agent.listen))?;
        let addr = listener.local_addr()?;
        let state = AdminState {
            registry: Arc::new(registry),
            supervisor: Arc::default(),
        };
        let supervisor_slot = state.supervisor.clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        actix_rt::spawn(dso::http::serve(listener, state, async move {
            let _ = stop_rx.await;
        }));
        tracing::info!(%addr, "admin endpoint listening (/metrics /healthz /readyz)");
        // One active agent per state_dir; another one waits here, a hot standby, until the
        // active one's process ends. Nothing below runs before: no Docker connection, no admin
        // socket, no write.
        let leader = match dso::standby::lead_or_wait(
            &cfg.agent.state_dir,
            wait_for_signal(&running_cfg, config_path.as_deref()),
        )
        .await?
        {
            Ok(lock) => lock,
            Err(stop) => {
                if stop == Stop::Reload {
                    reexec_flag.store(true, std::sync::atomic::Ordering::SeqCst);
                    tracing::info!("configuration changed; restarting the standby in place with it");
                } else {
                    tracing::info!("signal received; the standby stops");
                }
                return Ok(Err(ExitCode::Ok.as_i32()));
            }
        };
        metrics.leader.set(1);
        // The socket may not exist yet (dockerd restarting): retry like the event stream does.
        let mut attempt = 0u32;
        let engine = loop {
            match BollardEngine::connect(&endpoint) {
                Ok(e) => break e.with_exec_timeout(cfg.agent.exec_timeout),
                Err(e) if attempt < cfg.agent.docker_max_reconnects => {
                    attempt += 1;
                    let delay = dso_actors::watcher::backoff(attempt);
                    tracing::warn!(attempt, delay_ms = delay.as_millis() as u64, error = %e, "docker not reachable; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    tracing::error!(
                        "docker unreachable after {} reconnect attempts: {e}",
                        cfg.agent.docker_max_reconnects
                    );
                    return Ok(Err(ExitCode::DockerUnreachable.as_i32()));
                }
            }
        };
        let engine = match tokio::time::timeout(Duration::from_secs(5), engine.clone().negotiate()).await {
            Ok(Ok((e, v))) => {
                tracing::info!(api_version = %v, "docker API version negotiated");
                e
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "docker not reachable yet; will keep retrying");
                engine
            }
            Err(_) => {
                tracing::warn!("docker did not answer within 5s; will keep retrying");
                engine
            }
        };
        let engine: Arc<dyn ContainerEngine> = Arc::new(engine);
        let digest_key_path = cfg.agent.state_dir.join("digest.key");
        let digest_key = dso::providers::file::load_or_create_key_file(&digest_key_path)
            .with_context(|| format!("agent.state_dir: {}", cfg.agent.state_dir.display()))?;
        let providers = cfg
            .providers
            .iter()
            .map(|(name, p)| ProviderSpec {
                name: name.clone(),
                factory: dso::providers::factory(name, p),
                timeout: p.timeout(),
                refresh_interval: p.refresh_interval(),
                rate_limit: p.rate_limit(),
            })
            .collect();
        let access = Arc::new(cfg.access_rules());
        if access.is_open() {
            tracing::info!("no [[access]] rules: every container and admin-socket caller may read every reference");
        } else {
            tracing::info!(rules = access.rules().len(), "[[access]] rules in force");
        }
        let settings = AgentSettings {
            shards: cfg.agent.shards,
            queue_capacity: cfg.agent.queue_capacity,
            shard_concurrency: cfg.agent.shard_concurrency,
            exec_concurrency: cfg.agent.exec_concurrency,
            cache_ttl: cfg.cache.ttl,
            cache_max_entries: cfg.cache.max_entries,
            cache_max_stale: cfg.cache.max_stale,
            rules: Arc::new(cfg.rules()),
            scope: cfg.agent.scope_target(),
            access: access.clone(),
            docker_max_reconnects: cfg.agent.docker_max_reconnects,
            reconcile_interval: (!cfg.agent.reconcile_interval.is_zero())
                .then_some(cfg.agent.reconcile_interval),
            drain_timeout: cfg.agent.drain_timeout,
            digest_key: Arc::new(digest_key),
            rotation_debounce: cfg.agent.rotation_debounce,
            restart_splay: cfg.agent.restart_splay,
            max_concurrent_rotations: cfg.agent.max_concurrent_rotations,
            audit: Some(actix::Actor::start(dso::audit::AuditLog::open(&cfg.agent.audit_log())?).recipient()),
        };
        let admin = dso::admin::bind(&cfg.agent.admin_socket)?;
        // `write_mode = "auto"`: files go through `/proc/<pid>/root` where the host allows it.
        // A tcp:// engine is another host's (or may be): its pids mean nothing here, so exec only.
        if cfg.agent.write_mode == WriteMode::Auto && !endpoint.is_local() {
            tracing::info!("tcp:// engine: every write uses the exec path (the direct path needs the engine's containers on this host)");
        }
        let direct = (cfg.agent.write_mode == WriteMode::Auto && endpoint.is_local()).then(|| {
            Arc::new(dso::procroot::ProcRootWriter::new()) as Arc<dyn dso_actors::direct::DirectWriter>
        });
        let supervisor =
            actix::Actor::start(Supervisor::new(engine, direct, providers, settings, metrics));
        let _ = supervisor_slot.set(supervisor.clone());
        let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
        actix_rt::spawn(dso::admin::serve(admin, supervisor.clone(), access, async move {
            let _ = admin_stop_rx.await;
        }));
        tracing::info!(socket = %cfg.agent.admin_socket.display(), "admin socket listening");
        let socket_path = cfg.agent.admin_socket.clone();
        actix_rt::spawn(async move {
            if wait_for_signal(&running_cfg, config_path.as_deref()).await == Stop::Reload {
                reexec_flag.store(true, std::sync::atomic::Ordering::SeqCst);
                tracing::info!("configuration changed; draining, then restarting in place with it");
            } else {
                tracing::info!("signal received; draining");
            }
            let _ = stop_tx.send(());
            let _ = admin_stop_tx.send(());
            let _ = std::fs::remove_file(&socket_path);
            let _ = supervisor.send(Shutdown).await;
        });
        Ok(Ok(leader))
    });
    // Held until the process ends (or re-executes itself: exec closes it, and the re-executed
    // agent takes it back — see dso::standby).
    let _leader = match setup? {
        Ok(lock) => lock,
        Err(code) => {
            if reexec.load(std::sync::atomic::Ordering::SeqCst) && code == 0 {
                return reexec_self();
            }
            return Ok(exit_status(code));
        }
    };
    let code = system.run_with_code().context("actor system")?;
    if reexec.load(std::sync::atomic::Ordering::SeqCst) && code == 0 {
        return reexec_self();
    }
    Ok(exit_status(code))
}

/// The actor system's exit code (one of [`ExitCode`]'s numbers) as the process's.
fn exit_status(code: i32) -> std::process::ExitCode {
    u8::try_from(code).map_or(ExitCode::Failure.into(), Into::into)
}

/// Why the agent stops.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    /// SIGTERM / SIGINT: drain and exit 0.
    Terminate,
    /// SIGHUP with a valid, changed config: drain and re-exec with it.
    Reload,
}

/// Waits for SIGTERM/SIGINT, or for a SIGHUP that brings a valid, changed config. A SIGHUP with
/// an invalid config is refused (every problem logged) and the agent keeps running unchanged:
/// a bad config is never half-applied.
async fn wait_for_signal(running: &Config, path: Option<&Path>) -> Stop {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return Stop::Terminate;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return Stop::Terminate,
            _ = int.recv() => return Stop::Terminate,
            _ = hup.recv() => match Config::load(path) {
                Err(e) => tracing::error!(
                    problems = %e.problems.join("; "),
                    "SIGHUP: the new configuration is invalid; keeping the running one (nothing applied)"
                ),
                Ok((new, _)) if new == *running => {
                    tracing::info!("SIGHUP: configuration unchanged; nothing to do");
                }
                Ok(_) => return Stop::Reload,
            },
        }
    }
}

/// Replaces this process with a fresh `dso` with the same arguments (same pid, so Docker and
/// systemd see no restart). The new agent re-reads state from the containers: nothing is
/// re-injected needlessly and no reload policy fires.
fn reexec_self() -> anyhow::Result<std::process::ExitCode> {
    use std::os::unix::process::CommandExt;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let err = std::process::Command::new("/proc/self/exe")
        .args(args)
        .exec();
    Err(anyhow::anyhow!(
        "restarting in place with the new configuration failed: {err}"
    ))
}
