//! The `dso` binary: CLI edge. `anyhow` lives here and nowhere else.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use dso::config::{Config, ProviderConfig};
use dso::docker::BollardEngine;
use dso::http::{serve, AdminState};
use dso::providers::file::FileVault;
use dso_actors::backend::BackendError;
use dso_actors::engine::ContainerEngine;
use dso_actors::messages::Shutdown;
use dso_actors::metrics::Metrics;
use dso_actors::secret::SecretValue;
use dso_actors::supervisor::{AgentSettings, ProviderSpec, Supervisor};
use zeroize::Zeroizing;

/// Exit codes (also in README): the numbers of [`dso_actors::exit::ExitCode`].
mod exit {
    use dso_actors::exit::ExitCode;
    pub const OK: u8 = ExitCode::Ok.code();
    pub const FAILURE: u8 = ExitCode::Failure.code();
    pub const USAGE: u8 = ExitCode::Usage.code();
    pub const CONFIG: u8 = ExitCode::Config.code();
    pub const NOT_FOUND: u8 = ExitCode::NotFound.code();
}

#[derive(Parser)]
#[command(
    name = "dso",
    version,
    about = "Secret injection for Docker hosts: secrets as files in each container's tmpfs"
)]
struct Cli {
    /// Config file (TOML). Default: /etc/dso/dso.toml if it exists, else the embedded default
    /// (one local encrypted vault named `local`).
    #[arg(long, global = true, env = "DSO_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
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
enum SecretAction {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("dso: {e:#}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

fn load_config(path: Option<&std::path::Path>) -> Result<(Config, String), u8> {
    Config::load(path).map_err(|e| {
        eprintln!("dso: {e}");
        exit::CONFIG
    })
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Check { json: true } => {
            let out = match Config::load(cli.config.as_deref()) {
                Ok((cfg, name)) => serde_json::json!({
                    "valid": true,
                    "source": name,
                    "providers": cfg.providers.iter().map(|(n, p)| (n.clone(), p.type_name())).collect::<std::collections::BTreeMap<_, _>>(),
                    "problems": [],
                }),
                Err(e) => serde_json::json!({
                    "valid": false,
                    "source": e.source_name,
                    "problems": e.problems,
                }),
            };
            println!("{out}");
            Ok(if out["valid"] == true {
                exit::OK
            } else {
                exit::CONFIG
            })
        }
        Command::Check { json: false } => match Config::load(cli.config.as_deref()) {
            Ok((cfg, name)) => {
                println!(
                    "{name}: valid ({} provider{}: {})",
                    cfg.providers.len(),
                    if cfg.providers.len() == 1 { "" } else { "s" },
                    cfg.providers.keys().cloned().collect::<Vec<_>>().join(", ")
                );
                Ok(exit::OK)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(exit::CONFIG)
            }
        },
        Command::Agent { log_format } => {
            let (cfg, name) = match load_config(cli.config.as_deref()) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            init_logging(log_format);
            run_agent(cfg, name, cli.config.clone())
        }
        Command::Secret { provider, action } => {
            let (cfg, _) = match load_config(cli.config.as_deref()) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            secret_cmd(&cfg, provider.as_deref(), action)
        }
        Command::Status { json, socket } => {
            let socket = match admin_socket(cli.config.as_deref(), socket) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            let (code, body) = dso::admin::request(&socket, "GET", "/v1/status", None)?;
            if code != 200 {
                eprintln!("dso: agent answered {code}: {}", body.trim());
                return Ok(exit::FAILURE);
            }
            if json {
                print!("{body}");
            } else {
                print_status(&body)?;
            }
            Ok(exit::OK)
        }
        Command::Run {
            socket,
            no_agent,
            command,
        } => run_command(cli.config.as_deref(), socket, no_agent, command),
        Command::Reconcile { socket } => {
            admin_post(cli.config.as_deref(), socket, "/v1/reconcile", None)
        }
        Command::Rotate { reference, socket } => {
            let body = serde_json::json!({ "ref": reference }).to_string();
            admin_post(cli.config.as_deref(), socket, "/v1/rotate", Some(&body))
        }
        Command::Inject { container, socket } => {
            let path = format!("/v1/containers/{container}/inject");
            admin_post(cli.config.as_deref(), socket, &path, None)
        }
        Command::Doctor { json } => doctor(cli.config.as_deref(), json),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "dso", &mut std::io::stdout());
            Ok(exit::OK)
        }
        Command::Health { addr } => {
            let addr = match addr {
                Some(a) => a,
                None => match load_config(cli.config.as_deref()) {
                    Ok((c, _)) => c.agent.listen.to_string(),
                    Err(code) => return Ok(code),
                },
            };
            health(&addr)
        }
    }
}

fn admin_socket(config: Option<&std::path::Path>, given: Option<PathBuf>) -> Result<PathBuf, u8> {
    match given {
        Some(s) => Ok(s),
        None => load_config(config).map(|(c, _)| c.agent.admin_socket),
    }
}

fn admin_post(
    config: Option<&std::path::Path>,
    socket: Option<PathBuf>,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<u8> {
    let socket = match admin_socket(config, socket) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let (code, body) = dso::admin::request(&socket, "POST", path, body)?;
    if (200..300).contains(&code) {
        print!("{body}");
        Ok(exit::OK)
    } else {
        eprintln!("dso: agent answered {code}: {}", body.trim());
        Ok(if code == 404 {
            exit::NOT_FOUND
        } else {
            exit::FAILURE
        })
    }
}

fn print_status(body: &str) -> anyhow::Result<()> {
    let s: serde_json::Value = serde_json::from_str(body).context("status is not JSON")?;
    let yes = |b: &serde_json::Value| {
        if b.as_bool() == Some(true) {
            "up"
        } else {
            "DOWN"
        }
    };
    println!("docker: {}", yes(&s["docker"]));
    for p in s["providers"].as_array().into_iter().flatten() {
        println!(
            "provider {}: {}",
            p["name"].as_str().unwrap_or("?"),
            yes(&p["up"])
        );
    }
    println!(
        "queue depth: {}   cache entries: {}",
        s["queue_depth"], s["cache_entries"]
    );
    let containers = s["containers"].as_array().cloned().unwrap_or_default();
    if containers.is_empty() {
        println!("no containers ask for secrets");
    }
    for c in containers {
        let id = c["id"].as_str().unwrap_or("");
        println!(
            "\n{} ({})  {}  digest {}",
            c["name"].as_str().unwrap_or("?"),
            &id[..id.len().min(12)],
            c["result"].as_str().unwrap_or("?"),
            c["digest"].as_str().unwrap_or("-"),
        );
        if let Some(m) = c["message"].as_str() {
            println!("  {m}");
        }
        for f in c["files"].as_array().into_iter().flatten() {
            let digest = f["digest"].as_str().unwrap_or("-");
            let since = f["since"]
                .as_u64()
                .map(|t| {
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + Duration::from_secs(t),
                    )
                    .to_string()
                })
                .unwrap_or_else(|| "-".into());
            println!(
                "  {:<24} <- {}  version {}  digest {}  since {}",
                f["name"].as_str().unwrap_or("?"),
                f["source"].as_str().unwrap_or("?"),
                f["version"].as_str().unwrap_or("-"),
                &digest[..digest.len().min(12)],
                since
            );
        }
    }
    Ok(())
}

fn init_logging(format: LogFormat) {
    dso::logging::init(matches!(format, LogFormat::Json));
}

fn split_ref(reference: &str) -> (&str, Option<&str>) {
    match reference.split_once('#') {
        Some((p, k)) => (p, Some(k)),
        None => (reference, None),
    }
}

fn secret_cmd(cfg: &Config, provider: Option<&str>, action: SecretAction) -> anyhow::Result<u8> {
    let (name, fcfg) = match cfg.file_provider(provider) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("dso: {e}");
            return Ok(exit::CONFIG);
        }
    };
    let vault = FileVault::open(&fcfg).with_context(|| format!("opening provider `{name}`"))?;
    match action {
        SecretAction::Set { reference } => {
            let (path, key) = split_ref(&reference);
            let value = read_value(&reference)?;
            vault.set(path, key, value)?;
            eprintln!("stored {reference} in provider `{name}`");
            Ok(exit::OK)
        }
        SecretAction::Get { reference } => {
            let (path, key) = split_ref(&reference);
            let Some(data) = vault.get(path)? else {
                eprintln!("dso: `{path}` not found in provider `{name}`");
                return Ok(exit::NOT_FOUND);
            };
            let value = match data.select(key) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("dso: `{reference}`: {e}");
                    return Ok(exit::NOT_FOUND);
                }
            };
            let mut out = std::io::stdout().lock();
            out.write_all(value.expose())?;
            if std::io::stdout().is_terminal() {
                out.write_all(b"\n")?;
            }
            out.flush()?;
            Ok(exit::OK)
        }
        SecretAction::List { json } => {
            let list = vault.list()?;
            if json {
                let v: Vec<_> = list
                    .iter()
                    .map(|(p, keys)| serde_json::json!({"path": p, "keys": keys}))
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                for (p, keys) in list {
                    if keys.is_empty() {
                        println!("{p}");
                    } else {
                        println!("{p}  [{}]", keys.join(", "));
                    }
                }
            }
            Ok(exit::OK)
        }
        SecretAction::Import { file, path } => {
            let text = Zeroizing::new(
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?,
            );
            let pairs = match parse_dotenv(&text) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("dso: {}: {e}", file.display());
                    return Ok(exit::FAILURE);
                }
            };
            for (key, value) in &pairs {
                vault.set(
                    &path,
                    Some(key),
                    SecretValue::new(value.as_bytes().to_vec()),
                )?;
            }
            let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
            eprintln!(
                "imported {} key{} into `{path}` of provider `{name}`: {}",
                keys.len(),
                if keys.len() == 1 { "" } else { "s" },
                keys.join(", ")
            );
            eprintln!(
                "reference them as {name}/{path}#KEY; the plaintext file {} is still on disk: delete it (shred -u)",
                file.display()
            );
            Ok(exit::OK)
        }
        SecretAction::Rm { reference } => {
            let (path, key) = split_ref(&reference);
            if vault.remove(path, key)? {
                eprintln!("removed {reference} from provider `{name}`");
                Ok(exit::OK)
            } else {
                eprintln!("dso: `{reference}` not found in provider `{name}`");
                Ok(exit::NOT_FOUND)
            }
        }
    }
}

/// One `dso doctor` finding.
struct Check {
    name: String,
    ok: bool,
    detail: String,
    fix: Option<String>,
}

fn doctor(config: Option<&std::path::Path>, json: bool) -> anyhow::Result<u8> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut checks: Vec<Check> = Vec::new();
    let mut push = |name: &str, ok: bool, detail: String, fix: Option<String>| {
        checks.push(Check {
            name: name.to_string(),
            ok,
            detail,
            fix,
        })
    };
    // Informational: the agent runs without it, with a warning.
    match memory_lock_possible() {
        Ok(()) => push(
            "memory lock",
            true,
            "the agent can lock its memory (secret values never swapped out)".into(),
            None,
        ),
        Err(why) => push(
            "memory lock",
            true,
            format!("not available here ({why}); the agent runs unlocked"),
            Some("grant CAP_IPC_LOCK (compose: cap_add: [IPC_LOCK]) or disable swap".into()),
        ),
    }
    let cfg = match Config::load(config) {
        Ok((cfg, source)) => {
            push("config", true, format!("{source} is valid"), None);
            Some(cfg)
        }
        Err(e) => {
            push(
                "config",
                false,
                e.to_string().replace('\n', " "),
                Some("fix the fields named above; `dso check` prints the same".into()),
            );
            None
        }
    };
    let Some(cfg) = cfg else {
        return report(checks, json);
    };
    let host = cfg.agent.docker_host();
    if let Some(path) = host.strip_prefix("unix://") {
        match std::fs::metadata(path) {
            Ok(m) => {
                let mode = m.permissions().mode() & 0o777;
                let loose = mode & 0o006 != 0;
                push(
                    "docker socket",
                    !loose,
                    format!("{path} mode {mode:o} owner {}:{}", m.uid(), m.gid()),
                    loose.then(|| {
                        format!("anyone on the host can control Docker: chmod 660 {path}")
                    }),
                );
            }
            Err(e) => push(
                "docker socket",
                false,
                format!("{path}: {e}"),
                Some("start Docker (`systemctl start docker`) or set agent.docker_host".into()),
            ),
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let engine = match BollardEngine::connect(&host) {
            Ok(e) => match tokio::time::timeout(Duration::from_secs(5), e.negotiate()).await {
                Ok(Ok((e, v))) => {
                    let num = |s: &str| -> (u32, u32) {
                        let mut it = s.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
                        (it.next().unwrap_or(0), it.next().unwrap_or(0))
                    };
                    let ok = num(&v) >= (1, 41);
                    push(
                        "docker",
                        ok,
                        format!("{host} answers, API {v}"),
                        (!ok).then(|| {
                            "DSO needs Docker Engine 20.10 (API 1.41) or later".to_string()
                        }),
                    );
                    Some(e)
                }
                Ok(Err(e)) => {
                    push(
                        "docker",
                        false,
                        format!("{host}: {e}"),
                        Some("is dockerd running, and may this user use its socket?".into()),
                    );
                    None
                }
                Err(_) => {
                    push(
                        "docker",
                        false,
                        format!("{host}: no answer in 5 s"),
                        Some("is dockerd hung? check `docker info`".into()),
                    );
                    None
                }
            },
            Err(e) => {
                push(
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
        };
        for (name, p) in &cfg.providers {
            if let ProviderConfig::File(f) = p {
                if let Some(k) = f.effective_key_file() {
                    match std::fs::metadata(&k) {
                        Ok(m) => {
                            let mode = m.permissions().mode() & 0o777;
                            push(
                                &format!("provider {name} key file"),
                                mode & 0o077 == 0,
                                format!("{} mode {mode:o}", k.display()),
                                (mode & 0o077 != 0).then(|| format!("chmod 600 {}", k.display())),
                            );
                        }
                        Err(_) => push(
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
            let backend = dso::providers::factory(name, p)();
            let probe = match backend {
                Ok(b) => match tokio::time::timeout(p.timeout(), b.probe()).await {
                    Ok(r) => r,
                    Err(_) => Err(BackendError::Timeout(p.timeout())),
                },
                Err(e) => Err(e),
            };
            match probe {
                Ok(()) => push(
                    &format!("provider {name}"),
                    true,
                    "reachable and authenticated".into(),
                    None,
                ),
                Err(e) => push(
                    &format!("provider {name}"),
                    false,
                    e.to_string(),
                    Some(match e {
                        BackendError::Denied(_) => match p {
                            ProviderConfig::Aws(_) => "check the AWS credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ~/.aws/credentials profile, or the instance role) and the IAM policy (secretsmanager:GetSecretValue, DescribeSecret, ListSecrets)".to_string(),
                            ProviderConfig::Process(_) => "check the credentials the provider program uses (its env / pass_env)".to_string(),
                            ProviderConfig::File(_) => "check the key file / passphrase and its permissions".to_string(),
                            ProviderConfig::Vault(_) => "check the Vault token (token_env / token_file) or AppRole credentials and the policy".to_string(),
                        },
                        BackendError::Config(_) => {
                            "fix the provider's settings named above".to_string()
                        }
                        _ => "is the backend running and reachable from this host?".to_string(),
                    }),
                ),
            }
        }
        if let Some(engine) = engine {
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
                                let ok =
                                    dso_actors::spec::dir_on_tmpfs(&spec.dir, &info.tmpfs_mounts);
                                let detail = if ok {
                                    format!(
                                        "{} file(s) into {} (tmpfs)",
                                        spec.files.len(),
                                        spec.dir
                                    )
                                } else {
                                    format!(
                                        "{} is not on a tmpfs mount: its secrets are refused",
                                        spec.dir
                                    )
                                };
                                push(
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
                            Err(errs) => push(
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
                        push(
                            "containers",
                            true,
                            "no running container asks for secrets".into(),
                            None,
                        );
                    }
                }
                Err(e) => push("containers", false, e.to_string(), None),
            }
        }
    });
    report(checks, json)
}

fn report(checks: Vec<Check>, json: bool) -> anyhow::Result<u8> {
    let failed = checks.iter().filter(|c| !c.ok).count();
    if json {
        let v: Vec<_> = checks
            .iter()
            .map(|c| serde_json::json!({"check": c.name, "ok": c.ok, "detail": c.detail, "fix": c.fix}))
            .collect();
        println!("{}", serde_json::Value::Array(v));
    } else {
        let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        for c in &checks {
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
    Ok(if failed == 0 { exit::OK } else { exit::FAILURE })
}

/// Parses a `.env` file: `KEY=VALUE` lines, optional `export `, `#` comments, single or double
/// quotes (double quotes understand `\n`, `\"`, `\\`). Errors name the line, never the value.
fn parse_dotenv(text: &str) -> Result<Vec<(String, Zeroizing<String>)>, String> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: expected KEY=VALUE", n + 1));
        };
        let key = key.trim();
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
        {
            return Err(format!(
                "line {}: `{key}` is not a valid variable name",
                n + 1
            ));
        }
        let value = value.trim();
        let parsed = if let Some(inner) = value.strip_prefix('"') {
            let Some(inner) = inner.strip_suffix('"') else {
                return Err(format!("line {}: unterminated double quote", n + 1));
            };
            let mut s = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    match chars.next() {
                        Some('n') => s.push('\n'),
                        Some(other) => s.push(other),
                        None => s.push('\\'),
                    }
                } else {
                    s.push(c);
                }
            }
            s
        } else if let Some(inner) = value.strip_prefix('\'') {
            let Some(inner) = inner.strip_suffix('\'') else {
                return Err(format!("line {}: unterminated single quote", n + 1));
            };
            inner.to_string()
        } else {
            // Unquoted: an inline comment starts at " #".
            value
                .split(" #")
                .next()
                .unwrap_or("")
                .trim_end()
                .to_string()
        };
        out.push((key.to_string(), Zeroizing::new(parsed)));
    }
    Ok(out)
}

/// Reads a secret from stdin, or prompts without echo on a terminal. One trailing newline from a
/// prompt is not part of the value; piped input is taken byte for byte.
fn read_value(reference: &str) -> anyhow::Result<SecretValue> {
    if std::io::stdin().is_terminal() {
        let typed = Zeroizing::new(
            rpassword::prompt_password(format!("value for {reference}: "))
                .context("reading the value from the terminal")?,
        );
        return Ok(SecretValue::new(typed.as_bytes().to_vec()));
    }
    let mut buf = Zeroizing::new(Vec::new());
    std::io::stdin()
        .read_to_end(&mut buf)
        .context("reading the value from stdin")?;
    if buf.is_empty() {
        anyhow::bail!("no value on stdin; pipe the value in, e.g. `printf %s \"$VALUE\" | dso secret set {reference}`");
    }
    Ok(SecretValue::new(std::mem::take(&mut *buf)))
}

fn health(addr: &str) -> anyhow::Result<u8> {
    use std::net::TcpStream;
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"GET /healthz HTTP/1.0\r\nHost: dso\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    if resp.starts_with("HTTP/1.1 200") || resp.starts_with("HTTP/1.0 200") {
        println!("ok");
        Ok(exit::OK)
    } else {
        eprintln!(
            "dso: unhealthy: {}",
            resp.lines().next().unwrap_or("no answer")
        );
        Ok(exit::FAILURE)
    }
}

/// `dso run`: resolve the environment's references, then exec the command.
fn run_command(
    config: Option<&std::path::Path>,
    socket: Option<PathBuf>,
    no_agent: bool,
    command: Vec<std::ffi::OsString>,
) -> anyhow::Result<u8> {
    use dso::envrun::{self, AgentResolveError};
    use std::os::unix::process::CommandExt;
    let (refs, mut errors) = envrun::find_refs(std::env::vars_os());
    let mut env = Vec::new();
    if errors.is_empty() && !refs.is_empty() {
        let cfg = match load_config(config) {
            Ok((c, _)) => c,
            Err(code) => return Ok(code),
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
                    return Ok(exit::FAILURE);
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
            exit::NOT_FOUND
        } else {
            exit::FAILURE
        };
        return Ok(code);
    }
    let Some((program, args)) = command.split_first() else {
        eprintln!("dso: no command given: dso run -- COMMAND [ARGS…]");
        return Ok(exit::USAGE);
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args(args).envs(env.iter().map(|(k, v)| (k, v)));
    // Only returns on failure.
    let err = cmd.exec();
    drop(env);
    eprintln!("dso: cannot run {}: {err}", program.to_string_lossy());
    Ok(match err.kind() {
        std::io::ErrorKind::NotFound => 127,
        _ => 126,
    })
}

fn disable_core_dumps() {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) only changes this process's dumpable flag.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if rc != 0 {
        tracing::warn!("could not disable core dumps (prctl PR_SET_DUMPABLE)");
    }
}

fn run_agent(cfg: Config, config_name: String, config_path: Option<PathBuf>) -> anyhow::Result<u8> {
    disable_core_dumps();
    lock_memory();
    let reexec = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reexec_flag = reexec.clone();
    let running_cfg = cfg.clone();
    let system = actix::System::new();
    let host = cfg.agent.docker_host();
    let setup: anyhow::Result<Option<i32>> = system.block_on(async move {
        tracing::info!(version = env!("CARGO_PKG_VERSION"), config = %config_name, docker = %host, "dso agent starting");
        if let Some((from, to)) = dso::listen::raise_nofile_limit() {
            tracing::info!(from, to, "raised the open-files limit (soft RLIMIT_NOFILE) to the hard limit");
        }
        // The socket may not exist yet (dockerd restarting): retry like the event stream does.
        let mut attempt = 0u32;
        let engine = loop {
            match BollardEngine::connect(&host) {
                Ok(e) => {
                    break e
                        .with_direct_writes(cfg.agent.write_mode == dso::config::WriteMode::Auto)
                        .with_exec_timeout(cfg.agent.exec_timeout)
                }
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
                    return Ok(Some(dso_actors::exit::ExitCode::DockerUnreachable.as_i32()));
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
        let (metrics, registry) = Metrics::new(env!("CARGO_PKG_VERSION"));
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
        let settings = AgentSettings {
            shards: cfg.agent.shards,
            queue_capacity: cfg.agent.queue_capacity,
            shard_concurrency: cfg.agent.shard_concurrency,
            cache_ttl: cfg.cache.ttl,
            cache_max_entries: cfg.cache.max_entries,
            cache_max_stale: cfg.cache.max_stale,
            rules: Arc::new(cfg.rules()),
            scope: cfg.agent.scope_target(),
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
        let listener = tokio::net::TcpListener::bind(cfg.agent.listen)
            .await
            .with_context(|| format!("agent.listen: cannot listen on {}", cfg.agent.listen))?;
        let addr = listener.local_addr()?;
        let admin = dso::admin::bind(&cfg.agent.admin_socket)?;
        let supervisor = actix::Actor::start(Supervisor::new(engine, providers, settings, metrics));
        let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
        actix_rt::spawn(dso::admin::serve(admin, supervisor.clone(), async move {
            let _ = admin_stop_rx.await;
        }));
        tracing::info!(socket = %cfg.agent.admin_socket.display(), "admin socket listening");
        let socket_path = cfg.agent.admin_socket.clone();
        let state = AdminState {
            registry: Arc::new(registry),
            supervisor: supervisor.clone(),
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        actix_rt::spawn(serve(listener, state, async move {
            let _ = stop_rx.await;
        }));
        tracing::info!(%addr, "admin endpoint listening (/metrics /healthz /readyz)");
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
        Ok(None)
    });
    if let Some(code) = setup? {
        return Ok(u8::try_from(code).unwrap_or(exit::FAILURE));
    }
    let code = system.run_with_code().context("actor system")?;
    if reexec.load(std::sync::atomic::Ordering::SeqCst) && code == 0 {
        return reexec_self();
    }
    Ok(u8::try_from(code).unwrap_or(exit::FAILURE))
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
async fn wait_for_signal(running: &Config, path: Option<&std::path::Path>) -> Stop {
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
fn reexec_self() -> anyhow::Result<u8> {
    use std::os::unix::process::CommandExt;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let err = std::process::Command::new("/proc/self/exe")
        .args(args)
        .exec();
    Err(anyhow::anyhow!(
        "restarting in place with the new configuration failed: {err}"
    ))
}

/// Locks the agent's memory so secret values are never swapped out, where the OS allows it: with
/// CAP_IPC_LOCK or an unlimited `memlock` ulimit, `mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)`.
/// Without either, locking everything would make allocations fail once the (small) limit is
/// reached, so the agent warns instead and runs unlocked.
fn lock_memory() {
    match memory_lock_possible() {
        Ok(()) => {
            // SAFETY: mlockall only changes this process's paging; MCL_ONFAULT locks pages as
            // they are touched, so reserved-but-unused memory (thread stacks) costs nothing.
            let rc = unsafe {
                libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT)
            };
            if rc == 0 {
                tracing::info!("memory locked (mlockall): secret values are never swapped out");
            } else {
                tracing::warn!(
                    error = %std::io::Error::last_os_error(),
                    "could not lock memory (mlockall); secret values could be swapped out"
                );
            }
        }
        Err(why) => tracing::warn!(
            "memory not locked ({why}): secret values could be swapped out; grant CAP_IPC_LOCK              (compose: cap_add: [IPC_LOCK]) or an unlimited memlock ulimit, or disable swap"
        ),
    }
}

/// Ok when `mlockall(MCL_FUTURE)` cannot starve the allocator; else why not.
fn memory_lock_possible() -> Result<(), String> {
    const CAP_IPC_LOCK: u32 = 14;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    if cap_eff & (1 << CAP_IPC_LOCK) != 0 {
        return Ok(());
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    if rc == 0 && lim.rlim_cur == libc::RLIM_INFINITY {
        return Ok(());
    }
    Err(format!(
        "no CAP_IPC_LOCK and the memlock ulimit is {} KiB",
        lim.rlim_cur / 1024
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_lines_quotes_comments_and_errors() {
        let text = "# comment\nexport DB_PASSWORD=\"p@ss \\\"word\\\"\\n2\"\nAPI_KEY='a b#c'\nPLAIN=value # trailing\nEMPTY=\n\n";
        let got: Vec<(String, String)> = parse_dotenv(text)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("DB_PASSWORD".into(), "p@ss \"word\"\n2".into()),
                ("API_KEY".into(), "a b#c".into()),
                ("PLAIN".into(), "value".into()),
                ("EMPTY".into(), String::new()),
            ]
        );
        let e = parse_dotenv("OK=1\nnot a line\n").unwrap_err();
        assert_eq!(e, "line 2: expected KEY=VALUE");
        let e = parse_dotenv("X=\"secretvalue\n").unwrap_err();
        assert!(e.contains("line 1") && !e.contains("secretvalue"), "{e}");
    }
}
