//! The command line: clap's types, nothing else. `main.rs` parses them and dispatches to
//! `commands/`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

// No doc comments on the clap types themselves: clap would print them in `--help`.
#[derive(Parser)]
#[command(
    name = "dso",
    version,
    about = "Secret injection for Docker hosts: secrets as files in each container's tmpfs"
)]
pub struct Cli {
    /// Config file (TOML). Default: /etc/dso/dso.toml if it exists, else the embedded default
    /// (one local encrypted vault named `local`).
    #[arg(long, global = true, env = "DSO_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the agent: watch Docker, inject secrets into containers that ask for them.
    ///
    /// Example: dso agent --config /etc/dso/dso.toml --log-format json
    Agent {
        /// Log format.
        #[arg(long, value_enum, default_value = "human")]
        log_format: LogFormat,
    },
    /// Validate the config and print every problem with its path; exit 0 when valid, 4 when not.
    ///
    /// Example: dso check --config dso.toml
    Check {
        /// Machine-readable output: {"valid", "source", "providers": {name: type}, "problems": [...]}.
        #[arg(long)]
        json: bool,
    },
    /// Manage secrets in the local encrypted vault (a `file` provider).
    ///
    /// Example: printf 's3cret' | dso secret set app/db#password
    Secret {
        /// Which `file` provider (default: the first one in the config).
        #[arg(long)]
        provider: Option<String>,
        #[command(subcommand)]
        action: SecretAction,
    },
    /// Show what the running agent delivered to which container (never values).
    ///
    /// Example: dso status --json
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Admin socket (default: agent.admin_socket from the config).
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Ask the running agent for a reconciliation pass now.
    ///
    /// Example: dso reconcile
    Reconcile {
        /// Admin socket (default: agent.admin_socket from the config).
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Ask the running agent to check one secret now (e.g. from a backend webhook); a change rotates it.
    ///
    /// Example: dso rotate vault/app/db
    Rotate {
        /// `<provider>/<path>`
        reference: String,
        /// Admin socket (default: agent.admin_socket from the config).
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Ask the running agent to inject one container now.
    ///
    /// Example: dso inject web-1
    Inject {
        /// Container id or name.
        container: String,
        /// Admin socket (default: agent.admin_socket from the config).
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Check the host: Docker, its socket, the config, every provider, key files, and the tmpfs of
    /// every running container that asks for secrets. One line per check, with a fix.
    ///
    /// Example: dso doctor --json
    Doctor {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Run a command with every `dso://<provider>/<path>[#<key>]` environment value resolved.
    ///
    /// Resolves through the running agent's admin socket when one answers, else against the
    /// backends of the config directly. Every reference is resolved before the command starts; an
    /// unresolvable one fails naming the variable (exit 5 when not found, 1 otherwise). The command
    /// is executed directly (no shell, no temp file); its exit code is dso's. File injection stays
    /// the recommended way: environment values show in `docker inspect` and never rotate.
    ///
    /// Example: DB_PASSWORD=dso://vault/app/db#password dso run -- docker compose up -d
    Run {
        /// Admin socket (default: agent.admin_socket from the config).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Never ask the agent; read the backends directly.
        #[arg(long)]
        no_agent: bool,
        /// The command and its arguments (after `--`).
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "COMMAND"
        )]
        command: Vec<std::ffi::OsString>,
    },
    /// Print a shell completion script.
    ///
    /// Example: dso completions bash > /etc/bash_completion.d/dso
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Exit 0 if the agent's /healthz answers (for Docker HEALTHCHECK).
    ///
    /// Example: dso health --addr 127.0.0.1:9464
    Health {
        /// Address of the agent's admin listener (default: agent.listen from the config).
        #[arg(long)]
        addr: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum SecretAction {
    /// Store a value read from stdin (or typed at a prompt without echo). Never from argv.
    ///
    /// Example: printf 's3cret' | dso secret set app/db#password
    Set {
        /// `<path>[#<key>]`
        reference: String,
    },
    /// Print a value to stdout.
    ///
    /// Example: dso secret get app/db#password
    Get {
        /// `<path>[#<key>]`
        reference: String,
    },
    /// List paths and key names (never values).
    ///
    /// Example: dso secret list --json
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Move a `.env` file into the vault: each KEY=VALUE becomes key KEY of one path.
    ///
    /// Example: dso secret import .env --path app/env && shred -u .env
    Import {
        /// The `.env` file (KEY=VALUE lines; `export`, quotes and `#` comments understood).
        file: PathBuf,
        /// Vault path to store the keys under (default: `env`).
        #[arg(long, default_value = "env")]
        path: String,
    },
    /// Remove a path or one key.
    ///
    /// Example: dso secret rm app/db#password
    Rm {
        /// `<path>[#<key>]`
        reference: String,
    },
}
