//! Configuration: TOML, every field defaulted and documented, unknown keys refused.

pub use crate::de::duration;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dso_actors::access::{
    AccessRule, AccessRules, CallerSelector, ContainerSelector, Pattern, Subject,
};
use dso_actors::secret::SecretRef;
use dso_actors::spec::{parse_mode, valid_name, SecretRule, Target};
use serde::{Deserialize, Serialize};

use crate::de::at as de_at;
use crate::endpoint::{Endpoint, EndpointSettings};
use crate::providers::file::FileConfig;
pub use crate::providers::{ProviderConfig, ProviderKind, ProviderSettings, ProviderSpec};

/// Where the config is read from when neither `--config` nor `DSO_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/dso/dso.toml";
/// Name of the embedded default provider.
pub const DEFAULT_PROVIDER: &str = "local";

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// `[agent]`.
    pub agent: AgentConfig,
    /// `[cache]`.
    pub cache: CacheConfig,
    /// `[providers.<name>]`: one backend each.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// `[[secrets]]`: files for containers matched by name or label.
    pub secrets: Vec<SecretRuleConfig>,
    /// `[[access]]`: which containers and socket callers may read which references.
    pub access: Vec<AccessConfig>,
}

/// `[agent]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Address of `/metrics`, `/healthz`, `/readyz`. Default `127.0.0.1:9464`.
    pub listen: SocketAddr,
    /// Docker endpoint. Default: `DOCKER_HOST`, else `unix:///var/run/docker.sock`.
    pub docker_host: Option<String>,
    /// CA (PEM) that signed a `tcp://` engine's certificate; turns TLS on. Default: with
    /// `DOCKER_TLS_VERIFY` set, `$DOCKER_CERT_PATH/ca.pem` (and `cert.pem`, `key.pem`).
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) presented to a TLS engine; with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// Client key (PEM) for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Allow plain `tcp://` to an engine that is not on loopback. Default false.
    pub allow_insecure_tcp: bool,
    /// Injector shards, 4–32. Default 8.
    pub shards: usize,
    /// Capacity of every actor mailbox and shard queue. Default 2000.
    pub queue_capacity: usize,
    /// Containers one shard works on at once (inspect, fetch, write), 1–64. Default 16.
    pub shard_concurrency: usize,
    /// `docker exec`s the agent runs at once, all shards together (the engine's budget: an
    /// exec is the costly call), 1–1024. Default 32.
    pub exec_concurrency: usize,
    /// Failed Docker reconnects in a row before the agent exits non-zero. Default 100.
    pub docker_max_reconnects: u32,
    /// Period of the reconciliation pass; `"0s"` turns periodic passes off. Default `"10m"`.
    #[serde(with = "duration")]
    pub reconcile_interval: Duration,
    /// Longest wait for in-flight injections on SIGTERM. Default `"10s"`.
    #[serde(with = "duration")]
    pub drain_timeout: Duration,
    /// Manage only containers carrying this label (`key` or `key=value`). Default: all containers.
    pub scope: Option<String>,
    /// The provider of `dso://path` / `dsofile://path` references that name none (the original
    /// Docker Secret Operator's syntax, in `docker dso` compose files). Default: the only provider
    /// when the config has exactly one.
    pub default_provider: Option<String>,
    /// Where the agent keeps its own small state (`digest.key`, the key of the content digests
    /// written to `.ready`). Default `/var/lib/dso`.
    pub state_dir: PathBuf,
    /// The admin API's Unix socket (mode 0660). Default `/run/dso/dso.sock`.
    pub admin_socket: PathBuf,
    /// Append-only audit log (JSON lines: deliveries, rotations, refusals, reloads; never a
    /// value). Default `<state_dir>/audit.jsonl`.
    pub audit_log: Option<PathBuf>,
    /// `dso.reload=restart`: containers of one Compose service restart one at a time, each after
    /// the previous is running (healthy, with a healthcheck) plus a random wait up to this.
    /// Default `"5s"`.
    #[serde(with = "duration")]
    pub restart_splay: Duration,
    /// Rotations in flight at once, agent-wide (divided among the shards). Default 16.
    pub max_concurrent_rotations: usize,
    /// Secret changes arriving within this window are applied together. Default `"2s"`.
    #[serde(with = "duration")]
    pub rotation_debounce: Duration,
    /// How files get into containers: `"auto"` (through `/proc/<pid>/root`, no exec, when the
    /// host allows it, else exec) or `"exec"` (always one `docker exec`). Default `"auto"`.
    pub write_mode: WriteMode,
    /// One deadline over an injection exec (create, start, output, exit code); on expiry the job
    /// fails with `result="timeout"` and the hung process is killed where the agent sees it.
    /// 1s–10m. Default `"30s"`.
    #[serde(with = "duration")]
    pub exec_timeout: Duration,
}

/// `agent.write_mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    /// Direct writes through the container's mount namespace when possible, else exec.
    #[default]
    Auto,
    /// Always exec.
    Exec,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            docker_host: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            allow_insecure_tcp: false,
            shards: 8,
            queue_capacity: 2000,
            shard_concurrency: 16,
            exec_concurrency: 32,
            docker_max_reconnects: 100,
            reconcile_interval: Duration::from_secs(600),
            drain_timeout: Duration::from_secs(10),
            scope: None,
            default_provider: None,
            state_dir: PathBuf::from("/var/lib/dso"),
            admin_socket: PathBuf::from("/run/dso/dso.sock"),
            audit_log: None,
            restart_splay: Duration::from_secs(5),
            max_concurrent_rotations: 16,
            rotation_debounce: Duration::from_secs(2),
            write_mode: WriteMode::Auto,
            exec_timeout: Duration::from_secs(30),
        }
    }
}

impl AgentConfig {
    /// The Docker endpoint in effect.
    pub fn docker_host(&self) -> String {
        self.docker_host
            .clone()
            .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string())
    }

    /// The engine endpoint in effect (`docker_host`, the TLS settings and the Docker CLI's
    /// `DOCKER_TLS_VERIFY` / `DOCKER_CERT_PATH`), or what is wrong with it.
    pub fn engine_endpoint(&self) -> Result<Endpoint, String> {
        let host = self.docker_host();
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        Endpoint::resolve(&EndpointSettings {
            host: &host,
            tls_ca: self.tls_ca.as_deref(),
            tls_cert: self.tls_cert.as_deref(),
            tls_key: self.tls_key.as_deref(),
            allow_insecure_tcp: self.allow_insecure_tcp,
            env_tls_verify: env("DOCKER_TLS_VERIFY").is_some(),
            env_cert_path: env("DOCKER_CERT_PATH")
                .map(PathBuf::from)
                .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".docker"))),
        })
    }

    /// The audit log in effect.
    pub fn audit_log(&self) -> PathBuf {
        self.audit_log
            .clone()
            .unwrap_or_else(|| self.state_dir.join("audit.jsonl"))
    }

    /// The scope as a label target.
    pub fn scope_target(&self) -> Option<Target> {
        self.scope.as_ref().map(|s| match s.split_once('=') {
            Some((k, v)) => Target::Label(k.to_string(), Some(v.to_string())),
            None => Target::Label(s.clone(), None),
        })
    }
}

/// `[cache]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// How long a fetched secret is served before the backend is asked again. Default `"10m"`.
    #[serde(with = "duration")]
    pub ttl: Duration,
    /// Most secrets held in memory. Default 10000.
    pub max_entries: usize,
    /// While a backend is down, values up to `ttl + max_stale` old are still served (and
    /// counted in `dso_cache_stale_served_total`). `"0s"` turns this off. Default `"1h"`.
    #[serde(with = "duration")]
    pub max_stale: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(600),
            max_entries: 10_000,
            max_stale: Duration::from_secs(3600),
        }
    }
}

/// One `[[secrets]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRuleConfig {
    /// File name inside the container's secrets directory.
    pub name: String,
    /// `<provider>/<path>[#<key>]`.
    pub from: String,
    /// Containers: a name, or `label:key[=value]`.
    pub targets: Vec<String>,
    /// Octal mode, default `"0400"`.
    #[serde(default)]
    pub mode: Option<String>,
    /// Owner uid (default: the container's numeric user, else 0).
    #[serde(default)]
    pub uid: Option<u32>,
    /// Owner gid (default: the container's numeric group, else 0).
    #[serde(default)]
    pub gid: Option<u32>,
}

/// One `[[access]]` entry: `containers` or `callers`, and what they may read.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    /// Which containers (every given selector must match; `{}`: every container).
    #[serde(default)]
    pub containers: Option<ContainersSelectorConfig>,
    /// Which admin-socket callers (every given list must name the caller; `{}`: every caller).
    #[serde(default)]
    pub callers: Option<CallersSelectorConfig>,
    /// Patterns: `<provider>/<path>`, `*` within one segment, a trailing `/**` for everything below.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Callers only: may also use `status`, `reconcile`, `rotate`, `inject`. Default false.
    #[serde(default)]
    pub admin: bool,
}

/// `containers = { … }` of an `[[access]]` rule.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ContainersSelectorConfig {
    /// The `com.docker.compose.project` label.
    pub compose_project: Option<String>,
    /// The `com.docker.compose.service` label.
    pub compose_service: Option<String>,
    /// `key=value` (or `key`: the label is present).
    pub label: Option<String>,
    /// The image name the container was created from (`:latest` implied).
    pub image: Option<String>,
}

/// `callers = { … }` of an `[[access]]` rule.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CallersSelectorConfig {
    /// The caller's uid is one of these.
    pub uids: Option<Vec<u32>>,
    /// The caller's primary gid is one of these.
    pub gids: Option<Vec<u32>>,
}

/// Everything wrong with a config, each line `path: problem`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration {source_name}:\n  {}", .problems.join("\n  "))]
pub struct ConfigError {
    /// The file (or `<embedded default>`).
    pub source_name: String,
    /// One entry per problem.
    pub problems: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTop {
    #[serde(default)]
    agent: AgentConfig,
    #[serde(default)]
    cache: CacheConfig,
    #[serde(default)]
    secrets: Vec<SecretRuleConfig>,
    #[serde(default)]
    access: Vec<AccessConfig>,
}

impl Config {
    /// The configuration used when there is no config file: one `file` provider named `local`.
    pub fn embedded_default() -> Self {
        let mut providers = BTreeMap::new();
        providers.insert(
            DEFAULT_PROVIDER.to_string(),
            ProviderConfig::new(ProviderSpec::File(FileConfig::default())),
        );
        Config {
            agent: AgentConfig::default(),
            cache: CacheConfig::default(),
            providers,
            secrets: Vec::new(),
            access: Vec::new(),
        }
    }

    /// Parses and validates TOML text; `source_name` is used in the error.
    pub fn parse(text: &str, source_name: &str) -> Result<Self, ConfigError> {
        let fail = |problems: Vec<String>| ConfigError {
            source_name: source_name.to_string(),
            problems,
        };
        let mut table: toml::Table = toml::from_str(text).map_err(|e| {
            fail(vec![format!(
                "TOML syntax: {}",
                e.to_string().trim().replace('\n', " ")
            )])
        })?;
        let mut problems = Vec::new();
        let raw_providers = table.remove("providers");
        let top: Option<RawTop> = match de_at(toml::Value::Table(table), "") {
            Ok(t) => Some(t),
            Err(p) => {
                problems.push(p);
                None
            }
        };
        let mut providers = BTreeMap::new();
        match raw_providers {
            None => {}
            Some(toml::Value::Table(t)) => {
                for (name, value) in t {
                    let prefix = format!("providers.{name}");
                    let toml::Value::Table(pt) = value else {
                        problems.push(format!("{prefix}: must be a table"));
                        continue;
                    };
                    let parsed = ProviderConfig::parse(pt, &prefix);
                    match parsed {
                        Ok(p) => {
                            providers.insert(name, p);
                        }
                        Err(p) => problems.extend(p),
                    }
                }
            }
            Some(_) => problems.push("providers: must be a table of `[providers.<name>]`".into()),
        }
        let Some(top) = top else {
            return Err(fail(problems));
        };
        if providers.is_empty() && problems.is_empty() {
            providers.insert(
                DEFAULT_PROVIDER.to_string(),
                ProviderConfig::new(ProviderSpec::File(FileConfig::default())),
            );
        }
        let cfg = Config {
            agent: top.agent,
            cache: top.cache,
            providers,
            secrets: top.secrets,
            access: top.access,
        };
        problems.extend(cfg.validate());
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(fail(problems))
        }
    }

    /// Reads `path`; `None` means: `DEFAULT_CONFIG_PATH` if it exists, else the embedded default.
    pub fn load(path: Option<&Path>) -> Result<(Self, String), ConfigError> {
        let (path, explicit): (PathBuf, bool) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let name = path.display().to_string();
                Self::parse(&text, &name).map(|c| (c, name))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                Ok((Self::embedded_default(), "<embedded default>".to_string()))
            }
            Err(e) => Err(ConfigError {
                source_name: path.display().to_string(),
                problems: vec![format!("cannot read the config file: {e}")],
            }),
        }
    }

    /// The provider of references that name none: `agent.default_provider`, else the only
    /// provider when there is exactly one.
    pub fn default_provider(&self) -> Option<String> {
        self.agent.default_provider.clone().or_else(|| {
            (self.providers.len() == 1)
                .then(|| self.providers.keys().next().cloned())
                .flatten()
        })
    }

    /// Every semantic problem (after the types parsed).
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        let a = &self.agent;
        if !(4..=32).contains(&a.shards) {
            p.push(format!(
                "agent.shards: {} is out of range; use 4 to 32",
                a.shards
            ));
        }
        if !(1..=1_000_000).contains(&a.queue_capacity) {
            p.push(format!(
                "agent.queue_capacity: {} is out of range; use 1 to 1000000",
                a.queue_capacity
            ));
        }
        if !(1..=64).contains(&a.shard_concurrency) {
            p.push(format!(
                "agent.shard_concurrency: {} is out of range; use 1 to 64",
                a.shard_concurrency
            ));
        }
        if !(1..=1024).contains(&a.exec_concurrency) {
            p.push(format!(
                "agent.exec_concurrency: {} is out of range; use 1 to 1024",
                a.exec_concurrency
            ));
        }
        if !(1..=1024).contains(&a.max_concurrent_rotations) {
            p.push(format!(
                "agent.max_concurrent_rotations: {} is out of range; use 1 to 1024",
                a.max_concurrent_rotations
            ));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&a.exec_timeout) {
            p.push(format!(
                "agent.exec_timeout: {} is out of range; use 1s to 10m",
                humantime::format_duration(a.exec_timeout)
            ));
        }
        if a.docker_max_reconnects == 0 {
            p.push("agent.docker_max_reconnects: must be at least 1".into());
        }
        if let Err(e) = a.engine_endpoint() {
            p.push(e);
        }
        if let Some(s) = &a.scope {
            if s.is_empty() || s.starts_with('=') {
                p.push(format!("agent.scope: `{s}` must be `key` or `key=value`"));
            }
        }
        if let Some(d) = &a.default_provider {
            if !self.providers.contains_key(d) {
                p.push(format!(
                    "agent.default_provider: no provider `{d}` (providers: {})",
                    self.providers
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        if self.cache.ttl.is_zero() {
            p.push("cache.ttl: must be more than 0s".into());
        }
        if self.cache.max_entries == 0 {
            p.push("cache.max_entries: must be at least 1".into());
        }
        for (name, prov) in &self.providers {
            let prefix = format!("providers.{name}");
            if !valid_name(name) {
                p.push(format!(
                    "{prefix}: provider names use [A-Za-z0-9._-] (it appears in references as `{name}/path`)"
                ));
            }
            p.extend(prov.validate(&prefix));
        }
        for (i, s) in self.secrets.iter().enumerate() {
            let prefix = format!("secrets[{i}]");
            if !valid_name(&s.name) {
                p.push(format!(
                    "{prefix}.name: `{}` is not a plain file name ([A-Za-z0-9._-], not `.` or `..`)",
                    s.name
                ));
            }
            match s.from.parse::<SecretRef>() {
                Ok(r) if !self.providers.contains_key(&r.provider) => p.push(format!(
                    "{prefix}.from: provider `{}` is not configured (have: {})",
                    r.provider,
                    self.providers
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                Ok(_) => {}
                Err(e) => p.push(format!("{prefix}.from: {e}")),
            }
            if s.targets.is_empty() {
                p.push(format!(
                    "{prefix}.targets: empty; list container names or `label:key[=value]`"
                ));
            }
            for (j, t) in s.targets.iter().enumerate() {
                if let Err(e) = Target::parse(t) {
                    p.push(format!("{prefix}.targets[{j}]: {e}"));
                }
            }
            if let Some(m) = &s.mode {
                if parse_mode(m).is_none() {
                    p.push(format!(
                        "{prefix}.mode: `{m}` is not an octal mode such as \"0400\""
                    ));
                }
            }
        }
        for (i, a) in self.access.iter().enumerate() {
            p.extend(self.validate_access(&format!("access[{i}]"), a));
        }
        p
    }

    fn validate_access(&self, prefix: &str, a: &AccessConfig) -> Vec<String> {
        let mut p = Vec::new();
        match (&a.containers, &a.callers) {
            (None, None) => p.push(format!(
                "{prefix}: say whom it is for: `containers = {{ compose_project = \"…\" }}` or `callers = {{ uids = [1000] }}`"
            )),
            (Some(_), Some(_)) => p.push(format!(
                "{prefix}: `containers` and `callers` in one rule; write two rules"
            )),
            _ => {}
        }
        if a.admin && a.callers.is_none() {
            p.push(format!(
                "{prefix}.admin: only `callers` rules can grant admin"
            ));
        }
        if let Some(c) = &a.containers {
            for (key, v) in [
                ("compose_project", &c.compose_project),
                ("compose_service", &c.compose_service),
                ("image", &c.image),
            ] {
                if v.as_deref().is_some_and(|v| v.trim().is_empty()) {
                    p.push(format!("{prefix}.containers.{key}: empty"));
                }
            }
            if let Some(l) = &c.label {
                if let Err(e) = ContainerSelector::parse_label(l) {
                    p.push(format!("{prefix}.containers.label: {e}"));
                }
            }
        }
        if let Some(c) = &a.callers {
            for (key, v) in [("uids", &c.uids), ("gids", &c.gids)] {
                if v.as_ref().is_some_and(Vec::is_empty) {
                    p.push(format!(
                        "{prefix}.callers.{key}: empty list (leave it out to match every {})",
                        &key[..3]
                    ));
                }
            }
        }
        if a.allow.is_empty() && !a.admin {
            p.push(format!(
                "{prefix}.allow: empty; list patterns such as \"vault/app/*\" or \"local/shared/**\""
            ));
        }
        for (j, pat) in a.allow.iter().enumerate() {
            match Pattern::parse(pat) {
                Err(e) => p.push(format!("{prefix}.allow[{j}]: {e}")),
                Ok(_) => {
                    let provider = pat.split('/').next().unwrap_or_default();
                    if !provider.contains('*') && !self.providers.contains_key(provider) {
                        p.push(format!(
                            "{prefix}.allow[{j}]: provider `{provider}` is not configured (have: {})",
                            self.providers.keys().cloned().collect::<Vec<_>>().join(", ")
                        ));
                    }
                }
            }
        }
        p
    }

    /// The `[[access]]` rules in the form the actors use (call after validation).
    pub fn access_rules(&self) -> AccessRules {
        let rules = self
            .access
            .iter()
            .enumerate()
            .filter_map(|(i, a)| {
                let subject = match (&a.containers, &a.callers) {
                    (Some(c), None) => Subject::Containers(ContainerSelector {
                        compose_project: c.compose_project.clone(),
                        compose_service: c.compose_service.clone(),
                        label: c
                            .label
                            .as_deref()
                            .and_then(|l| ContainerSelector::parse_label(l).ok()),
                        image: c.image.clone(),
                    }),
                    (None, Some(c)) => Subject::Callers {
                        selector: CallerSelector {
                            uids: c.uids.clone(),
                            gids: c.gids.clone(),
                        },
                        admin: a.admin,
                    },
                    _ => return None,
                };
                Some(AccessRule {
                    name: format!("access[{i}]"),
                    subject,
                    allow: a
                        .allow
                        .iter()
                        .filter_map(|s| Pattern::parse(s).ok())
                        .collect(),
                })
            })
            .collect();
        AccessRules::new(rules)
    }

    /// The `[[secrets]]` rules in the form the actors use (call after validation).
    pub fn rules(&self) -> Vec<SecretRule> {
        self.secrets
            .iter()
            .filter_map(|s| {
                Some(SecretRule {
                    name: s.name.clone(),
                    source: s.from.parse().ok()?,
                    mode: s.mode.as_deref().and_then(parse_mode),
                    uid: s.uid,
                    gid: s.gid,
                    targets: s
                        .targets
                        .iter()
                        .filter_map(|t| Target::parse(t).ok())
                        .collect(),
                })
            })
            .collect()
    }

    /// The first `file` provider (for `dso secret`), or the one named.
    pub fn file_provider(&self, name: Option<&str>) -> Result<(String, FileConfig), String> {
        match name {
            Some(n) => match self.providers.get(n) {
                Some(ProviderConfig {
                    spec: ProviderSpec::File(f),
                    ..
                }) => Ok((n.to_string(), f.clone())),
                Some(_) => Err(format!("provider `{n}` is not a `file` provider")),
                None => Err(format!("no provider named `{n}` in the config")),
            },
            None => self
                .providers
                .iter()
                .find_map(|(n, p)| match &p.spec {
                    ProviderSpec::File(f) => Some((n.clone(), f.clone())),
                    _ => None,
                })
                .ok_or_else(|| {
                    "the config has no `file` provider; add `[providers.local] type = \"file\"`"
                        .to_string()
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let text = r#"
[agent]
listen = "127.0.0.1:9464"
docker_host = "unix:///var/run/docker.sock"
shards = 8
queue_capacity = 2000

[cache]
ttl = "10m"

[providers.vault]
type = "vault"
address = "http://127.0.0.1:8200"
token_env = "VAULT_TOKEN"
mount = "secret"
timeout = "30s"

[providers.local]
type = "file"
path = "/var/lib/dso/vault.enc"
key_file = "/var/lib/dso/vault.key"

[[secrets]]
name = "db_password"
from = "vault/app/db#password"
targets = ["web", "label:tier=db"]
mode = "0440"
"#;
        let c = Config::parse(text, "t.toml").unwrap();
        assert_eq!(c.agent.shards, 8);
        assert_eq!(c.cache.ttl, Duration::from_secs(600));
        assert_eq!(c.providers.len(), 2);
        assert!(matches!(c.providers["vault"].spec, ProviderSpec::Vault(_)));
        assert_eq!(c.rules()[0].mode, Some(0o440));
    }

    #[test]
    fn empty_config_gets_the_local_provider() {
        let c = Config::parse("", "t.toml").unwrap();
        assert!(matches!(
            c.providers[DEFAULT_PROVIDER].spec,
            ProviderSpec::File(_)
        ));
        assert_eq!(c, Config::embedded_default());
    }

    #[test]
    fn default_provider_is_set_or_the_only_one() {
        assert_eq!(
            Config::parse("", "t.toml").unwrap().default_provider(),
            Some(DEFAULT_PROVIDER.to_string())
        );
        let two = "[providers.a]\ntype = \"file\"\npath = \"/x\"\nkey_file = \"/k\"\n\
                   [providers.b]\ntype = \"file\"\npath = \"/y\"\nkey_file = \"/k\"\n";
        assert_eq!(
            Config::parse(two, "t.toml").unwrap().default_provider(),
            None
        );
        let set = format!("[agent]\ndefault_provider = \"b\"\n{two}");
        assert_eq!(
            Config::parse(&set, "t.toml").unwrap().default_provider(),
            Some("b".into())
        );
        let bad = format!("[agent]\ndefault_provider = \"c\"\n{two}");
        assert!(
            problems(&bad).contains("agent.default_provider: no provider `c` (providers: a, b)")
        );
    }

    fn problems(text: &str) -> String {
        Config::parse(text, "t.toml")
            .unwrap_err()
            .problems
            .join("\n")
    }

    #[test]
    fn every_problem_is_named_by_its_path() {
        let cases = [
            (
                "[agent]\nshardz = 3",
                "agent.shardz: unknown field `shardz`",
            ),
            ("[agent]\nshards = \"eight\"", "agent.shards: invalid type"),
            ("[agent]\nshards = 2", "agent.shards: 2 is out of range"),
            (
                "[agent]\nexec_timeout = \"0s\"",
                "agent.exec_timeout: 0s is out of range; use 1s to 10m",
            ),
            (
                "[agent]\nexec_timeout = \"1h\"",
                "agent.exec_timeout: 1h is out of range",
            ),
            (
                "[cache]\nttl = \"ten minutes\"",
                "cache.ttl: invalid duration `ten minutes`",
            ),
            (
                "[providers.v]\ntype = \"vault\"\naddress = \"http://x\"\nadress = 1",
                "providers.v.adress: unknown field `adress`",
            ),
            (
                "[providers.v]\ntype = \"vault\"\naddress = \"http://x\"\ntimeout = \"soon\"",
                "providers.v.timeout: invalid duration",
            ),
            (
                "[providers.v]\ntype = \"consul\"",
                "providers.v.type: unknown provider type `consul`",
            ),
            (
                "[providers.v]\naddress = \"x\"",
                "providers.v.type: missing",
            ),
            (
                "[[secrets]]\nname = \"../x\"\nfrom = \"nope/a\"\ntargets = []",
                "secrets[0].name",
            ),
            (
                "[[secrets]]\nname = \"x\"\nfrom = \"nope/a\"\ntargets = [\"web\"]",
                "secrets[0].from: provider `nope` is not configured",
            ),
            (
                "[[access]]\ncontainers = { compose_project = \"a\" }\nallow = [\"local/a/**/x\"]",
                "access[0].allow[0]: `local/a/**/x`: `**` is only allowed",
            ),
            (
                "[[access]]\ncontainers = { compose_project = \"a\" }\nallow = [\"local/a\", \"vault/a/*\"]",
                "access[0].allow[1]: provider `vault` is not configured",
            ),
            (
                "[[access]]\nallow = [\"local/a\"]",
                "access[0]: say whom it is for",
            ),
            (
                "[[access]]\ncontainers = {}\ncallers = {}\nallow = [\"local/a\"]",
                "access[0]: `containers` and `callers` in one rule",
            ),
            (
                "[[access]]\ncontainers = { project = \"a\" }\nallow = [\"local/a\"]",
                "access[0].containers.project: unknown field `project`",
            ),
            (
                "[[access]]\ncontainers = { label = \"=x\" }\nallow = [\"local/a\"]",
                "access[0].containers.label: `=x`: needs a label key",
            ),
            (
                "[[access]]\ncontainers = { image = \"x\" }\nadmin = true\nallow = [\"local/a\"]",
                "access[0].admin: only `callers` rules",
            ),
            (
                "[[access]]\ncallers = { uids = [1000] }\nallow = []",
                "access[0].allow: empty",
            ),
            (
                "[[access]]\ncallers = { uids = [] }\nadmin = true",
                "access[0].callers.uids: empty list",
            ),
            (
                "[[access]]\ncallers = { uids = [-1] }\nallow = [\"local/a\"]",
                "access[0].callers.uids",
            ),
            ("agent = [", "TOML syntax"),
            ("bogus = 1", "unknown field `bogus`"),
        ];
        for (text, want) in cases {
            let got = problems(text);
            assert!(
                got.contains(want),
                "config:\n{text}\n--- got:\n{got}\n--- want: {want}"
            );
        }
    }

    #[test]
    fn access_rules_parse_into_the_rules_the_actors_use() {
        let c = Config::parse(
            r#"
[[access]]
containers = { compose_project = "payments", label = "tier=db" }
allow = ["local/payments/*", "local/shared/smtp"]

[[access]]
callers = { uids = [1000], gids = [998] }
allow = ["local/dev/**"]

[[access]]
callers = { gids = [999] }
admin = true
"#,
            "t.toml",
        )
        .unwrap();
        let rules = c.access_rules();
        assert_eq!(rules.rules().len(), 3);
        assert_eq!(rules.rules()[2].name, "access[2]");
        let dev = dso_actors::access::Caller {
            uid: 1000,
            gid: 998,
        };
        let r = |s: &str| s.parse::<SecretRef>().unwrap();
        assert!(rules.check_caller(dev, &[r("local/dev/a/b")]).is_ok());
        assert!(rules.check_caller(dev, &[r("local/payments/db")]).is_err());
        assert!(rules.caller_is_admin(dso_actors::access::Caller { uid: 5, gid: 999 }));
        assert!(Config::parse("", "t.toml")
            .unwrap()
            .access_rules()
            .is_open());
    }

    #[test]
    fn several_problems_are_all_reported() {
        let got = problems("[agent]\nshards = 99\nqueue_capacity = 0\n[cache]\nttl = \"0s\"");
        assert_eq!(got.lines().count(), 3, "{got}");
    }
}
