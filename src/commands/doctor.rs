//! `dso doctor`: one line per check, with a fix. One function per group of checks: memory
//! lock, config, Docker socket, Docker API, providers, containers.

use std::io::IsTerminal;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use dso::config::{Config, ProviderConfig, WriteMode};
use dso::docker::BollardEngine;
use dso::endpoint::Endpoint;
use dso_actors::backend::BackendError;
use dso_actors::engine::ContainerEngine;
use dso_actors::exit::ExitCode;

use crate::hardening::memory_lock_possible;

/// One `dso doctor` finding.
struct Check {
    name: String,
    ok: bool,
    /// Worth fixing, but nothing is refused (printed `WARN`; does not fail `dso doctor`).
    warning: bool,
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
            warning: false,
            detail,
            fix,
        })
    }

    fn warn(&mut self, name: &str, detail: String, fix: String) {
        self.0.push(Check {
            name: name.to_string(),
            ok: true,
            warning: true,
            detail,
            fix: Some(fix),
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
    access(&mut checks, &cfg);
    let endpoint = match cfg.agent.engine_endpoint() {
        Ok(e) => e,
        Err(e) => {
            checks.push(
                "docker",
                false,
                e,
                Some("fix agent.docker_host and the TLS settings".into()),
            );
            return Ok(report(&checks, json));
        }
    };
    docker_socket(&mut checks, &endpoint);
    write_path(&mut checks, &cfg, &endpoint);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let engine = docker(&mut checks, &endpoint).await;
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

/// Informational: whether `[[access]]` rules restrict who reads what.
fn access(checks: &mut Checks, cfg: &Config) {
    let rules = cfg.access_rules();
    if rules.is_open() {
        checks.push(
            "access",
            true,
            "no [[access]] rules: every managed container and every admin-socket caller may read every reference the agent's credentials reach".into(),
            Some("add [[access]] rules per Compose project, service, label, image or caller uid/gid (README: Access rules)".into()),
        );
        return;
    }
    let callers = rules
        .rules()
        .iter()
        .filter(|r| matches!(r.subject, dso_actors::access::Subject::Callers { .. }))
        .count();
    checks.push(
        "access",
        true,
        format!(
            "{} [[access]] rule(s): {} for containers, {callers} for admin-socket callers; anything else is refused",
            rules.rules().len(),
            rules.rules().len() - callers
        ),
        None,
    );
}

/// Which write path the agent will use: one rule, from the endpoint and `agent.write_mode`.
fn write_path(checks: &mut Checks, cfg: &Config, endpoint: &Endpoint) {
    let detail = match (endpoint.is_local(), cfg.agent.write_mode) {
        (false, _) => "tcp:// engine: every write uses one exec (the direct path needs the engine's containers on this host)",
        (true, WriteMode::Exec) => "agent.write_mode = \"exec\": every write uses one exec",
        (true, WriteMode::Auto) => "direct through /proc/<pid>/root where the host allows it, else one exec",
    };
    checks.push("write path", true, detail.into(), None);
}

/// The Docker socket's mode (a `unix://` host only).
fn docker_socket(checks: &mut Checks, endpoint: &Endpoint) {
    let Endpoint::Unix(path) = endpoint else {
        return;
    };
    let path = path.display();
    match std::fs::metadata(path.to_string()) {
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
async fn docker(checks: &mut Checks, endpoint: &Endpoint) -> Option<BollardEngine> {
    let host = endpoint.describe();
    match BollardEngine::connect(endpoint) {
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
                let text = e.to_string();
                let fix = if text.contains("TLS: ") {
                    "check agent.tls_ca, tls_cert, tls_key (or DOCKER_CERT_PATH): tls_ca must have \
                     signed the engine's certificate, the engine's --tlscacert the client's"
                } else {
                    "is the engine running, and may this user use its socket?"
                };
                checks.push("docker", false, format!("{host}: {text}"), Some(fix.into()));
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
                    "set agent.docker_host to unix:///var/run/docker.sock or tcp://HOST:PORT, and \
                     the TLS files to readable PEM files"
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
        sources(checks, name, p);
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

/// Where the settings that may come from the environment (`VAULT_ADDR`, …) came from.
fn sources(checks: &mut Checks, name: &str, p: &ProviderConfig) {
    let sources = p.spec.sources();
    if sources.is_empty() {
        return;
    }
    let detail = sources
        .iter()
        .map(|(field, value, origin)| match origin {
            dso::providers::vault::Origin::Unset => format!("{field} {origin}"),
            _ => format!("{field} {value:?} {origin}"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    checks.push(&format!("provider {name} settings"), true, detail, None);
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
    let access = cfg.access_rules();
    match engine.list_running().await {
        Ok(list) => {
            let mut asked = 0;
            for c in list {
                let Ok(info) = engine.inspect(&c.id).await else {
                    continue;
                };
                hints(checks, &info, cfg);
                if !dso_actors::spec::wants_secrets(&info.name, &info.labels, &rules) {
                    continue;
                }
                asked += 1;
                match dso_actors::spec::build_spec(&info, &rules) {
                    Ok(Some(spec)) => {
                        if let Err(denied) =
                            access.check_container(&info, spec.files.iter().map(|f| &f.source))
                        {
                            checks.push(
                                &format!("container {}", info.name),
                                false,
                                format!("refused: {denied}"),
                                Some(
                                    "add an [[access]] rule for it, or remove the reference".into(),
                                ),
                            );
                            continue;
                        }
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

/// A running container (in scope) with literal `dso://`/`dsofile://` values in its environment
/// (started without `docker dso`), or unknown `dso.*` labels: warnings, by name only.
fn hints(checks: &mut Checks, info: &dso_actors::model::ContainerInfo, cfg: &Config) {
    use dso_actors::hints::{safe, unknown_labels};
    use dso_actors::spec::Target;
    let scope = cfg.agent.scope_target();
    let ignore: Vec<&str> = match &scope {
        Some(t) if !t.matches(&info.name, &info.labels) => return,
        Some(Target::Label(key, _)) => vec![key.as_str()],
        _ => vec![],
    };
    let name = format!("container {}", safe(&info.name));
    if !info.literal_refs.is_empty() {
        let vars: Vec<String> = info.literal_refs.iter().map(|v| safe(v)).collect();
        checks.warn(
            &name,
            format!(
                "environment variable(s) {} hold a literal dso:// or dsofile:// reference: the \
                 application sees the reference, not the secret (started without DSO)",
                vars.join(", ")
            ),
            "start it with `docker dso up` (or `dso compose up`) instead of `docker compose up`"
                .into(),
        );
    }
    for u in unknown_labels(&info.labels, &ignore) {
        checks.warn(
            &name,
            format!("label {} is not a DSO label and is ignored", safe(&u.label)),
            format!("did you mean {}?", u.hint),
        );
    }
}

/// Prints the findings; [`ExitCode::Failure`] when one failed.
fn report(checks: &Checks, json: bool) -> ExitCode {
    let failed = checks.0.iter().filter(|c| !c.ok).count();
    if json {
        let v: Vec<_> = checks
            .0
            .iter()
            .map(|c| serde_json::json!({"check": c.name, "ok": c.ok, "warning": c.warning, "detail": c.detail, "fix": c.fix}))
            .collect();
        println!("{}", serde_json::Value::Array(v));
    } else {
        let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        for c in &checks.0 {
            let mark = match (c.ok, c.warning, color) {
                (true, false, true) => "\x1b[32mok\x1b[0m  ",
                (true, true, true) => "\x1b[33mWARN\x1b[0m",
                (false, _, true) => "\x1b[31mFAIL\x1b[0m",
                (true, false, false) => "ok  ",
                (true, true, false) => "WARN",
                (false, _, false) => "FAIL",
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
