//! `dso run`: resolve the environment's (and `--env-file`'s) `dso://` references
//! ([`dso::envrun`]), then exec the command in place of `dso` — or, with `--watch`, supervise it
//! ([`dso::runwatch`]): restart it (or signal it) when a referenced value changes.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use dso::config::Config;
use dso::envrun::{self, AgentResolveError, EnvRef, RunError};
use dso::runwatch::{self, OnChange};
use dso_actors::exit::ExitCode;

/// `dso run` when the command is not found (the shell's convention).
const COMMAND_NOT_FOUND: u8 = 127;
/// `dso run` when the command exists but cannot be executed (the shell's convention).
const CANNOT_EXECUTE: u8 = 126;
/// Largest `--env-file` read.
const MAX_ENV_FILE: u64 = 1024 * 1024;

/// The options of `dso run`.
pub struct RunArgs {
    /// `--socket`.
    pub socket: Option<PathBuf>,
    /// `--no-agent`.
    pub no_agent: bool,
    /// `--env-file` (each read in order; the environment wins over a file).
    pub env_files: Vec<PathBuf>,
    /// `--watch`.
    pub watch: bool,
    /// `--on-change`.
    pub on_change: Option<String>,
    /// The command and its arguments.
    pub command: Vec<OsString>,
}

/// Where values come from: the agent (and then under which watch id) or the backends.
struct Resolver<'a> {
    cfg: Option<Config>,
    socket: Option<PathBuf>,
    no_agent: bool,
    refs: &'a [EnvRef],
    /// Set once the agent answered: later resolutions ask it again.
    via_agent: bool,
    /// The watch id given to the agent (`--watch`).
    watch: Option<String>,
}

impl Resolver<'_> {
    /// Every reference resolved (agent first unless `--no-agent`), or the errors.
    async fn resolve(
        &mut self,
        watch: Option<&str>,
    ) -> Result<Result<Vec<(String, OsString)>, Vec<RunError>>, String> {
        let (Some(cfg), Some(socket)) = (&self.cfg, &self.socket) else {
            return Ok(Ok(Vec::new()));
        };
        let via_agent = if self.no_agent {
            None
        } else {
            match envrun::resolve_via_agent_watching(socket, self.refs, watch) {
                Ok(r) => Some(r),
                Err(AgentResolveError::NoAgent(_) | AgentResolveError::Unsupported(_)) => None,
                Err(e) => return Err(e.to_string()),
            }
        };
        self.via_agent = via_agent.is_some();
        let resolved = match via_agent {
            Some(r) => r,
            None => envrun::resolve_direct(cfg, self.refs).await,
        };
        Ok(envrun::resolved_env(self.refs, resolved))
    }
}

impl runwatch::Recheck for Resolver<'_> {
    fn recheck(&mut self) -> runwatch::RecheckFuture<'_> {
        Box::pin(async move {
            let watch = self.watch.clone();
            match self.resolve(watch.as_deref()).await {
                Ok(Ok(env)) => Some(env),
                Ok(Err(errors)) => {
                    for e in errors {
                        eprintln!("dso: --watch: {e}; the command keeps its values");
                    }
                    None
                }
                Err(e) => {
                    eprintln!("dso: --watch: {e}; the command keeps its values");
                    None
                }
            }
        })
    }
}

/// The variables of the `--env-file`s not already in the environment; errors name the file and
/// the line, never a value.
fn env_files(files: &[PathBuf]) -> Result<Vec<(OsString, OsString)>, String> {
    let mut out: Vec<(OsString, OsString)> = Vec::new();
    for f in files {
        let shown = f.display();
        let meta = std::fs::metadata(f).map_err(|e| format!("--env-file {shown}: {e}"))?;
        if meta.len() > MAX_ENV_FILE {
            return Err(format!(
                "--env-file {shown}: larger than {MAX_ENV_FILE} bytes"
            ));
        }
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(f).map_err(|e| format!("--env-file {shown}: {e}"))?,
        );
        let vars = dso::dotenv::parse(&text).map_err(|e| format!("--env-file {shown}: {e}"))?;
        for (k, v) in vars {
            let k = OsString::from(k);
            if std::env::var_os(&k).is_none() && !out.iter().any(|(o, _)| *o == k) {
                out.push((k, OsString::from(v.as_str())));
            }
        }
    }
    Ok(out)
}

/// Prints the errors and the exit code for them.
fn refuse(errors: &[RunError], command: &[OsString]) -> std::process::ExitCode {
    for e in errors {
        eprintln!("dso: {e}");
    }
    eprintln!(
        "dso: not starting {:?}",
        command
            .first()
            .map(|c| c.to_string_lossy())
            .unwrap_or_default()
    );
    let code = if errors.iter().all(|e| e.is_not_found()) {
        ExitCode::NotFound
    } else {
        ExitCode::Failure
    };
    code.into()
}

/// `dso run`: resolve the references, then exec the command (or supervise it with `--watch`).
pub fn run(config: Option<&Path>, args: RunArgs) -> anyhow::Result<std::process::ExitCode> {
    use std::os::unix::process::CommandExt;
    let on_change = match (&args.on_change, args.watch) {
        (Some(_), false) => {
            eprintln!("dso: --on-change needs --watch");
            return Ok(ExitCode::Usage.into());
        }
        (Some(s), true) => match OnChange::parse(s) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("dso: --on-change: {e}");
                return Ok(ExitCode::Usage.into());
            }
        },
        (None, _) => OnChange::Restart,
    };
    let file_vars = match env_files(&args.env_files) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("dso: {e}");
            return Ok(ExitCode::Config.into());
        }
    };
    let (refs, errors) = envrun::find_refs(std::env::vars_os().chain(file_vars.iter().cloned()));
    if !errors.is_empty() {
        return Ok(refuse(&errors, &args.command));
    }
    let Some((program, rest)) = args.command.split_first() else {
        eprintln!("dso: no command given: dso run -- COMMAND [ARGS…]");
        return Ok(ExitCode::Usage.into());
    };
    let mut resolver = Resolver {
        cfg: None,
        socket: None,
        no_agent: args.no_agent,
        refs: &refs,
        via_agent: false,
        watch: None,
    };
    if !refs.is_empty() {
        let cfg = match super::load_config(config) {
            Ok((c, _)) => c,
            Err(code) => return Ok(code.into()),
        };
        resolver.socket = Some(
            args.socket
                .clone()
                .unwrap_or_else(|| cfg.agent.admin_socket.clone()),
        );
        resolver.cfg = Some(cfg);
    }
    let watch_id = format!("pid-{}", std::process::id());
    resolver.watch = (args.watch && !refs.is_empty()).then(|| watch_id.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let watch = resolver.watch.clone();
    let env = match rt.block_on(resolver.resolve(watch.as_deref())) {
        Ok(Ok(env)) => env,
        Ok(Err(errors)) => return Ok(refuse(&errors, &args.command)),
        Err(e) => {
            eprintln!("dso: {e}");
            return Ok(ExitCode::Failure.into());
        }
    };
    // The file's plain values, then the resolved references (which replace the file's `dso://`).
    let mut full: Vec<(OsString, OsString)> = file_vars
        .into_iter()
        .filter(|(k, _)| !refs.iter().any(|r| OsString::from(&r.var) == *k))
        .collect();
    full.extend(env.into_iter().map(|(k, v)| (OsString::from(k), v)));
    if !args.watch {
        let mut cmd = std::process::Command::new(program);
        cmd.args(rest).envs(full.iter().map(|(k, v)| (k, v)));
        // Only returns on failure.
        let err = cmd.exec();
        drop(full);
        eprintln!("dso: cannot run {}: {err}", program.to_string_lossy());
        return Ok(match err.kind() {
            std::io::ErrorKind::NotFound => COMMAND_NOT_FOUND,
            _ => CANNOT_EXECUTE,
        }
        .into());
    }
    let interval = resolver.cfg.as_ref().and_then(|cfg| {
        refs.iter()
            .filter_map(|r| cfg.providers.get(&r.source.provider)?.refresh_interval())
            .min()
    });
    let socket = resolver.socket.clone();
    let initial: Vec<(String, OsString)> = full
        .iter()
        .filter(|(k, _)| refs.iter().any(|r| OsString::from(&r.var) == *k))
        .map(|(k, v)| (k.to_string_lossy().into_owned(), v.clone()))
        .collect();
    let code = rt.block_on(runwatch::supervise(
        program,
        rest,
        full,
        runwatch::Watch {
            interval,
            on_change,
        },
        &initial,
        &mut resolver,
    ));
    if resolver.via_agent {
        if let Some(s) = &socket {
            envrun::unwatch(s, &watch_id);
        }
    }
    Ok(match code {
        Ok(code) => code.into(),
        Err(e) => {
            eprintln!("dso: {e}");
            match e.kind() {
                std::io::ErrorKind::NotFound => COMMAND_NOT_FOUND,
                _ => CANNOT_EXECUTE,
            }
            .into()
        }
    })
}
