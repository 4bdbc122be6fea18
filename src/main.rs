//! The `dso` binary: parses the command line ([`cli`]) and dispatches to [`commands`]. `anyhow`
//! lives in the binary (here and `commands/`) and nowhere else.

use clap::Parser;
use dso_actors::exit::ExitCode;

mod cli;
mod commands;
mod hardening;

use cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dso: {e:#}");
            ExitCode::Failure.into()
        }
    }
}

/// Runs one command. `agent` and `run` can end with numbers of their own (the actor system's
/// code, a command that cannot be executed); every other command ends with an [`ExitCode`].
fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let config = cli.config.as_deref();
    let code = match cli.command {
        Command::Agent { log_format } => return commands::agent::agent(config, log_format),
        Command::Run {
            socket,
            no_agent,
            command,
        } => return commands::run::run(config, socket, no_agent, command),
        Command::Check { json } => commands::check::check(config, json),
        Command::Secret { provider, action } => {
            commands::secret::secret(config, provider.as_deref(), action)?
        }
        Command::Status { json, socket } => commands::status::status(config, socket, json)?,
        Command::Reconcile { socket } => commands::admin::reconcile(config, socket)?,
        Command::Rotate { reference, socket } => {
            commands::admin::rotate(config, socket, &reference)?
        }
        Command::Inject { container, socket } => {
            commands::admin::inject(config, socket, &container)?
        }
        Command::Doctor { json } => commands::doctor::doctor(config, json)?,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "dso", &mut std::io::stdout());
            ExitCode::Ok
        }
        Command::Health { addr } => commands::health::health(config, addr)?,
    };
    Ok(code.into())
}
