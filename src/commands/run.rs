//! `dso run`: resolve the environment's `dso://` references ([`dso::envrun`]), then exec the
//! command in place of `dso`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use dso_actors::exit::ExitCode;

/// `dso run` when the command is not found (the shell's convention).
const COMMAND_NOT_FOUND: u8 = 127;
/// `dso run` when the command exists but cannot be executed (the shell's convention).
const CANNOT_EXECUTE: u8 = 126;

/// `dso run`: resolve the environment's references, then exec the command.
pub fn run(
    config: Option<&Path>,
    socket: Option<PathBuf>,
    no_agent: bool,
    command: Vec<OsString>,
) -> anyhow::Result<std::process::ExitCode> {
    use dso::envrun::{self, AgentResolveError};
    use std::os::unix::process::CommandExt;
    let (refs, mut errors) = envrun::find_refs(std::env::vars_os());
    let mut env = Vec::new();
    if errors.is_empty() && !refs.is_empty() {
        let cfg = match super::load_config(config) {
            Ok((c, _)) => c,
            Err(code) => return Ok(code.into()),
        };
        let socket = socket.unwrap_or_else(|| cfg.agent.admin_socket.clone());
        let via_agent = if no_agent {
            None
        } else {
            match envrun::resolve_via_agent(&socket, &refs) {
                Ok(r) => Some(r),
                Err(AgentResolveError::NoAgent(_) | AgentResolveError::Unsupported(_)) => None,
                Err(e) => {
                    eprintln!("dso: {e}");
                    return Ok(ExitCode::Failure.into());
                }
            }
        };
        let resolved = match via_agent {
            Some(r) => r,
            None => {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(envrun::resolve_direct(&cfg, &refs))
            }
        };
        match envrun::resolved_env(&refs, resolved) {
            Ok(e) => env = e,
            Err(e) => errors = e,
        }
    }
    if !errors.is_empty() {
        for e in &errors {
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
        return Ok(code.into());
    }
    let Some((program, args)) = command.split_first() else {
        eprintln!("dso: no command given: dso run -- COMMAND [ARGS…]");
        return Ok(ExitCode::Usage.into());
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args(args).envs(env.iter().map(|(k, v)| (k, v)));
    // Only returns on failure.
    let err = cmd.exec();
    drop(env);
    eprintln!("dso: cannot run {}: {err}", program.to_string_lossy());
    Ok(match err.kind() {
        std::io::ErrorKind::NotFound => COMMAND_NOT_FOUND,
        _ => CANNOT_EXECUTE,
    }
    .into())
}
