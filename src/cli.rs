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
        /// Address for /metrics, /healthz, /readyz instead of agent.listen (a second agent on
        /// the host, a hot standby, sharing the config file needs its own).
        #[arg(long, env = "DSO_LISTEN")]
        listen: Option<std::net::SocketAddr>,
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
    /// Example: dso run --env-file app.env --watch -- ./server
    Run {
        /// Admin socket (default: agent.admin_socket from the config).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Never ask the agent; read the backends directly.
        #[arg(long)]
        no_agent: bool,
        /// Read variables from a dotenv file (`KEY=VALUE`, `dso://` references allowed); never
        /// written back. Repeatable; the environment wins over a file.
        #[arg(long, value_name = "FILE")]
        env_file: Vec<PathBuf>,
        /// Keep supervising the command: signals forwarded, exit code passed through, and when a
        /// referenced value changes (re-checked every provider `refresh_interval`, through the
        /// agent when it runs) the command is restarted with the new values.
        #[arg(long)]
        watch: bool,
        /// With --watch: `restart` (default) or `signal:SIGHUP` (send a signal instead).
        #[arg(long, value_name = "REACTION")]
        on_change: Option<String>,
        /// The command and its arguments (after `--`).
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "COMMAND"
        )]
        command: Vec<std::ffi::OsString>,
    },
    /// Docker Compose with `dsofile://` and `dso://` references in `environment` (also `docker dso`).
    ///
    /// Compose normalises the project (`config`); DSO rewrites the model (files on a tmpfs,
    /// written before the entrypoint starts; `dso://` values through Compose's environment) and
    /// runs the real Compose with it on stdin. Only up/run/create/start/restart resolve references.
    ///
    /// Example: dso compose up -d
    #[command(disable_help_flag = true)]
    Compose {
        /// Compose's own arguments.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "COMPOSE ARGS"
        )]
        args: Vec<String>,
    },
    /// Install the Docker CLI plugin (`docker dso …`): a link `docker-dso` to this binary in
    /// ~/.docker/cli-plugins (or /usr/local/lib/docker/cli-plugins with --system).
    ///
    /// Example: dso install-plugin && docker dso up -d
    InstallPlugin {
        /// For every user: /usr/local/lib/docker/cli-plugins.
        #[arg(long)]
        system: bool,
        /// Another plugin directory.
        #[arg(long, conflicts_with = "system")]
        dir: Option<PathBuf>,
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
        #[arg(long, env = "DSO_LISTEN")]
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
