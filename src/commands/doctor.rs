//! `dso doctor`: one line per check, with a fix. One function per group of checks: memory
//! lock, config, Docker socket, Docker API, providers, containers.

use std::io::IsTerminal;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use dso::config::{Config, ProviderConfig};
use dso::docker::BollardEngine;
use dso_actors::backend::BackendError;
use dso_actors::engine::ContainerEngine;
use dso_actors::exit::ExitCode;

use crate::hardening::memory_lock_possible;

/// One `dso doctor` finding.
struct Check {
    name: String,
    ok: bool,
    detail: String,
    fix: Option<String>,
}

/// The findings, in the order they are printed.
#[derive(Default)]
struct Checks(Vec<Check>);

impl Checks {
    fn push(&mut self, name: &str, ok: bool, detail: String, fix: Option<String>) {
        self.0.push(Check {
            name: name.to_string(),
            ok,
            detail,
            fix,
        })
    }
}

/// Runs every check and prints them; [`ExitCode::Failure`] when one failed.
pub fn doctor(config: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    let mut checks = Checks::default();
    memory_lock(&mut checks);
    let Some(cfg) = config_check(&mut checks, config) else {
        return Ok(report(&checks, json));
    };
    let host = cfg.agent.docker_host();
    docker_socket(&mut checks, &host);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let engine = docker(&mut checks, &host).await;
        providers(&mut checks, &cfg).await;
        if let Some(engine) = engine {
            containers(&mut checks, &engine, &cfg).await;
        }
    });
    Ok(report(&checks, json))
}

/// Informational: the agent runs without it, with a warning.
fn memory_lock(checks: &mut Checks) {
    match memory_lock_possible() {
        Ok(()) => checks.push(
            "memory lock",
            true,
            "the agent can lock its memory (secret values never swapped out)".into(),
            None,
        ),
        Err(why) => checks.push(
            "memory lock",
            true,
            format!("not available here ({why}); the agent runs unlocked"),
            Some("grant CAP_IPC_LOCK (compose: cap_add: [IPC_LOCK]) or disable swap".into()),
        ),
    }
}

/// The config loads; `None` (and a failed check) when it does not.
fn config_check(checks: &mut Checks, config: Option<&Path>) -> Option<Config> {
    match Config::load(config) {
        Ok((cfg, source)) => {
            checks.push("config", true, format!("{source} is valid"), None);
            Some(cfg)
        }
        Err(e) => {
            checks.push(
                "config",
                false,
                e.to_string().replace('\n', " "),
                Some("fix the fields named above; `dso check` prints the same".into()),
            );
            None
        }
    }
}

/// The Docker socket's mode (a `unix://` host only).
fn docker_socket(checks: &mut Checks, host: &str) {
    let Some(path) = host.strip_prefix("unix://") else {
        return;
    };
    match std::fs::metadata(path) {
        Ok(m) => {
            let mode = m.permissions().mode() & 0o777;
            let loose = mode & 0o006 != 0;
            checks.push(
                "docker socket",
                !loose,
                format!("{path} mode {mode:o} owner {}:{}", m.uid(), m.gid()),
                loose.then(|| format!("anyone on the host can control Docker: chmod 660 {path}")),
            );
        }
        Err(e) => checks.push(
            "docker socket",
            false,
            format!("{path}: {e}"),
            Some("start Docker (`systemctl start docker`) or set agent.docker_host".into()),
        ),
    }
}

/// The Docker API answers, at 1.41 or later; the engine for the container checks.
async fn docker(checks: &mut Checks, host: &str) -> Option<BollardEngine> {
    match BollardEngine::connect(host) {
        Ok(e) => match tokio::time::timeout(Duration::from_secs(5), e.negotiate()).await {
            Ok(Ok((e, v))) => {
                let num = |s: &str| -> (u32, u32) {
                    let mut it = s.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
                    (it.next().unwrap_or(0), it.next().unwrap_or(0))
                };
                let ok = num(&v) >= (1, 41);
                checks.push(
                    "docker",
                    ok,
                    format!("{host} answers, API {v}"),
                    (!ok).then(|| "DSO needs Docker Engine 20.10 (API 1.41) or later".to_string()),
                );
                Some(e)
            }
            Ok(Err(e)) => {
                checks.push(
                    "docker",
                    false,
                    format!("{host}: {e}"),
                    Some("is dockerd running, and may this user use its socket?".into()),
                );
                None
            }
            Err(_) => {
                checks.push(
                    "docker",
                    false,
                    format!("{host}: no answer in 5 s"),
                    Some("is dockerd hung? check `docker info`".into()),
                );
                None
            }
        },
        Err(e) => {
            checks.push(
                "docker",
                false,
                e.to_string(),
                Some(
                    "set agent.docker_host to unix:///var/run/docker.sock or tcp://HOST:PORT"
                        .into(),
                ),
            );
            None
        }
    }
}

/// Every provider: key file mode (a `file` provider), reachable and authenticated.
async fn providers(checks: &mut Checks, cfg: &Config) {
    for (name, p) in &cfg.providers {
        key_file(checks, name, p);
        probe(checks, name, p).await;
    }
}

/// A `file` provider's key file: 0600 (or not created yet).
fn key_file(checks: &mut Checks, name: &str, p: &ProviderConfig) {
    if let dso::config::ProviderSpec::File(f) = &p.spec {
        if let Some(k) = f.effective_key_file() {
            match std::fs::metadata(&k) {
                Ok(m) => {
                    let mode = m.permissions().mode() & 0o777;
                    checks.push(
                        &format!("provider {name} key file"),
                        mode & 0o077 == 0,
                        format!("{} mode {mode:o}", k.display()),
                        (mode & 0o077 != 0).then(|| format!("chmod 600 {}", k.display())),
                    );
                }
                Err(_) => checks.push(
                    &format!("provider {name} key file"),
                    true,
                    format!(
                        "{} does not exist yet; it is created (0600) on first use",
                        k.display()
                    ),
                    None,
                ),
            }
        }
    }
}

/// The backend builds, answers and accepts our credentials within the provider's timeout.
async fn probe(checks: &mut Checks, name: &str, p: &ProviderConfig) {
    let backend = dso::providers::factory(name, p)();
    let probe = match backend {
        Ok(b) => match tokio::time::timeout(p.timeout(), b.probe()).await {
            Ok(r) => r,
            Err(_) => Err(BackendError::Timeout(p.timeout())),
        },
        Err(e) => Err(e),
    };
    match probe {
        Ok(()) => checks.push(
            &format!("provider {name}"),
            true,
            "reachable and authenticated".into(),
            None,
        ),
        Err(e) => checks.push(
            &format!("provider {name}"),
            false,
            e.to_string(),
            Some(provider_fix(&e, p)),
        ),
    }
}

/// What to do about a failed provider probe.
fn provider_fix(e: &BackendError, p: &ProviderConfig) -> String {
    match e {
        BackendError::Denied(_) => p.kind().credentials_hint().to_string(),
        BackendError::Config(_) => "fix the provider's settings named above".to_string(),
        _ => "is the backend running and reachable from this host?".to_string(),
    }
}

/// Every running container that asks for secrets: its labels and its tmpfs.
async fn containers(checks: &mut Checks, engine: &BollardEngine, cfg: &Config) {
    let rules = cfg.rules();
    match engine.list_running().await {
        Ok(list) => {
            let mut asked = 0;
            for c in list {
                let Ok(info) = engine.inspect(&c.id).await else {
                    continue;
                };
                if !dso_actors::spec::wants_secrets(&info.name, &info.labels, &rules) {
                    continue;
                }
                asked += 1;
                match dso_actors::spec::build_spec(&info, &rules) {
                    Ok(Some(spec)) => {
                        let ok = dso_actors::spec::dir_on_tmpfs(&spec.dir, &info.tmpfs_mounts);
                        let detail = if ok {
                            format!("{} file(s) into {} (tmpfs)", spec.files.len(), spec.dir)
                        } else {
                            format!(
                                "{} is not on a tmpfs mount: its secrets are refused",
                                spec.dir
                            )
                        };
                        checks.push(
                            &format!("container {}", info.name),
                            ok,
                            detail,
                            (!ok).then(|| {
                                format!(
                                    "add `--tmpfs {}` (compose: `tmpfs: [{}]`)",
                                    spec.dir, spec.dir
                                )
                            }),
                        );
                    }
                    Ok(None) => {}
                    Err(errs) => checks.push(
                        &format!("container {}", info.name),
                        false,
                        errs.iter()
                            .map(|e| e.to_string())
                            .collect::<Vec<_>>()
                            .join("; "),
                        Some("fix the dso.* labels named above".into()),
                    ),
                }
            }
            if asked == 0 {
                checks.push(
                    "containers",
                    true,
                    "no running container asks for secrets".into(),
                    None,
                );
            }
        }
        Err(e) => checks.push("containers", false, e.to_string(), None),
    }
}

/// Prints the findings; [`ExitCode::Failure`] when one failed.
fn report(checks: &Checks, json: bool) -> ExitCode {
    let failed = checks.0.iter().filter(|c| !c.ok).count();
    if json {
        let v: Vec<_> = checks
            .0
            .iter()
            .map(|c| serde_json::json!({"check": c.name, "ok": c.ok, "detail": c.detail, "fix": c.fix}))
            .collect();
        println!("{}", serde_json::Value::Array(v));
    } else {
        let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        for c in &checks.0 {
            let mark = match (c.ok, color) {
                (true, true) => "\x1b[32mok\x1b[0m  ",
                (false, true) => "\x1b[31mFAIL\x1b[0m",
                (true, false) => "ok  ",
                (false, false) => "FAIL",
            };
            println!("{mark} {}: {}", c.name, c.detail);
            if let Some(f) = &c.fix {
                println!("     fix: {f}");
            }
        }
    }
    if failed == 0 {
        ExitCode::Ok
    } else {
        ExitCode::Failure
    }
}
