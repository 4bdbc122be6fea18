//! `dso compose [COMPOSE ARGS…]` (also `docker dso …` as a Docker CLI plugin): Compose with
//! `dsofile://` and `dso://` references in `environment`.
//!
//! 1. The real Compose normalises the project (`config`: files, `-p`, profiles, `.env`,
//!    interpolation, `extends` — its rules, not ours).
//! 2. [`model::rewrite`] turns `dsofile://` values into file paths + `dso.secret.*` labels + a tmpfs,
//!    and `dso://` values into `${DSO_REF_n}`; the model never holds a value.
//! 3. Only subcommands that create or start containers (`up`, `run`, `create`, `start`,
//!    `restart`) resolve references: every one is resolved before anything starts (through the
//!    agent, else the backends), `dso://` values go into the Compose process's environment, and
//!    services with files start through `dso-wait`, which waits for `.ready` and then `exec`s the
//!    image's own entrypoint and command (read through the Engine API).
//! 4. The real Compose runs with the model on stdin (`-f -`), `-p` and `--project-directory` set
//!    explicitly (cwd = the project directory), so `docker dso down` and `docker-compose down`
//!    address the same project.

pub mod args;
pub mod model;
pub mod plugin;

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use dso_actors::exit::ExitCode;
use serde_json::Value;

use crate::config::Config;
use crate::docker::BollardEngine;
use crate::envrun::{self, EnvRef, RunError};
use args::{ArgsError, Invocation};
use model::{ImageCommand, ModelError, Rewritten};

/// Where `dso-wait` is looked for after `DSO_WAIT_BIN` and the directory of the `dso` binary.
pub const WAIT_BIN_SYSTEM: &str = "/usr/local/lib/dso/dso-wait";

/// Why `dso compose` stopped before or instead of running Compose.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    /// Bad command line.
    #[error(transparent)]
    Args(#[from] ArgsError),
    /// Compose could not be started.
    #[error("cannot run `{program}`: {reason} (install docker-compose, or set DSO_COMPOSE to the Compose command, e.g. \"docker compose\")")]
    Spawn {
        /// The command.
        program: String,
        /// Why.
        reason: String,
    },
    /// Compose printed something `dso` could not read as a model.
    #[error("cannot read the model `{program} config` printed: {reason}")]
    Normalise {
        /// The command.
        program: String,
        /// Why.
        reason: String,
    },
    /// A reference or label in the model is wrong.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The DSO config could not be loaded.
    #[error("{0}")]
    Config(String),
    /// References that cannot be resolved (each line names service and variable).
    #[error("{}\nnot starting anything", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Unresolved(Vec<RunError>),
    /// The agent answered but could not resolve.
    #[error(transparent)]
    Agent(#[from] envrun::AgentResolveError),
    /// Docker (image inspection) failed.
    #[error("Docker: {0}")]
    Docker(String),
    /// The wait helper is missing or unusable.
    #[error("{0}")]
    Helper(String),
}

impl ComposeError {
    /// The process exit code (as `dso run`: 5 when every failure is "not found").
    pub fn exit_code(&self) -> u8 {
        match self {
            ComposeError::Args(_) => ExitCode::Usage.code(),
            ComposeError::Config(_) => ExitCode::Config.code(),
            ComposeError::Unresolved(e) if e.iter().all(RunError::is_not_found) => {
                ExitCode::NotFound.code()
            }
            _ => ExitCode::Failure.code(),
        }
    }
}

/// The Compose command: `DSO_COMPOSE` (split on spaces, e.g. `docker compose`), else
/// `docker-compose` when on `PATH`, else `docker compose`.
pub fn compose_command() -> Vec<String> {
    if let Ok(c) = std::env::var("DSO_COMPOSE") {
        let words: Vec<String> = c.split_whitespace().map(str::to_string).collect();
        if !words.is_empty() {
            return words;
        }
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("docker-compose").is_file()))
        .unwrap_or(false);
    if on_path {
        vec!["docker-compose".into()]
    } else {
        vec!["docker".into(), "compose".into()]
    }
}

fn command(compose: &[String]) -> Command {
    let mut c = Command::new(&compose[0]);
    c.args(&compose[1..]);
    c
}

fn spawn_error(compose: &[String], e: std::io::Error) -> ComposeError {
    ComposeError::Spawn {
        program: compose.join(" "),
        reason: e.to_string(),
    }
}

/// Runs `dso compose ARGS`; returns the exit code (Compose's own when it ran).
pub fn run(config: Option<&Path>, args: Vec<String>) -> Result<u8, ComposeError> {
    let compose = compose_command();
    let inv = Invocation::parse(&args)?;
    if inv.passthrough() {
        return wait_child(command(&compose).args(&args), &compose, None);
    }
    let cwd = std::env::current_dir().map_err(|e| ComposeError::Config(e.to_string()))?;
    let env = |k: &str| std::env::var(k).ok();
    let project_dir = inv.project_dir(&cwd, &env);
    let mut project = inv.project_name(&project_dir, &cwd, &env);

    // 1. Compose normalises.
    let mut norm = command(&compose);
    norm.args(&inv.global);
    for f in &inv.files {
        norm.arg("-f").arg(f);
    }
    if let Some(p) = &inv.project_name {
        norm.arg("-p").arg(p);
    }
    if let Some(d) = &inv.project_dir {
        norm.arg("--project-directory").arg(d);
    }
    let out = norm
        .arg("config")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| spawn_error(&compose, e))?;
    if !out.status.success() {
        return Ok(status_code(&out.status));
    }
    let model: Value =
        serde_yaml::from_slice(&out.stdout).map_err(|e| ComposeError::Normalise {
            program: compose.join(" "),
            reason: e.to_string(),
        })?;

    // 2. Rewrite (references read against the config's providers when the model has any).
    // A command that resolves nothing still runs with an unreadable config (e.g. `down`).
    let cfg = if has_references(&model) {
        match Config::load(config) {
            Ok((c, _)) => Some(c),
            Err(e) if inv.resolves() => return Err(ComposeError::Config(e.to_string())),
            Err(_) => None,
        }
    } else {
        None
    };
    let providers = cfg.as_ref().map(providers_of).unwrap_or_default();
    let mut rw = model::rewrite(model, &project, &providers)?;
    if let Some(n) = &rw.name {
        project = n.clone();
    }
    let sub = inv.subcommand.clone().unwrap_or_default();
    let print_config = sub == "config" && inv.rest.is_empty();

    // 3. Resolve (only for subcommands that start containers).
    let mut env_values: Vec<(String, OsString)> = Vec::new();
    if inv.resolves() {
        if let Some(cfg) = &cfg {
            env_values = resolve_all(cfg, &rw)?;
        }
        note_env_visibility(&rw);
    } else {
        env_values.extend(
            rw.envs
                .iter()
                .map(|e| (e.placeholder.clone(), OsString::new())),
        );
    }
    if inv.resolves() || print_config {
        wrap_services(
            &compose,
            &inv,
            &project,
            &project_dir,
            &mut rw,
            print_config,
        )?;
    }
    if print_config {
        let text = serde_yaml::to_string(&rw.model).map_err(|e| ComposeError::Normalise {
            program: compose.join(" "),
            reason: e.to_string(),
        })?;
        print!("{text}");
        return Ok(0);
    }

    // 4. The real Compose, model on stdin.
    let feed = Feed::for_subcommand(&sub).map_err(|e| spawn_error(&compose, e))?;
    let mut c = model_command(&compose, &inv, &project, &project_dir, &feed.file_arg());
    c.arg(&sub).args(&inv.rest);
    c.envs(env_values.iter().map(|(k, v)| (k, v)));
    let json = serde_json::to_vec(&rw.model).map_err(|e| ComposeError::Normalise {
        program: compose.join(" "),
        reason: e.to_string(),
    })?;
    let code = wait_child(&mut c, &compose, Some((json, feed)));
    drop(env_values);
    code
}

/// How the model reaches Compose: on its stdin (`-f -`), or — for `run` and `exec`, whose stdin
/// belongs to the terminal — on an inherited pipe (`-f /dev/fd/N`). Never through a file.
enum Feed {
    Stdin,
    Pipe {
        /// The read end, inheritable (not close-on-exec): Compose opens `/dev/fd/N`.
        read: std::os::fd::OwnedFd,
        /// The write end, close-on-exec.
        write: std::fs::File,
    },
}

impl Feed {
    /// The feed for `sub`.
    fn for_subcommand(sub: &str) -> Result<Self, std::io::Error> {
        if !matches!(sub, "run" | "exec") {
            return Ok(Feed::Stdin);
        }
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        rustix::io::fcntl_setfd(&read, rustix::io::FdFlags::empty())?;
        Ok(Feed::Pipe {
            read,
            write: std::fs::File::from(write),
        })
    }

    /// Compose's `-f` argument.
    fn file_arg(&self) -> String {
        match self {
            Feed::Stdin => "-".into(),
            Feed::Pipe { read, .. } => {
                format!("/dev/fd/{}", std::os::fd::AsRawFd::as_raw_fd(read))
            }
        }
    }
}

/// `compose [globals] -p NAME --project-directory DIR -f FILE`, run in DIR.
fn model_command(
    compose: &[String],
    inv: &Invocation,
    project: &str,
    dir: &Path,
    file: &str,
) -> Command {
    let mut c = command(compose);
    c.args(&inv.global)
        .arg("-p")
        .arg(project)
        .arg("--project-directory")
        .arg(dir)
        .arg("-f")
        .arg(file)
        .current_dir(dir);
    c
}

/// Spawns `c` (feeding it `model` when given), waits, returns its exit code. While Compose runs,
/// `dso` survives SIGINT/SIGQUIT (Compose gets them from the terminal and ends on its own).
fn wait_child(
    c: &mut Command,
    compose: &[String],
    model: Option<(Vec<u8>, Feed)>,
) -> Result<u8, ComposeError> {
    survive_interrupts();
    let spawn_err = |e| spawn_error(compose, e);
    let Some((bytes, feed)) = model else {
        let status = c.status().map_err(spawn_err)?;
        return Ok(status_code(&status));
    };
    let (mut child, writer) = match feed {
        Feed::Stdin => {
            let mut child = c.stdin(Stdio::piped()).spawn().map_err(spawn_err)?;
            let w = child
                .stdin
                .take()
                .map(|s| std::fs::File::from(std::os::fd::OwnedFd::from(s)));
            (child, w)
        }
        Feed::Pipe { read, write } => {
            let child = c.spawn().map_err(spawn_err)?;
            drop(read);
            (child, Some(write))
        }
    };
    if let Some(mut w) = writer {
        // Compose may exit early (bad option): a broken pipe is then not our error.
        let _ = w.write_all(&bytes);
    }
    let status = child.wait().map_err(spawn_err)?;
    Ok(status_code(&status))
}

/// Registers (no-op) handlers for SIGINT and SIGQUIT, so that Ctrl-C does not end `dso` before
/// the Compose it waits for. Handled signals are reset to the default by `exec`: Compose itself
/// still gets them.
fn survive_interrupts() {
    use tokio::signal::unix::{signal, SignalKind};
    if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        let _guard = rt.enter();
        for kind in [SignalKind::interrupt(), SignalKind::quit()] {
            let _ = signal(kind);
        }
    }
}

fn status_code(s: &std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => u8::try_from(c).unwrap_or(1),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(1),
        _ => 1,
    }
}

/// Resolves every reference (files too: an unresolvable file would keep its service waiting);
/// returns the Compose process's extra environment (`DSO_REF_n` = value).
fn resolve_all(cfg: &Config, rw: &Rewritten) -> Result<Vec<(String, OsString)>, ComposeError> {
    let label = |service: &str, var: &str| format!("service `{service}`, variable {var}");
    let mut refs: Vec<EnvRef> = rw
        .envs
        .iter()
        .map(|e| EnvRef {
            var: label(&e.service, &e.var),
            raw: format!("{}{}", model::ENV_SCHEME, e.source),
            source: e.source.clone(),
        })
        .collect();
    let n_env = refs.len();
    refs.extend(rw.files.iter().map(|f| EnvRef {
        var: label(&f.service, &f.var),
        raw: format!("{}{}", model::FILE_SCHEME, f.source),
        source: f.source.clone(),
    }));
    if refs.is_empty() {
        return Ok(Vec::new());
    }
    let socket = cfg.agent.admin_socket.clone();
    let mut resolved = envrun::resolve(cfg, &socket, false, &refs)?;
    let file_results = resolved.split_off(n_env);
    let mut errors: Vec<RunError> = file_results.into_iter().filter_map(Result::err).collect();
    let env = match envrun::resolved_env(&refs[..n_env], resolved) {
        Ok(values) => values
            .into_iter()
            .zip(&rw.envs)
            .map(|((_, v), e)| (e.placeholder.clone(), v))
            .collect(),
        Err(e) => {
            errors.splice(0..0, e);
            Vec::new()
        }
    };
    if errors.is_empty() {
        Ok(env)
    } else {
        Err(ComposeError::Unresolved(errors))
    }
}

/// True when any string in the model starts with a reference scheme.
fn has_references(v: &Value) -> bool {
    match v {
        Value::String(s) => s.starts_with(model::FILE_SCHEME) || s.starts_with(model::ENV_SCHEME),
        Value::Array(a) => a.iter().any(has_references),
        Value::Object(o) => o.values().any(has_references),
        _ => false,
    }
}

/// The providers of `cfg` and the one for references without a provider.
fn providers_of(cfg: &Config) -> model::Providers {
    model::Providers {
        names: cfg.providers.keys().cloned().collect(),
        default: cfg.default_provider(),
    }
}

/// Says once which `dso://` variables will be visible in `docker inspect`.
fn note_env_visibility(rw: &Rewritten) {
    if rw.envs.is_empty() {
        return;
    }
    let vars: Vec<String> = rw
        .envs
        .iter()
        .map(|e| format!("{} ({})", e.var, e.service))
        .collect();
    eprintln!(
        "dso: {} will be in the containers' environment: visible to `docker inspect`, and kept on \
         disk by Docker in the container's config.v2.json. Write dsofile:// instead to get a file \
         on a tmpfs.",
        vars.join(", ")
    );
}

/// The wait helper on this host: `DSO_WAIT_BIN`, else `dso-wait` next to the running binary, else
/// [`WAIT_BIN_SYSTEM`]; it must be a static executable (it runs in any image).
pub fn find_wait_helper() -> Result<PathBuf, ComposeError> {
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("DSO_WAIT_BIN") {
        candidates.push(PathBuf::from(p));
    } else {
        if let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf))
        {
            candidates.push(dir.join("dso-wait"));
        }
        candidates.push(PathBuf::from(WAIT_BIN_SYSTEM));
    }
    for c in &candidates {
        if let Ok(bytes) = std::fs::read(c) {
            return match plugin::elf_is_static(&bytes) {
                Some(true) => Ok(std::fs::canonicalize(c).unwrap_or_else(|_| c.clone())),
                Some(false) => Err(ComposeError::Helper(format!(
                    "{} is dynamically linked; the wait helper must be static to run in any image \
                     (build it with scripts/build-wait)",
                    c.display()
                ))),
                None => Err(ComposeError::Helper(format!(
                    "{} is not an x86-64/aarch64 ELF executable",
                    c.display()
                ))),
            };
        }
    }
    Err(ComposeError::Helper(format!(
        "dsofile:// needs the wait helper dso-wait; not found at {} (build it with \
         scripts/build-wait and install it there, or set DSO_WAIT_BIN)",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// Wraps every service that has `dsofile://` variables in the wait helper, reading the image's
/// entrypoint through the Engine API (pulling or building missing images first, unless
/// `config_only`, where a missing image leaves the service unwrapped with a note).
fn wrap_services(
    compose: &[String],
    inv: &Invocation,
    project: &str,
    project_dir: &Path,
    rw: &mut Rewritten,
    config_only: bool,
) -> Result<(), ComposeError> {
    if rw.waits.is_empty() {
        return Ok(());
    }
    let helper = if config_only {
        find_wait_helper().unwrap_or_else(|_| PathBuf::from(WAIT_BIN_SYSTEM))
    } else {
        find_wait_helper()?
    };
    let helper = helper.to_string_lossy().into_owned();
    // The engine the Docker CLI would talk to: DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH.
    let endpoint = crate::config::AgentConfig::default()
        .engine_endpoint()
        .map_err(ComposeError::Docker)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ComposeError::Docker(e.to_string()))?;
    let engine =
        BollardEngine::connect(&endpoint).map_err(|e| ComposeError::Docker(e.to_string()))?;
    let engine = rt
        .block_on(engine.negotiate())
        .map_err(|e| ComposeError::Docker(e.to_string()))?
        .0;
    let inspect = |image: &str| {
        rt.block_on(engine.image_command(image))
            .map_err(|e| ComposeError::Docker(format!("inspecting image {image}: {e}")))
    };
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for need in &rw.waits {
        match inspect(&need.image)? {
            Some(c) => found.push((need.clone(), c)),
            None => missing.push(need.clone()),
        }
    }
    if !missing.is_empty() && !config_only {
        // Pull or build what is missing, with the model Compose will get (no values needed).
        for (verb, build) in [("pull", false), ("build", true)] {
            let services: Vec<&str> = missing
                .iter()
                .filter(|m| m.build == build)
                .map(|m| m.service.as_str())
                .collect();
            if services.is_empty() {
                continue;
            }
            let json = serde_json::to_vec(&rw.model).map_err(|e| ComposeError::Normalise {
                program: compose.join(" "),
                reason: e.to_string(),
            })?;
            let mut c = model_command(compose, inv, project, project_dir, "-");
            c.arg(verb).args(&services);
            c.envs(rw.envs.iter().map(|e| (e.placeholder.clone(), "")));
            let code = wait_child(&mut c, compose, Some((json, Feed::Stdin)))?;
            if code != 0 {
                return Err(ComposeError::Docker(format!(
                    "`{} {verb} {}` failed (exit {code}); the image's entrypoint is needed to wait \
                     for the secret files",
                    compose.join(" "),
                    services.join(" ")
                )));
            }
        }
        for need in missing.drain(..) {
            match inspect(&need.image)? {
                Some(c) => found.push((need, c)),
                None => {
                    return Err(ComposeError::Docker(format!(
                        "service `{}`: image {} is still not on this host after pull/build",
                        need.service, need.image
                    )))
                }
            }
        }
    }
    for m in &missing {
        eprintln!(
            "dso: service `{}`: image {} is not on this host; its entrypoint is shown unwrapped",
            m.service, m.image
        );
    }
    for (need, (entrypoint, cmd)) in found {
        model::wrap_entrypoint(
            &mut rw.model,
            &need,
            &ImageCommand { entrypoint, cmd },
            &helper,
        )?;
    }
    Ok(())
}

/// The CLI's `dso compose ARGS…` (and `docker dso ARGS…`): runs, prints any error, returns the
/// exit code.
pub fn main(config: Option<&Path>, args: Vec<String>) -> u8 {
    match run(config, args) {
        Ok(code) => code,
        Err(e) => {
            for line in e.to_string().lines() {
                eprintln!("dso: {line}");
            }
            e.exit_code()
        }
    }
}

/// `Some(exit code)` when this process was started by Docker as the `docker-dso` CLI plugin.
pub fn main_if_plugin(config: Option<&Path>) -> Option<u8> {
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    match plugin::plugin_call(&argv)? {
        plugin::PluginCall::Metadata => {
            println!("{}", plugin::metadata());
            Some(0)
        }
        plugin::PluginCall::Compose(args) => Some(main(config, args)),
    }
}

/// The CLI's `dso install-plugin [--system] [--dir DIR]`.
pub fn install_plugin(system: bool, dir: Option<PathBuf>) -> ExitCode {
    let Some(dir) = dir.or_else(|| plugin::plugin_dir(system)) else {
        eprintln!("dso: {}", plugin::InstallError::NoDir);
        return ExitCode::Usage;
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("dso: cannot tell where the dso binary is: {e}");
            return ExitCode::Failure;
        }
    };
    match plugin::install(&dir, &exe) {
        Ok(link) => {
            println!("{} -> {}", link.display(), exe.display());
            if let Err(e) = find_wait_helper() {
                eprintln!("dso: note: {e}");
            }
            ExitCode::Ok
        }
        Err(e) => {
            eprintln!("dso: {e}");
            ExitCode::Failure
        }
    }
}
