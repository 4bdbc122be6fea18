//! HashiCorp Vault / OpenBao key/value backend (KV v2 and KV v1) with token or AppRole
//! authentication, namespaces and TLS with a private CA.
//!
//! Requests go to the HTTP API with the token in `X-Vault-Token` (and the namespace, when set, in
//! `X-Vault-Namespace`, on every request, the login included). The token never appears in
//! `Debug` output, in logs or in error messages; response bodies are bounded (16 MiB), never
//! logged, and wiped (best effort) once their values have been moved into [`SecretValue`]s.
//!
//! Token lifecycle (lazy, on the request path; nothing runs in the background): a token from an
//! AppRole login or from a token file is renewed with `auth/token/renew-self` once 2/3 of its TTL
//! has passed ([`next_step`]). When a renewal is refused, when the token expired, or when a
//! renewal granted less than a full TTL (the token hit its `max_ttl`), the backend logs in again
//! (AppRole) or re-reads the token file. A request answered 401/403 gets one fresh token the same
//! way and is retried once. A token file that changes on disk (an external agent rotated it) is
//! picked up at the next request.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::wire;
use async_trait::async_trait;
use dso_actors::backend::{BackendError, Fetched, SecretBackend};
use dso_actors::secret::zeroize_json;
use dso_actors::secret::{SecretData, SecretValue};
use reqwest::header::{HeaderValue, CONTENT_TYPE};
use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

/// Largest response body accepted from Vault.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// Largest error body read to extract Vault's `errors` messages.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Longest Vault error text quoted in an error message.
const MAX_ERROR_TEXT: usize = 300;
/// Env var read for the token when neither `token_env` nor `token_file` is set.
const DEFAULT_TOKEN_ENV: &str = "VAULT_TOKEN";
/// Largest role id / secret id file read.
const MAX_CREDENTIAL_FILE: u64 = 64 * 1024;

/// How the provider authenticates.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    /// A token from `token_env` (default `VAULT_TOKEN`) or `token_file`. The default.
    #[default]
    Token,
    /// AppRole login with `role_id`/`role_id_file` and `secret_id_file`/`secret_id_env`.
    Approle,
}

/// Marks a `secret_id` written inline in the config. The value is dropped at once and never
/// kept, shown or serialized; [`VaultConfig::validate`] refuses the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InlineSecretId;

impl<'de> Deserialize<'de> for InlineSecretId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d)?;
        Ok(InlineSecretId)
    }
}

/// Configuration of a `vault` provider (HashiCorp Vault or OpenBao, KV v1 or v2).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// Base URL of the server, e.g. `"http://127.0.0.1:8200"` (required).
    pub address: String,
    /// `"token"` (default) or `"approle"`.
    #[serde(default)]
    pub auth: AuthMethod,
    /// `auth = "token"`: env var holding the token. Default `"VAULT_TOKEN"` when `token_file`
    /// is not set.
    #[serde(default)]
    pub token_env: Option<String>,
    /// `auth = "token"`: file holding the token (trailing whitespace trimmed). Re-read when it
    /// changes on disk. No default.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// `auth = "approle"`: the role id, inline (it is an identifier, not a secret). No default;
    /// this or `role_id_file` is required.
    #[serde(default)]
    pub role_id: Option<String>,
    /// `auth = "approle"`: file holding the role id. No default.
    #[serde(default)]
    pub role_id_file: Option<PathBuf>,
    /// `auth = "approle"`: file holding the secret id, read at every login. No default; this or
    /// `secret_id_env` is required.
    #[serde(default)]
    pub secret_id_file: Option<PathBuf>,
    /// `auth = "approle"`: env var holding the secret id. No default.
    #[serde(default)]
    pub secret_id_env: Option<String>,
    /// Refused: a secret id never goes inline in the config (see [`InlineSecretId`]).
    #[serde(default, skip_serializing)]
    pub secret_id: Option<InlineSecretId>,
    /// `auth = "approle"`: where the AppRole auth method is mounted. Default `"approle"`.
    #[serde(default = "default_approle_mount")]
    pub approle_mount: String,
    /// Vault Enterprise / OpenBao namespace (e.g. `"team-a"` or `"org/team-a"`), sent as
    /// `X-Vault-Namespace` on every request. Default: none (the root namespace).
    #[serde(default)]
    pub namespace: Option<String>,
    /// PEM file with the CA certificate(s) that signed Vault's TLS certificate, trusted in
    /// addition to the built-in roots. `https` only. Default: none.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The name Vault's TLS certificate is checked against, when it differs from the host in
    /// `address` (e.g. address `https://10.0.0.5:8200`, certificate for `vault.internal`).
    /// `https` only. Default: the host of `address`.
    #[serde(default)]
    pub tls_server_name: Option<String>,
    /// KV mount, default `"secret"`.
    #[serde(default = "default_mount")]
    pub mount: String,
    /// KV engine version: 1 or 2, default 2.
    #[serde(default = "default_kv_version")]
    pub kv_version: u8,
}

fn default_mount() -> String {
    "secret".to_string()
}

fn default_approle_mount() -> String {
    "approle".to_string()
}

fn default_kv_version() -> u8 {
    2
}

/// Where the token is read from (`auth = "token"`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum TokenSource {
    Env(String),
    File(PathBuf),
}

/// Where the role id comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RoleId {
    Inline(String),
    File(PathBuf),
}

/// Where the secret id comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SecretIdSource {
    File(PathBuf),
    Env(String),
}

/// AppRole credentials: where to read them (never the secret id itself).
#[derive(Debug, Clone, PartialEq, Eq)]
struct AppRole {
    role_id: RoleId,
    secret_id: SecretIdSource,
    /// `auth/{mount...}/login`.
    mount: Vec<String>,
}

/// How the backend gets its token.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Auth {
    Token(TokenSource),
    AppRole(AppRole),
}

/// Problems with a `/`-separated mount or namespace path; `None` when it is fine.
fn path_problem(value: &str) -> Option<&'static str> {
    let trimmed = value.trim_matches('/');
    if trimmed.is_empty() {
        Some("is empty")
    } else if trimmed
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == ".." || s.trim() != s)
    {
        Some("has an empty, `.` or `..` segment, or spaces around a segment")
    } else {
        None
    }
}

/// True for a DNS name (letters, digits, `-`, dot-separated labels), not an IP address.
fn is_dns_name(name: &str) -> bool {
    name.parse::<IpAddr>().is_err()
        && !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Reads a PEM file of CA certificates; the error says what is wrong (never the content).
fn load_ca(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let hint = "give the PEM file (`-----BEGIN CERTIFICATE-----`) of the CA that signed Vault's \
                TLS certificate";
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("cannot read `{}` ({e}): {hint}", path.display()))?;
    if !meta.is_file() {
        return Err(format!(
            "`{}` is not a regular file: {hint}",
            path.display()
        ));
    }
    if meta.len() > MAX_BODY as u64 {
        return Err(format!(
            "`{}` is larger than 16 MiB: {hint}",
            path.display()
        ));
    }
    let pem = std::fs::read(path)
        .map_err(|e| format!("cannot read `{}` ({e}): {hint}", path.display()))?;
    if !pem
        .windows(b"-----BEGIN CERTIFICATE-----".len())
        .any(|w| w == b"-----BEGIN CERTIFICATE-----")
    {
        return Err(format!(
            "`{}` holds no PEM certificate: {hint}",
            path.display()
        ));
    }
    match reqwest::Certificate::from_pem_bundle(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        Ok(_) => Err(format!(
            "`{}` holds no PEM certificate: {hint}",
            path.display()
        )),
        Err(e) => Err(format!(
            "`{}` is not valid PEM ({}): {hint}",
            path.display(),
            wire::error_chain(&e)
        )),
    }
}

impl VaultConfig {
    /// Every semantic problem, each as `"PREFIX.field: what is wrong and what to do"`.
    ///
    /// Checks: address is an http(s) URL; `auth = "token"` has at most one of `token_env` /
    /// `token_file` and no AppRole fields; `auth = "approle"` has exactly one of `role_id` /
    /// `role_id_file`, exactly one of `secret_id_file` / `secret_id_env`, no token fields; a
    /// `secret_id` written inline is refused; `approle_mount`, `mount` and `namespace` are
    /// well-formed paths; `ca_file` exists and holds PEM certificates; `ca_file` and
    /// `tls_server_name` only with `https`; `kv_version` is 1 or 2; `timeout` is not zero. Reads
    /// `ca_file`, but neither the network nor any token or secret id.
    pub fn validate(&self, prefix: &str) -> Vec<String> {
        let mut errs = Vec::new();
        let url = match parse_address(&self.address) {
            Ok(url) => Some(url),
            Err(e) => {
                errs.push(format!("{prefix}.address: {e}"));
                None
            }
        };
        if self.secret_id.is_some() {
            errs.push(format!(
                "{prefix}.secret_id: an AppRole secret id must not be written in the config: put \
                 it in a file readable only by dso and set secret_id_file, or in an environment \
                 variable and set secret_id_env"
            ));
        }
        let empty_str = |v: &Option<String>| v.as_deref().is_some_and(|v| v.trim().is_empty());
        let empty_path = |v: &Option<PathBuf>| v.as_ref().is_some_and(|p| p.as_os_str().is_empty());
        match self.auth {
            AuthMethod::Token => {
                if self.token_env.is_some() && self.token_file.is_some() {
                    errs.push(format!(
                        "{prefix}.token_env: both token_env and token_file are set: keep only one \
                         of them"
                    ));
                }
                if empty_str(&self.token_env) {
                    errs.push(format!(
                        "{prefix}.token_env: is empty: name the environment variable that holds \
                         the token (e.g. \"VAULT_TOKEN\"), or remove the field"
                    ));
                }
                if empty_path(&self.token_file) {
                    errs.push(format!(
                        "{prefix}.token_file: is empty: give the path of the file holding the \
                         token, or remove the field"
                    ));
                }
                for (field, set) in [
                    ("role_id", self.role_id.is_some()),
                    ("role_id_file", self.role_id_file.is_some()),
                    ("secret_id_file", self.secret_id_file.is_some()),
                    ("secret_id_env", self.secret_id_env.is_some()),
                ] {
                    if set {
                        errs.push(format!(
                            "{prefix}.{field}: is only used with auth = \"approle\": set auth = \
                             \"approle\" or remove the field"
                        ));
                    }
                }
            }
            AuthMethod::Approle => {
                for (field, set) in [
                    ("token_env", self.token_env.is_some()),
                    ("token_file", self.token_file.is_some()),
                ] {
                    if set {
                        errs.push(format!(
                            "{prefix}.{field}: is not used with auth = \"approle\" (the token \
                             comes from the AppRole login): remove it, or set auth = \"token\""
                        ));
                    }
                }
                match (&self.role_id, &self.role_id_file) {
                    (Some(_), Some(_)) => errs.push(format!(
                        "{prefix}.role_id: both role_id and role_id_file are set: keep only one \
                         of them"
                    )),
                    (None, None) => errs.push(format!(
                        "{prefix}.role_id: auth = \"approle\" needs the role id: set role_id (or \
                         role_id_file to read it from a file)"
                    )),
                    _ => {}
                }
                if empty_str(&self.role_id) {
                    errs.push(format!(
                        "{prefix}.role_id: is empty: give the AppRole role id (`bao read \
                         auth/approle/role/NAME/role-id`)"
                    ));
                }
                if empty_path(&self.role_id_file) {
                    errs.push(format!(
                        "{prefix}.role_id_file: is empty: give the path of the file holding the \
                         role id"
                    ));
                }
                match (&self.secret_id_file, &self.secret_id_env) {
                    (Some(_), Some(_)) => errs.push(format!(
                        "{prefix}.secret_id_file: both secret_id_file and secret_id_env are set: \
                         keep only one of them"
                    )),
                    (None, None) if self.secret_id.is_none() => errs.push(format!(
                        "{prefix}.secret_id_file: auth = \"approle\" needs the secret id: set \
                         secret_id_file (a file readable only by dso) or secret_id_env"
                    )),
                    _ => {}
                }
                if empty_path(&self.secret_id_file) {
                    errs.push(format!(
                        "{prefix}.secret_id_file: is empty: give the path of the file holding \
                         the secret id"
                    ));
                }
                if empty_str(&self.secret_id_env) {
                    errs.push(format!(
                        "{prefix}.secret_id_env: is empty: name the environment variable that \
                         holds the secret id"
                    ));
                }
                if let Some(p) = path_problem(&self.approle_mount) {
                    errs.push(format!(
                        "{prefix}.approle_mount: `{}` {p}: write the path the AppRole auth \
                         method is enabled at, e.g. \"approle\" (the default)",
                        self.approle_mount
                    ));
                }
            }
        }
        if let Some(ns) = &self.namespace {
            if let Some(p) = path_problem(ns) {
                errs.push(format!(
                    "{prefix}.namespace: `{ns}` {p}: write it like \"team-a\" or \"org/team-a\", \
                     or remove the field for the root namespace"
                ));
            } else if HeaderValue::from_str(ns.trim_matches('/')).is_err() {
                errs.push(format!(
                    "{prefix}.namespace: `{ns}` has characters not allowed in an HTTP header: \
                     use the namespace path as Vault shows it"
                ));
            }
        }
        let https = url.as_ref().map(|u| u.scheme() == "https");
        if let Some(ca) = &self.ca_file {
            if ca.as_os_str().is_empty() {
                errs.push(format!(
                    "{prefix}.ca_file: is empty: give the path of the CA's PEM file, or remove \
                     the field"
                ));
            } else if let Err(e) = load_ca(ca) {
                errs.push(format!("{prefix}.ca_file: {e}"));
            }
            if https == Some(false) {
                errs.push(format!(
                    "{prefix}.ca_file: is only used with an https address: write the address \
                     as https://… or remove ca_file"
                ));
            }
        }
        if let Some(name) = &self.tls_server_name {
            if !is_dns_name(name) {
                errs.push(format!(
                    "{prefix}.tls_server_name: `{name}` is not a DNS name: give the name Vault's \
                     certificate is issued for, e.g. \"vault.internal\""
                ));
            }
            if https == Some(false) {
                errs.push(format!(
                    "{prefix}.tls_server_name: is only used with an https address: write the \
                     address as https://… or remove tls_server_name"
                ));
            }
        }
        if !matches!(self.kv_version, 1 | 2) {
            errs.push(format!(
                "{prefix}.kv_version: must be 1 or 2 (got {}): use 2 for a KV v2 engine (the \
                 default `secret/` mount of a dev server), 1 for KV v1",
                self.kv_version
            ));
        }
        if self.mount.trim_matches('/').is_empty() {
            errs.push(format!(
                "{prefix}.mount: is empty: set the path the KV engine is mounted at, e.g. \"secret\""
            ));
        } else if path_problem(&self.mount).is_some() {
            errs.push(format!(
                "{prefix}.mount: `{}` has an empty, `.` or `..` segment: write the mount path \
                 like \"secret\" or \"team/kv\"",
                self.mount
            ));
        }
        errs
    }

    /// The authentication this (validated) config describes.
    fn auth_spec(&self) -> Auth {
        match self.auth {
            AuthMethod::Token => Auth::Token(match (&self.token_env, &self.token_file) {
                (Some(var), _) => TokenSource::Env(var.clone()),
                (None, Some(file)) => TokenSource::File(file.clone()),
                (None, None) => TokenSource::Env(DEFAULT_TOKEN_ENV.to_string()),
            }),
            AuthMethod::Approle => Auth::AppRole(AppRole {
                role_id: match (&self.role_id, &self.role_id_file) {
                    (Some(id), _) => RoleId::Inline(id.trim().to_string()),
                    (None, Some(file)) => RoleId::File(file.clone()),
                    (None, None) => RoleId::Inline(String::new()),
                },
                secret_id: match (&self.secret_id_file, &self.secret_id_env) {
                    (Some(file), _) => SecretIdSource::File(file.clone()),
                    (None, Some(var)) => SecretIdSource::Env(var.clone()),
                    (None, None) => SecretIdSource::Env(String::new()),
                },
                mount: split_path(&self.approle_mount),
            }),
        }
    }
}

fn split_path(p: &str) -> Vec<String> {
    p.trim_matches('/').split('/').map(str::to_string).collect()
}

/// Parses and checks a server address; the error says what is wrong and what to write.
fn parse_address(address: &str) -> Result<Url, String> {
    let hint = "write it like \"http://127.0.0.1:8200\" or \"https://vault.example.com\"";
    let url = Url::parse(address.trim())
        .map_err(|e| format!("`{address}` is not an http(s) URL ({e}): {hint}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "`{address}` is not an http(s) URL (scheme `{}`): {hint}",
            url.scheme()
        ));
    }
    if matches!(url.host_str(), None | Some("")) {
        return Err(format!("`{address}` has no host: {hint}"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "`{address}` has a query or fragment: give only the base URL, {hint}"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "the URL contains credentials: remove them and use token_env or token_file".into(),
        );
    }
    Ok(url)
}

/// What Vault last said about a token's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Time to live when it was reported; zero: the token never expires (e.g. a root token).
    pub ttl: Duration,
    /// The TTL a renewal grants (the role's `token_ttl`, or a periodic token's `period`). A
    /// renewal granting less means the token reached its `max_ttl`.
    pub full: Duration,
    /// Whether `renew-self` can extend it.
    pub renewable: bool,
}

/// What to do with the current token before a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Use it as it is.
    Keep,
    /// Renew it with `auth/token/renew-self`.
    Renew,
    /// Get another one: log in again (AppRole) or re-read the token file.
    Replace,
}

/// The renewal schedule: a token `age` old (since `lease` was reported) is kept for the first 2/3
/// of its TTL, then renewed when renewable, else replaced; once the TTL has passed it is replaced
/// (renewing an expired token cannot work). A TTL of zero never expires.
pub fn next_step(lease: Lease, age: Duration) -> Step {
    if lease.ttl.is_zero() {
        Step::Keep
    } else if age >= lease.ttl {
        Step::Replace
    } else if age < lease.ttl * 2 / 3 {
        Step::Keep
    } else if lease.renewable {
        Step::Renew
    } else {
        Step::Replace
    }
}

/// The lease after a renewal granted `ttl`: a renewal that granted less than a full TTL hit the
/// token's `max_ttl`, so the next step will be a replacement instead of another renewal.
pub fn after_renewal(old: Lease, ttl: Duration, renewable: bool) -> Lease {
    Lease {
        ttl,
        full: old.full,
        renewable: renewable && ttl >= old.full,
    }
}

/// Identity of a token file on disk, to notice that it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

fn file_stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
    })
}

/// The current token and what is known about it. Guarded by one async mutex so that concurrent
/// requests share one login / renewal.
struct AuthState {
    /// `None` until the first request.
    token: Option<Zeroizing<String>>,
    /// `None`: lifetime unknown or not managed (env token, lookup failed): never renewed.
    lease: Option<Lease>,
    /// When `lease` was reported.
    since: Instant,
    /// Bumped whenever the token changes, so a request that saw a 403 with an old token does not
    /// replace a token another request already replaced.
    generation: u64,
    /// Token file only: its identity when last read.
    stamp: Option<FileStamp>,
}

/// Resolves `tls_server_name` to the host of `address`, so the certificate is checked against
/// that name while the connection goes to the configured host.
struct PinnedResolver {
    /// The host of `address` (IP literal or DNS name).
    host: String,
}

impl reqwest::dns::Resolve for PinnedResolver {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = self.host.clone();
        Box::pin(async move {
            if let Ok(ip) = host.parse::<IpAddr>() {
                let addrs: reqwest::dns::Addrs = Box::new(std::iter::once(SocketAddr::new(ip, 0)));
                return Ok(addrs);
            }
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let addrs: reqwest::dns::Addrs = Box::new(found.into_iter());
            Ok(addrs)
        })
    }
}

/// A response and the token it was sent with (to scrub it out of error texts).
struct Authed {
    resp: reqwest::Response,
    token: Zeroizing<String>,
}

/// A Vault/OpenBao KV backend. Its `Debug` output never shows the token or secret id.
pub struct VaultBackend {
    /// The one HTTP client (rustls, timeouts, optional private CA).
    client: reqwest::Client,
    /// `address`, with the host replaced by `tls_server_name` when set.
    base: Url,
    /// The configured address, for messages.
    address: String,
    auth: Auth,
    namespace: Option<HeaderValue>,
    mount: Vec<String>,
    kv_version: u8,
    timeout: Duration,
    state: tokio::sync::Mutex<AuthState>,
}

impl fmt::Debug for VaultBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultBackend")
            .field("address", &self.address)
            .field("token", &"[redacted]")
            .field("auth", &self.auth.describe())
            .field("namespace", &self.namespace)
            .field("mount", &self.mount.join("/"))
            .field("kv_version", &self.kv_version)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl VaultBackend {
    /// Builds the HTTP client (rustls, timeout, `ca_file`, `tls_server_name`) and checks the
    /// credentials can be read: the token (env var or file) for `auth = "token"`; the role id
    /// and secret id for `auth = "approle"` (the login itself happens at the first request).
    ///
    /// An invalid config (see [`VaultConfig::validate`]), or a missing, unreadable or empty
    /// credential, is a [`BackendError::Config`] naming the field, variable or file (never the
    /// value).
    pub fn new(cfg: &VaultConfig, timeout: Duration) -> Result<Self, BackendError> {
        let problems = cfg.validate("vault");
        if !problems.is_empty() {
            return Err(BackendError::Config(problems.join("; ")));
        }
        let mut base = parse_address(&cfg.address).map_err(BackendError::Config)?;
        let auth = cfg.auth_spec();
        let state = AuthState {
            token: None,
            lease: None,
            since: Instant::now(),
            generation: 0,
            stamp: None,
        };
        match &auth {
            // Read now so that a missing credential is a Config error at start-up; used (and
            // re-read) at the first request.
            Auth::Token(source) => drop(read_token(source)?),
            Auth::AppRole(ar) => {
                drop(ar.read_role_id()?);
                drop(ar.read_secret_id()?);
            }
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("dso/", env!("CARGO_PKG_VERSION")))
            .redirect(redirect_policy());
        if let Some(ca) = &cfg.ca_file {
            for cert in
                load_ca(ca).map_err(|e| BackendError::Config(format!("vault.ca_file: {e}")))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some(name) = &cfg.tls_server_name {
            let host = base
                .host_str()
                .unwrap_or_default()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            base.set_host(Some(name)).map_err(|e| {
                BackendError::Config(format!("vault.tls_server_name: `{name}`: {e}"))
            })?;
            builder = builder.dns_resolver(Arc::new(PinnedResolver { host }));
        }
        let client = builder.build().map_err(|e| {
            BackendError::Config(format!(
                "cannot build the HTTP client: {}{}",
                wire::error_chain(&e),
                if cfg.ca_file.is_some() {
                    " (check that ca_file holds valid PEM certificates)"
                } else {
                    ""
                }
            ))
        })?;
        let namespace = match &cfg.namespace {
            Some(ns) => Some(HeaderValue::from_str(ns.trim_matches('/')).map_err(|_| {
                BackendError::Config(format!(
                    "vault.namespace: `{ns}` has characters not allowed in an HTTP header"
                ))
            })?),
            None => None,
        };
        Ok(Self {
            client,
            base,
            address: cfg.address.trim().to_string(),
            auth,
            namespace,
            mount: split_path(&cfg.mount),
            kv_version: cfg.kv_version,
            timeout,
            state: tokio::sync::Mutex::new(state),
        })
    }

    /// The KV v2 `current_version` of `path` (from `{mount}/metadata/{path}`); `None` for KV v1,
    /// which has no versions. Lets a caller notice a rotation without fetching the secret.
    pub async fn current_version(&self, path: &str) -> Result<Option<u64>, BackendError> {
        if self.kv_version == 1 {
            return Ok(None);
        }
        let url = self.url(&["metadata"], path)?;
        let Authed { resp, token } = self.get(url).await?;
        let status = resp.status();
        if status != StatusCode::OK {
            return Err(self.status_error(resp, path, &token).await);
        }
        let body = self.read_body(resp, MAX_BODY).await?;

        #[derive(Deserialize)]
        struct Metadata {
            data: Option<MetadataData>,
        }
        #[derive(Deserialize)]
        struct MetadataData {
            current_version: Option<u64>,
        }
        let meta: Metadata = serde_json::from_slice(&body).map_err(|e| self.decode_error(&e))?;
        match meta.data.and_then(|d| d.current_version) {
            Some(v) => Ok(Some(v)),
            None => Err(BackendError::Unavailable(format!(
                "Vault at {} answered the metadata of `{path}` without data.current_version",
                self.address
            ))),
        }
    }

    /// `{base}/v1/{mount}/{infix...}/{path}`, each segment percent-encoded.
    fn url(&self, infix: &[&str], path: &str) -> Result<Url, BackendError> {
        let path = path.trim_matches('/');
        if path.is_empty()
            || path
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(BackendError::Config(format!(
                "secret path `{path}` is invalid: it must be non-empty, without empty, `.` or \
                 `..` segments"
            )));
        }
        self.url_raw(
            self.mount
                .iter()
                .map(String::as_str)
                .chain(infix.iter().copied())
                .chain(path.split('/')),
        )
    }

    /// `{base}/v1/{segments...}`.
    fn url_raw<'a>(&self, segments: impl Iterator<Item = &'a str>) -> Result<Url, BackendError> {
        let mut url = self.base.clone();
        {
            let mut segs = url.path_segments_mut().map_err(|()| {
                BackendError::Config(format!("`{}` cannot be a base URL", self.address))
            })?;
            segs.pop_if_empty().push("v1").extend(segments);
        }
        Ok(url)
    }

    /// Sends one request with the namespace header and, when given, the token.
    async fn send(
        &self,
        method: Method,
        url: Url,
        token: Option<&str>,
        body: Option<bytes::Bytes>,
    ) -> Result<reqwest::Response, BackendError> {
        let mut req = self.client.request(method, url);
        if let Some(ns) = &self.namespace {
            req = req.header("X-Vault-Namespace", ns.clone());
        }
        if let Some(token) = token {
            let mut value = HeaderValue::from_str(token).map_err(|_| {
                BackendError::Config(format!(
                    "the token from {} contains characters not allowed in an HTTP header",
                    self.auth.describe()
                ))
            })?;
            value.set_sensitive(true);
            req = req.header("X-Vault-Token", value);
        }
        if let Some(body) = body {
            req = req.header(CONTENT_TYPE, "application/json").body(body);
        }
        req.send().await.map_err(|e| self.transport_error(&e))
    }

    /// Sends an authenticated GET. A 401/403 answer gets one fresh token (AppRole login, or the
    /// token file re-read when it holds another token) and one retry.
    async fn get(&self, url: Url) -> Result<Authed, BackendError> {
        let (token, generation) = self.current_token().await?;
        let resp = self
            .send(Method::GET, url.clone(), Some(&token), None)
            .await?;
        if !matches!(
            resp.status(),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        ) {
            return Ok(Authed { resp, token });
        }
        match self.fresh_token(generation).await? {
            Some(fresh) => {
                drop(resp);
                let resp = self.send(Method::GET, url, Some(&fresh), None).await?;
                Ok(Authed { resp, token: fresh })
            }
            None => Ok(Authed { resp, token }),
        }
    }

    /// The token to use now: obtained at the first request, re-read when the token file
    /// changed, renewed or replaced as [`next_step`] says.
    async fn current_token(&self) -> Result<(Zeroizing<String>, u64), BackendError> {
        let mut st = self.state.lock().await;
        if let Auth::Token(TokenSource::File(path)) = &self.auth {
            if st.token.is_some() && file_stamp(path) != st.stamp {
                self.replace_token(&mut st, "the token file changed on disk")
                    .await?;
            }
        }
        match &st.token {
            None => {
                self.replace_token(&mut st, "first request").await?;
            }
            Some(token) => {
                let step = st
                    .lease
                    .map_or(Step::Keep, |l| next_step(l, st.since.elapsed()));
                match step {
                    Step::Keep => {}
                    Step::Renew => {
                        let token = token.clone();
                        match self.renew(&token).await {
                            Ok((ttl, renewable)) => {
                                let old = st.lease.unwrap_or(Lease {
                                    ttl,
                                    full: ttl,
                                    renewable,
                                });
                                let lease = after_renewal(old, ttl, renewable);
                                tracing::debug!(
                                    address = %self.address,
                                    auth = %self.auth.describe(),
                                    ttl_secs = ttl.as_secs(),
                                    renewable = lease.renewable,
                                    "vault token renewed"
                                );
                                st.lease = Some(lease);
                                st.since = Instant::now();
                            }
                            Err(BackendError::Denied(e)) => {
                                tracing::info!(
                                    address = %self.address,
                                    error = %e,
                                    "vault token renewal refused; getting a new token"
                                );
                                self.replace_token(&mut st, "the renewal was refused")
                                    .await?;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    Step::Replace => {
                        self.replace_token(&mut st, "the token is about to expire")
                            .await?;
                    }
                }
            }
        }
        match &st.token {
            Some(t) => Ok((t.clone(), st.generation)),
            None => Err(BackendError::Unavailable(format!(
                "no token for Vault at {} after authenticating",
                self.address
            ))),
        }
    }

    /// After a 401/403 with the token of `generation`: a token another request already got, or
    /// a fresh one (AppRole login, or the token file re-read), or `None` when there is no other
    /// token to try (env token, unchanged file).
    async fn fresh_token(
        &self,
        generation: u64,
    ) -> Result<Option<Zeroizing<String>>, BackendError> {
        let mut st = self.state.lock().await;
        if st.generation == generation {
            if matches!(self.auth, Auth::Token(TokenSource::Env(_))) {
                return Ok(None);
            }
            if !self
                .replace_token(&mut st, "Vault refused the current token")
                .await?
            {
                return Ok(None);
            }
        }
        Ok(st.token.clone())
    }

    /// Gets a token: reads the env var, re-reads the token file, or logs in with AppRole. True
    /// when the token changed.
    async fn replace_token(&self, st: &mut AuthState, why: &str) -> Result<bool, BackendError> {
        match &self.auth {
            Auth::Token(source) => {
                if let TokenSource::File(path) = source {
                    st.stamp = file_stamp(path);
                }
                let token = read_token(source)?;
                if st.token.as_ref().is_some_and(|old| **old == *token) {
                    // Nothing new to try: stop scheduling and let Vault's answers speak.
                    st.lease = None;
                    if let TokenSource::File(path) = source {
                        tracing::debug!(
                            file = %path.display(),
                            reason = why,
                            "vault token file unchanged; keeping its token"
                        );
                    }
                    return Ok(false);
                }
                st.lease = None;
                st.since = Instant::now();
                if let TokenSource::File(path) = source {
                    if st.token.is_some() {
                        tracing::info!(
                            address = %self.address,
                            file = %path.display(),
                            reason = why,
                            "vault token re-read from its file"
                        );
                    }
                    // The lifetime is known only for managed (file) tokens.
                    st.lease = self.lookup_self(&token).await?;
                }
                st.token = Some(token);
                st.generation += 1;
                Ok(true)
            }
            Auth::AppRole(ar) => {
                let (token, lease) = self.login(ar).await?;
                tracing::info!(
                    address = %self.address,
                    mount = %ar.mount.join("/"),
                    reason = why,
                    ttl_secs = lease.ttl.as_secs(),
                    renewable = lease.renewable,
                    "vault: logged in with AppRole"
                );
                st.token = Some(token);
                st.lease = Some(lease);
                st.since = Instant::now();
                st.generation += 1;
                Ok(true)
            }
        }
    }

    /// `POST auth/{approle_mount}/login`: a new token and its lease.
    async fn login(&self, ar: &AppRole) -> Result<(Zeroizing<String>, Lease), BackendError> {
        let role_id = ar.read_role_id()?;
        let secret_id = ar.read_secret_id()?;
        #[derive(Serialize)]
        struct Login<'a> {
            role_id: &'a str,
            secret_id: &'a str,
        }
        let body = Zeroizing::new(
            serde_json::to_vec(&Login {
                role_id: &role_id,
                secret_id: &secret_id,
            })
            .map_err(|_| {
                BackendError::Config("cannot encode the AppRole login request".to_string())
            })?,
        );
        let login_path = format!("auth/{}/login", ar.mount.join("/"));
        let url = self.url_raw(
            ["auth"]
                .into_iter()
                .chain(ar.mount.iter().map(String::as_str))
                .chain(["login"]),
        )?;
        let resp = self
            .send(
                Method::POST,
                url,
                None,
                Some(bytes::Bytes::from_owner(body)),
            )
            .await?;
        let status = resp.status();
        if status != StatusCode::OK {
            let detail = match self.read_body(resp, MAX_ERROR_BODY).await {
                Ok(body) => self.vault_errors(&body, &[&role_id, &secret_id]),
                Err(_) => String::new(),
            };
            let detail = if detail.is_empty() {
                String::new()
            } else {
                format!(": {detail}")
            };
            return Err(match status {
                StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    BackendError::Denied(format!(
                        "Vault at {} refused the AppRole login at {login_path} (HTTP {}{detail}) \
                         with the role id from {} and the secret id from {}: check both, and \
                         that the secret id has not expired or been used up",
                        self.address,
                        status.as_u16(),
                        ar.role_id.describe(),
                        ar.secret_id.describe(),
                    ))
                }
                StatusCode::NOT_FOUND => BackendError::Config(format!(
                    "Vault at {} has no AppRole auth at {login_path} (HTTP 404{detail}): check \
                     approle_mount (and namespace)",
                    self.address
                )),
                _ => BackendError::Unavailable(format!(
                    "Vault at {} answered HTTP {status} to the AppRole login at \
                     {login_path}{detail}",
                    self.address
                )),
            });
        }
        drop(role_id);
        drop(secret_id);
        let body = self.read_body(resp, MAX_BODY).await?;
        self.parse_auth(&body, &login_path)
    }

    /// `POST auth/token/renew-self`: the TTL granted and whether it stays renewable.
    async fn renew(&self, token: &str) -> Result<(Duration, bool), BackendError> {
        let url = self.url_raw(["auth", "token", "renew-self"].into_iter())?;
        let resp = self
            .send(
                Method::POST,
                url,
                Some(token),
                Some(bytes::Bytes::from_static(b"{}")),
            )
            .await?;
        if resp.status() != StatusCode::OK {
            return Err(self
                .status_error(resp, "auth/token/renew-self", token)
                .await);
        }
        let body = self.read_body(resp, MAX_BODY).await?;
        let (renewed, lease) = self.parse_auth(&body, "auth/token/renew-self")?;
        drop(renewed);
        Ok((lease.ttl, lease.renewable))
    }

    /// The `auth` block of a login or renewal answer.
    fn parse_auth(
        &self,
        body: &[u8],
        what: &str,
    ) -> Result<(Zeroizing<String>, Lease), BackendError> {
        #[derive(Deserialize)]
        struct Answer {
            auth: Option<AuthInfo>,
        }
        #[derive(Deserialize)]
        struct AuthInfo {
            client_token: String,
            #[serde(default)]
            lease_duration: u64,
            #[serde(default)]
            renewable: bool,
        }
        let answer: Answer = serde_json::from_slice(body).map_err(|e| self.decode_error(&e))?;
        let Some(info) = answer.auth else {
            return Err(BackendError::Unavailable(format!(
                "Vault at {} answered {what} without an auth block",
                self.address
            )));
        };
        let token = Zeroizing::new(info.client_token);
        if token.is_empty() || HeaderValue::from_str(&token).is_err() {
            return Err(BackendError::Unavailable(format!(
                "Vault at {} answered {what} without a usable client_token",
                self.address
            )));
        }
        let ttl = Duration::from_secs(info.lease_duration);
        Ok((
            token,
            Lease {
                ttl,
                full: ttl,
                renewable: info.renewable,
            },
        ))
    }

    /// `GET auth/token/lookup-self`: the lifetime of `token` (`None` when Vault does not say or
    /// refuses); only a failure to reach Vault is an error.
    async fn lookup_self(&self, token: &str) -> Result<Option<Lease>, BackendError> {
        let url = self.url_raw(["auth", "token", "lookup-self"].into_iter())?;
        let resp = self.send(Method::GET, url, Some(token), None).await?;
        if resp.status() != StatusCode::OK {
            // Not allowed to look itself up, or not a token at all: the request will tell.
            tracing::debug!(
                address = %self.address,
                status = resp.status().as_u16(),
                "vault token lookup-self failed; its lifetime is unknown and it is not renewed"
            );
            return Ok(None);
        }
        // The body describes the token (including its id): only the lifetime fields are parsed
        // and the buffer is wiped.
        let body = self.read_body(resp, MAX_BODY).await?;
        #[derive(Deserialize)]
        struct Answer {
            data: Option<Data>,
        }
        #[derive(Deserialize)]
        struct Data {
            #[serde(default)]
            ttl: Option<u64>,
            #[serde(default)]
            creation_ttl: Option<u64>,
            #[serde(default)]
            period: Option<u64>,
            #[serde(default)]
            renewable: Option<bool>,
        }
        let Ok(Answer { data: Some(d) }) = serde_json::from_slice::<Answer>(&body) else {
            return Ok(None);
        };
        let ttl = Duration::from_secs(d.ttl.unwrap_or(0));
        let full = Duration::from_secs(d.period.filter(|p| *p > 0).or(d.creation_ttl).unwrap_or(0))
            .max(ttl);
        Ok(Some(Lease {
            ttl,
            full,
            renewable: d.renewable.unwrap_or(false),
        }))
    }
    /// Reads at most `limit` bytes of body into a buffer that is zeroed when dropped.
    async fn read_body(
        &self,
        resp: reqwest::Response,
        limit: usize,
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        wire::read_bounded(resp, limit).await.map_err(|e| match e {
            wire::BodyError::TooBig => BackendError::Unavailable(format!(
                "Vault at {} sent a response larger than {} MiB; refusing it",
                self.address,
                limit / (1024 * 1024)
            )),
            wire::BodyError::Transport(e) => self.transport_error(&e),
        })
    }

    /// The error for a non-200 answer. Reads Vault's `errors` list (not secret) for context.
    /// `token` (the one the request carried) is scrubbed out of the quoted text.
    async fn status_error(&self, resp: reqwest::Response, path: &str, token: &str) -> BackendError {
        let status = resp.status();
        let detail = match self.read_body(resp, MAX_ERROR_BODY).await {
            Ok(body) => self.vault_errors(&body, &[token]),
            Err(_) => String::new(),
        };
        let detail_sfx = if detail.is_empty() {
            String::new()
        } else {
            format!(": {detail}")
        };
        match status {
            StatusCode::NOT_FOUND => {
                if detail.contains("no handler for route") || detail.contains("versioned K/V") {
                    tracing::warn!(
                        address = %self.address,
                        mount = %self.mount.join("/"),
                        kv_version = self.kv_version,
                        "Vault does not serve this path as expected: check that the provider's \
                         `mount` exists and that `kv_version` matches its KV engine"
                    );
                }
                BackendError::NotFound {
                    path: path.to_string(),
                }
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => BackendError::Denied(format!(
                "Vault at {} refused the token from {} for `{path}` (HTTP {}{detail_sfx}): the \
                 token is invalid or expired, or its policy does not allow this path",
                self.address,
                self.auth.describe(),
                status.as_u16(),
            )),
            _ => BackendError::Unavailable(format!(
                "Vault at {} answered HTTP {} for `{path}`{detail_sfx}",
                self.address, status
            )),
        }
    }

    /// Vault's `{"errors": [...]}` joined and shortened, with every credential in `scrub`
    /// replaced by `[redacted]`.
    fn vault_errors(&self, body: &[u8], scrub: &[&str]) -> String {
        #[derive(Deserialize)]
        struct Errors {
            #[serde(default)]
            errors: Vec<String>,
            #[serde(default)]
            warnings: Option<Vec<String>>,
        }
        let Ok(e) = serde_json::from_slice::<Errors>(body) else {
            return String::new();
        };
        let text = e
            .errors
            .into_iter()
            .chain(e.warnings.unwrap_or_default())
            .map(|s| s.trim().to_string())
            .collect::<Vec<_>>()
            .join("; ");
        wire::safe_text(&text, scrub, MAX_ERROR_TEXT)
    }

    fn transport_error(&self, e: &reqwest::Error) -> BackendError {
        if e.is_timeout() {
            return BackendError::Timeout(self.timeout);
        }
        let cause = wire::error_chain(e);
        let lower = cause.to_ascii_lowercase();
        let hint = if lower.contains("certificate") || lower.contains("unknownissuer") {
            " (TLS: Vault's certificate is not trusted for this name: set ca_file to the PEM \
             file of the CA that signed it, and tls_server_name when the certificate is issued \
             for another name than the address's host)"
        } else if lower.contains("tls") || lower.contains("handshake") {
            " (TLS handshake failed: check that the address uses https only when Vault serves \
             TLS, and ca_file)"
        } else {
            ""
        };
        BackendError::Unavailable(format!(
            "cannot reach Vault at {}: {cause}{hint}",
            self.address
        ))
    }

    /// A decode error without serde's text, which can quote the (secret) input.
    fn decode_error(&self, e: &serde_json::Error) -> BackendError {
        let kind = wire::json_error_kind(e);
        BackendError::Unavailable(format!(
            "Vault at {} answered with {kind} (line {}, column {})",
            self.address,
            e.line(),
            e.column()
        ))
    }
}
#[async_trait]
impl SecretBackend for VaultBackend {
    async fn fetch(&self, path: &str) -> Result<SecretData, BackendError> {
        Ok(self.fetch_versioned(path).await?.data)
    }

    /// KV v2: `GET {address}/v1/{mount}/data/{path}` (version from `data.metadata.version`);
    /// KV v1: `GET {address}/v1/{mount}/{path}` (no version).
    async fn fetch_versioned(&self, path: &str) -> Result<Fetched, BackendError> {
        let url = if self.kv_version == 1 {
            self.url(&[], path)?
        } else {
            self.url(&["data"], path)?
        };
        let Authed { resp, token } = self.get(url).await?;
        if resp.status() != StatusCode::OK {
            return Err(self.status_error(resp, path, &token).await);
        }
        drop(token);
        let body = self.read_body(resp, MAX_BODY).await?;

        #[derive(Deserialize)]
        struct Envelope {
            data: Option<serde_json::Value>,
        }
        let mut env: Envelope = serde_json::from_slice(&body).map_err(|e| self.decode_error(&e))?;
        drop(body);
        let version = match (self.kv_version, env.data.as_ref()) {
            (2, Some(serde_json::Value::Object(outer))) => outer
                .get("metadata")
                .and_then(|m| m.get("version"))
                .and_then(serde_json::Value::as_u64)
                .map(|v| v.to_string()),
            _ => None,
        };
        let result = {
            let data = match (self.kv_version, env.data.as_mut()) {
                (1, d) => d,
                // KV v2 wraps the key/values in data.data; null when the latest version is deleted.
                (_, Some(serde_json::Value::Object(outer))) => outer.get_mut("data"),
                (_, d) => d,
            };
            match data {
                Some(serde_json::Value::Object(map)) => Ok(Fetched {
                    data: SecretData::Map(take_values(map)),
                    version,
                }),
                Some(serde_json::Value::Null) => Err(BackendError::NotFound {
                    path: path.to_string(),
                }),
                _ => Err(BackendError::Unavailable(format!(
                    "Vault at {} answered `{path}` without a key/value object in its data",
                    self.address
                ))),
            }
        };
        if let Some(v) = env.data.as_mut() {
            zeroize_json(v);
        }
        result
    }

    /// KV v2: `current_version` from the metadata endpoint (no value read); KV v1: `None`.
    async fn version(&self, path: &str) -> Result<Option<String>, BackendError> {
        Ok(self.current_version(path).await?.map(|v| v.to_string()))
    }

    /// `GET {address}/v1/auth/token/lookup-self`: OK when the token is accepted (with AppRole,
    /// this logs in first).
    async fn probe(&self) -> Result<(), BackendError> {
        let url = self.url_raw(["auth", "token", "lookup-self"].into_iter())?;
        let Authed { resp, token } = self.get(url).await?;
        if resp.status() != StatusCode::OK {
            return Err(self
                .status_error(resp, "auth/token/lookup-self", &token)
                .await);
        }
        // The body describes the token (including its id): read it only to wipe it.
        let body = self.read_body(resp, MAX_BODY).await?;
        drop(body);
        Ok(())
    }
}

impl TokenSource {
    fn describe(&self) -> String {
        match self {
            TokenSource::Env(var) => format!("environment variable {var}"),
            TokenSource::File(path) => format!("token file {}", path.display()),
        }
    }
}

impl Auth {
    fn describe(&self) -> String {
        match self {
            Auth::Token(source) => source.describe(),
            Auth::AppRole(ar) => format!("the AppRole login (auth/{})", ar.mount.join("/")),
        }
    }
}

impl RoleId {
    fn describe(&self) -> String {
        match self {
            RoleId::Inline(_) => "role_id".to_string(),
            RoleId::File(path) => format!("role_id_file {}", path.display()),
        }
    }
}

impl SecretIdSource {
    fn describe(&self) -> String {
        match self {
            SecretIdSource::File(path) => format!("secret_id_file {}", path.display()),
            SecretIdSource::Env(var) => format!("environment variable {var}"),
        }
    }
}

/// Trims surrounding whitespace in place (no copy of the value is left behind).
fn trim_in_place(s: &mut Zeroizing<String>) {
    let end = s.trim_end().len();
    s.truncate(end);
    let start = s.len() - s.trim_start().len();
    s.drain(..start);
}

impl AppRole {
    /// The role id, trimmed; errors name the field or file.
    fn read_role_id(&self) -> Result<Zeroizing<String>, BackendError> {
        let id = match &self.role_id {
            RoleId::Inline(id) => Zeroizing::new(id.trim().to_string()),
            RoleId::File(path) => read_credential_file(path, "role id")?,
        };
        if id.is_empty() {
            return Err(BackendError::Config(format!(
                "{} is empty: it must hold the AppRole role id",
                self.role_id.describe()
            )));
        }
        Ok(id)
    }

    /// The secret id, trimmed; errors name the file or variable, never the value.
    fn read_secret_id(&self) -> Result<Zeroizing<String>, BackendError> {
        let id = match &self.secret_id {
            SecretIdSource::File(path) => read_credential_file(path, "secret id")?,
            SecretIdSource::Env(var) => match std::env::var(var) {
                Ok(v) => {
                    let mut v = Zeroizing::new(v);
                    trim_in_place(&mut v);
                    v
                }
                Err(std::env::VarError::NotPresent) => {
                    return Err(BackendError::Config(format!(
                        "environment variable {var} is not set: export the AppRole secret id in \
                         it, or set secret_id_file"
                    )))
                }
                Err(std::env::VarError::NotUnicode(raw)) => {
                    wire::wipe_os(raw);
                    return Err(BackendError::Config(format!(
                        "environment variable {var} is not valid UTF-8: it must hold an AppRole \
                         secret id"
                    )));
                }
            },
        };
        if id.is_empty() {
            return Err(BackendError::Config(format!(
                "{} is empty: it must hold the AppRole secret id",
                self.secret_id.describe()
            )));
        }
        Ok(id)
    }
}

/// Reads a small credential file (role id, secret id), trimmed; errors never quote it.
fn read_credential_file(path: &Path, what: &str) -> Result<Zeroizing<String>, BackendError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        BackendError::Config(format!("cannot read {what} file {}: {e}", path.display()))
    })?;
    if meta.len() > MAX_CREDENTIAL_FILE {
        return Err(BackendError::Config(format!(
            "{what} file {} is larger than 64 KiB: it must hold only the {what}",
            path.display()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| {
        BackendError::Config(format!("cannot read {what} file {}: {e}", path.display()))
    })?;
    let mut text = match String::from_utf8(bytes) {
        Ok(s) => Zeroizing::new(s),
        Err(e) => {
            e.into_bytes().zeroize();
            return Err(BackendError::Config(format!(
                "{what} file {} is not valid UTF-8",
                path.display()
            )));
        }
    };
    trim_in_place(&mut text);
    Ok(text)
}

/// Reads the token; errors name the variable or file, never the value.
fn read_token(source: &TokenSource) -> Result<Zeroizing<String>, BackendError> {
    let mut token = match source {
        TokenSource::Env(var) => match std::env::var(var) {
            Ok(v) => Zeroizing::new(v),
            Err(std::env::VarError::NotPresent) => {
                return Err(BackendError::Config(format!(
                    "environment variable {var} is not set: export the Vault token in it, or \
                     set token_env / token_file in the provider config"
                )))
            }
            Err(std::env::VarError::NotUnicode(raw)) => {
                wire::wipe_os(raw);
                return Err(BackendError::Config(format!(
                    "environment variable {var} is not valid UTF-8: it must hold a Vault token"
                )));
            }
        },
        TokenSource::File(path) => match std::fs::read(path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(s) => Zeroizing::new(s),
                Err(e) => {
                    e.into_bytes().zeroize();
                    return Err(BackendError::Config(format!(
                        "token file {} is not valid UTF-8: it must hold a Vault token",
                        path.display()
                    )));
                }
            },
            Err(e) => {
                return Err(BackendError::Config(format!(
                    "cannot read token file {}: {e}",
                    path.display()
                )))
            }
        },
    };
    let len = token.trim_end().len();
    token.truncate(len);
    if token.trim_start().is_empty() {
        return Err(BackendError::Config(format!(
            "{} is empty: it must hold a Vault token",
            source.describe()
        )));
    }
    if HeaderValue::from_str(&token).is_err() {
        return Err(BackendError::Config(format!(
            "the token in {} contains characters not allowed in an HTTP header",
            source.describe()
        )));
    }
    Ok(token)
}

/// Follows at most 5 redirects, only to the same host and never from https to http (the token
/// header travels along with a redirect).
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let downgrade = attempt.previous().iter().any(|u| u.scheme() == "https")
            && attempt.url().scheme() != "https";
        let other_host = attempt
            .previous()
            .first()
            .is_some_and(|first| first.host_str() != attempt.url().host_str());
        if attempt.previous().len() > 5 {
            attempt.error("too many redirects")
        } else if other_host {
            attempt
                .error("refusing to follow a redirect to another host (the token would go along)")
        } else if downgrade {
            attempt.error("refusing to follow a redirect from https to http")
        } else {
            attempt.follow()
        }
    })
}

/// Moves every value out of a JSON object into `SecretValue`s: strings keep their buffer,
/// other values become their JSON text. What is left behind is wiped by the caller.
fn take_values(
    map: &mut serde_json::Map<String, serde_json::Value>,
) -> BTreeMap<String, SecretValue> {
    map.iter_mut()
        .map(|(k, v)| {
            let value = match v {
                serde_json::Value::String(s) => SecretValue::new(std::mem::take(s).into_bytes()),
                other => {
                    let text = other.to_string();
                    zeroize_json(other);
                    SecretValue::new(text.into_bytes())
                }
            };
            (k.clone(), value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(30);

    fn cfg(address: &str) -> VaultConfig {
        VaultConfig {
            address: address.to_string(),
            auth: AuthMethod::Token,
            token_env: None,
            token_file: None,
            role_id: None,
            role_id_file: None,
            secret_id_file: None,
            secret_id_env: None,
            secret_id: None,
            approle_mount: default_approle_mount(),
            namespace: None,
            ca_file: None,
            tls_server_name: None,
            mount: default_mount(),
            kv_version: 2,
        }
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        let c: VaultConfig = toml::from_str(r#"address = "http://127.0.0.1:8200""#).unwrap();
        assert_eq!(c, cfg("http://127.0.0.1:8200"));
        assert_eq!(
            c.auth_spec(),
            Auth::Token(TokenSource::Env("VAULT_TOKEN".into()))
        );
        let c: VaultConfig = toml::from_str(
            r#"
            address = "https://vault.example.com"
            token_file = "/run/token"
            mount = "kv"
            kv_version = 1
            "#,
        )
        .unwrap();
        assert_eq!(
            c.auth_spec(),
            Auth::Token(TokenSource::File("/run/token".into()))
        );
        assert!(c.validate("p").is_empty());
        let back: VaultConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        let err = toml::from_str::<VaultConfig>("address = \"http://x\"\ntokn = \"a\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tokn"), "{err}");
        assert!(toml::from_str::<VaultConfig>(r#"mount = "x""#).is_err());
    }

    #[test]
    fn validate_reports_every_problem() {
        assert!(cfg("http://127.0.0.1:8200").validate("p").is_empty());
        assert!(cfg("https://vault.example.com/prefix/")
            .validate("p")
            .is_empty());
        let mut c = cfg("127.0.0.1:8200");
        c.token_env = Some("T".into());
        c.token_file = Some("/t".into());
        c.kv_version = 3;
        c.mount = "/".into();
        let errs = c.validate("providers.vault");
        assert_eq!(errs.len(), 4, "{errs:#?}");
        for (e, field) in errs
            .iter()
            .zip(["address", "token_env", "kv_version", "mount"])
        {
            assert!(
                e.starts_with(&format!("providers.vault.{field}: ")),
                "{e} should be about {field}"
            );
        }
        for bad in [
            "ftp://h",
            "http://",
            "http://h?x=1",
            "http://u:p@h",
            "not a url",
        ] {
            let errs = cfg(bad).validate("p");
            assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
            assert!(errs[0].starts_with("p.address: "), "{errs:?}");
        }
        let mut c = cfg("http://h");
        c.mount = "a//b".into();
        assert_eq!(c.validate("p").len(), 1);
        c.mount = "".into();
        c.token_env = Some(" ".into());
        assert_eq!(c.validate("p").len(), 2);
    }

    #[test]
    fn new_refuses_invalid_config_and_missing_token() {
        let mut c = cfg("nope");
        c.token_env = Some("DSO_VAULT_UNIT_TEST_SURELY_UNSET".into());
        let err = VaultBackend::new(&c, T).unwrap_err();
        assert!(
            matches!(&err, BackendError::Config(m) if m.contains("vault.address")),
            "{err}"
        );
        let mut c = cfg("http://127.0.0.1:1");
        c.token_env = Some("DSO_VAULT_UNIT_TEST_SURELY_UNSET".into());
        let err = VaultBackend::new(&c, T).unwrap_err();
        assert!(
            matches!(&err, BackendError::Config(m) if m.contains("DSO_VAULT_UNIT_TEST_SURELY_UNSET")),
            "{err}"
        );
    }

    #[test]
    fn token_file_is_trimmed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s.abc123 \n\n").unwrap();
        let src = TokenSource::File(file.clone());
        assert_eq!(read_token(&src).unwrap().as_str(), "s.abc123");
        std::fs::write(&file, " \n").unwrap();
        let err = read_token(&src).unwrap_err().to_string();
        assert!(err.contains("empty") && err.contains("token"), "{err}");
        std::fs::write(&file, "a\nb\n").unwrap();
        let err = read_token(&src).unwrap_err().to_string();
        assert!(
            err.contains("not allowed") && !err.contains("a\nb"),
            "{err}"
        );
        let missing = TokenSource::File(dir.path().join("missing"));
        let err = read_token(&missing).unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
    }

    fn backend(address: &str, token: &str) -> (VaultBackend, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, token).unwrap();
        let mut c = cfg(address);
        c.token_file = Some(file);
        (VaultBackend::new(&c, Duration::from_secs(5)).unwrap(), dir)
    }

    #[test]
    fn debug_hides_token_and_urls_are_encoded() {
        let (b, _d) = backend("http://127.0.0.1:8200/base/", "s.topsecret");
        let shown = format!("{b:?}");
        assert!(!shown.contains("topsecret"), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
        assert_eq!(
            b.url(&["data"], "app/db x").unwrap().as_str(),
            "http://127.0.0.1:8200/base/v1/secret/data/app/db%20x"
        );
        for bad in ["", "a/../b", "a//b", "./a"] {
            assert!(
                matches!(b.url(&["data"], bad), Err(BackendError::Config(_))),
                "{bad}"
            );
        }
    }

    /// A one-shot HTTP server answering every connection with `response`.
    async fn canned(response: Vec<u8>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let response = response.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = sock.write_all(&response).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        format!("http://{addr}")
    }

    fn http(status: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn server_errors_and_garbage_are_unavailable() {
        let token = "s.never-shown";
        for (resp, what) in [
            (
                http(
                    "503 Service Unavailable",
                    r#"{"errors":["Vault is sealed"]}"#,
                ),
                "sealed",
            ),
            (http("200 OK", "{not json"), "invalid JSON"),
            (
                http("200 OK", r#"{"data":{"data":"a string"}}"#),
                "key/value object",
            ),
            (
                http("200 OK", r#"{"data":"secret-ish string"}"#),
                "key/value object",
            ),
            (http("200 OK", r#"{"dat":{}}"#), "key/value object"),
            (
                http("200 OK", r#"{"data":{"data":{"a":"x"}"#),
                "truncated JSON",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 17000000\r\n\r\n".to_vec(),
                "larger than 16 MiB",
            ),
        ] {
            let addr = canned(resp).await;
            let (b, _d) = backend(&addr, token);
            let err = b.fetch("app/x").await.unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(err, BackendError::Unavailable(_)),
                "{what}: {err:?}"
            );
            assert!(msg.contains(what) && msg.contains(&addr), "{what}: {msg}");
            assert!(!msg.contains(token) && !msg.contains("secret-ish"), "{msg}");
        }
    }

    #[tokio::test]
    async fn values_are_mapped_and_deleted_is_not_found() {
        let body =
            r#"{"data":{"data":{"s":"v","n":5,"b":true,"o":{"x":[1]},"z":null},"metadata":{}}}"#;
        let (b, _d) = backend(&canned(http("200 OK", body)).await, "t");
        let SecretData::Map(m) = b.fetch("p").await.unwrap() else {
            panic!("expected a map")
        };
        let got: Vec<(&str, &[u8])> = m.iter().map(|(k, v)| (k.as_str(), v.expose())).collect();
        assert_eq!(
            got,
            [
                ("b", &b"true"[..]),
                ("n", b"5"),
                ("o", br#"{"x":[1]}"#),
                ("s", b"v"),
                ("z", b"null")
            ]
        );
        let (b, _d) = backend(
            &canned(http("200 OK", r#"{"data":{"data":null,"metadata":{}}}"#)).await,
            "t",
        );
        assert_eq!(
            b.fetch("gone").await.unwrap_err(),
            BackendError::NotFound {
                path: "gone".into()
            }
        );
    }

    fn approle_cfg(dir: &Path) -> VaultConfig {
        let role = dir.join("role-id");
        let secret = dir.join("secret-id");
        std::fs::write(&role, "role-123\n").unwrap();
        std::fs::write(&secret, "s3cret-id-never-shown\n").unwrap();
        let mut c = cfg("http://127.0.0.1:8200");
        c.auth = AuthMethod::Approle;
        c.role_id_file = Some(role);
        c.secret_id_file = Some(secret);
        c
    }

    #[test]
    fn approle_config_parses_and_validates() {
        let c: VaultConfig = toml::from_str(
            r#"
            address = "https://vault.example.com"
            auth = "approle"
            role_id = "r-1"
            secret_id_env = "DSO_SECRET_ID"
            approle_mount = "team/approle"
            namespace = "org/team-a"
            tls_server_name = "vault.internal"
            "#,
        )
        .unwrap();
        assert!(c.validate("p").is_empty(), "{:?}", c.validate("p"));
        assert_eq!(
            c.auth_spec(),
            Auth::AppRole(AppRole {
                role_id: RoleId::Inline("r-1".into()),
                secret_id: SecretIdSource::Env("DSO_SECRET_ID".into()),
                mount: vec!["team".into(), "approle".into()],
            })
        );
        let back: VaultConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        let err = toml::from_str::<VaultConfig>("address = \"http://x\"\nauth = \"ldap\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ldap") && err.contains("approle"), "{err}");
    }

    #[test]
    fn inline_secret_id_is_refused_and_never_kept() {
        let c: VaultConfig = toml::from_str(
            r#"
            address = "http://127.0.0.1:8200"
            auth = "approle"
            role_id = "r-1"
            secret_id = "inline-secret-value"
            "#,
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("inline-secret-value"));
        assert!(!toml::to_string(&c).unwrap().contains("inline-secret-value"));
        let errs = c.validate("providers.v");
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(
            errs[0].starts_with("providers.v.secret_id: ")
                && errs[0].contains("secret_id_file")
                && !errs[0].contains("inline-secret-value"),
            "{errs:?}"
        );
        let err = VaultBackend::new(&c, T).unwrap_err().to_string();
        assert!(err.contains("secret_id") && !err.contains("inline-secret-value"));
    }

    #[test]
    fn validate_reports_auth_problems_by_field() {
        let fields = |c: &VaultConfig| -> Vec<String> {
            c.validate("p")
                .iter()
                .map(|e| e.split(':').next().unwrap().to_string())
                .collect()
        };
        // AppRole without credentials, with token fields, bad mount.
        let mut c = cfg("http://h");
        c.auth = AuthMethod::Approle;
        c.token_file = Some("/t".into());
        c.approle_mount = "a/../b".into();
        assert_eq!(
            fields(&c),
            [
                "p.token_file",
                "p.role_id",
                "p.secret_id_file",
                "p.approle_mount"
            ]
        );
        // Both of each pair, and empty values.
        let mut c = cfg("http://h");
        c.auth = AuthMethod::Approle;
        c.role_id = Some(" ".into());
        c.role_id_file = Some("/r".into());
        c.secret_id_file = Some("".into());
        c.secret_id_env = Some("X".into());
        assert_eq!(
            fields(&c),
            [
                "p.role_id",
                "p.role_id",
                "p.secret_id_file",
                "p.secret_id_file"
            ]
        );
        // AppRole fields with token auth.
        let mut c = cfg("http://h");
        c.role_id = Some("r".into());
        c.secret_id_env = Some("S".into());
        assert_eq!(fields(&c), ["p.role_id", "p.secret_id_env"]);
        // Namespace and TLS fields.
        let mut c = cfg("http://h");
        c.namespace = Some("a//b".into());
        c.tls_server_name = Some("not a name".into());
        c.ca_file = Some("/nonexistent/dso-ca.pem".into());
        assert_eq!(
            fields(&c),
            [
                "p.namespace",
                "p.ca_file",
                "p.ca_file",
                "p.tls_server_name",
                "p.tls_server_name"
            ]
        );
        let mut c = cfg("https://h");
        c.namespace = Some("/team-a/".into());
        c.tls_server_name = Some("127.0.0.1".into());
        assert_eq!(fields(&c), ["p.tls_server_name"]);
        c.tls_server_name = Some("vault.internal".into());
        assert!(c.validate("p").is_empty());
    }

    #[test]
    fn ca_file_must_exist_and_hold_pem() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg("https://vault.example.com");
        c.ca_file = Some(dir.path().join("missing.pem"));
        let errs = c.validate("providers.v");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("providers.v.ca_file: cannot read")
                && errs[0].contains("missing.pem")
                && errs[0].contains("PEM"),
            "{errs:?}"
        );
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "this is not a certificate\n").unwrap();
        c.ca_file = Some(garbage);
        let errs = c.validate("providers.v");
        assert!(
            errs.len() == 1 && errs[0].contains("holds no PEM certificate"),
            "{errs:?}"
        );
        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        c.ca_file = Some(broken);
        let errs = c.validate("providers.v");
        assert!(
            errs.len() == 1 && errs[0].starts_with("providers.v.ca_file: "),
            "{errs:?}"
        );
        c.ca_file = Some(dir.path().to_path_buf());
        assert!(c.validate("providers.v")[0].contains("not a regular file"));
    }

    #[test]
    fn renewal_schedule() {
        let s = Duration::from_secs;
        let lease = Lease {
            ttl: s(30),
            full: s(30),
            renewable: true,
        };
        assert_eq!(next_step(lease, s(0)), Step::Keep);
        assert_eq!(next_step(lease, s(19)), Step::Keep);
        assert_eq!(next_step(lease, s(20)), Step::Renew);
        assert_eq!(next_step(lease, s(29)), Step::Renew);
        // Expired: renewing cannot work any more.
        assert_eq!(next_step(lease, s(30)), Step::Replace);
        assert_eq!(next_step(lease, s(3600)), Step::Replace);
        // Not renewable: replaced at 2/3 of its TTL, before it expires.
        let fixed = Lease {
            renewable: false,
            ..lease
        };
        assert_eq!(next_step(fixed, s(19)), Step::Keep);
        assert_eq!(next_step(fixed, s(20)), Step::Replace);
        // TTL 0 (root token, no expiry): never touched.
        let forever = Lease {
            ttl: Duration::ZERO,
            full: Duration::ZERO,
            renewable: false,
        };
        assert_eq!(next_step(forever, s(1_000_000)), Step::Keep);
        // Sub-second TTLs keep the 2/3 point.
        let short = Lease {
            ttl: Duration::from_millis(900),
            full: Duration::from_millis(900),
            renewable: true,
        };
        assert_eq!(next_step(short, Duration::from_millis(599)), Step::Keep);
        assert_eq!(next_step(short, Duration::from_millis(600)), Step::Renew);
    }

    #[test]
    fn renewal_capped_by_max_ttl_leads_to_a_new_login() {
        let s = Duration::from_secs;
        // token_ttl 4s, token_max_ttl 10s: renewals grant 4s until the cap, then less.
        let first = Lease {
            ttl: s(4),
            full: s(4),
            renewable: true,
        };
        let renewed = after_renewal(first, s(4), true);
        assert_eq!(renewed, first);
        let capped = after_renewal(renewed, s(2), true);
        assert_eq!(
            capped,
            Lease {
                ttl: s(2),
                full: s(4),
                renewable: false
            }
        );
        assert_eq!(
            next_step(capped, Duration::from_millis(1400)),
            Step::Replace
        );
        // Periodic token: every renewal grants the full period again, forever.
        let periodic = Lease {
            ttl: s(60),
            full: s(60),
            renewable: true,
        };
        assert_eq!(after_renewal(periodic, s(60), true), periodic);
        // Vault says it is no longer renewable.
        assert!(!after_renewal(periodic, s(60), false).renewable);
    }

    #[test]
    fn new_reads_approle_credentials_and_names_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let c = approle_cfg(dir.path());
        let b = VaultBackend::new(&c, T).unwrap();
        let shown = format!("{b:?}");
        assert!(
            shown.contains("AppRole") && !shown.contains("s3cret-id"),
            "{shown}"
        );
        let mut c2 = c.clone();
        c2.secret_id_file = Some(dir.path().join("nope"));
        let err = VaultBackend::new(&c2, T).unwrap_err();
        assert!(
            matches!(&err, BackendError::Config(m) if m.contains("secret id file") && m.contains("nope")),
            "{err}"
        );
        std::fs::write(dir.path().join("empty"), " \n").unwrap();
        let mut c3 = c.clone();
        c3.secret_id_file = Some(dir.path().join("empty"));
        let err = VaultBackend::new(&c3, T).unwrap_err().to_string();
        assert!(
            err.contains("secret_id_file") && err.contains("empty"),
            "{err}"
        );
        let mut c4 = c;
        c4.secret_id_file = None;
        c4.secret_id_env = Some("DSO_VAULT_UNIT_TEST_SECRET_ID_SURELY_UNSET".into());
        let err = VaultBackend::new(&c4, T).unwrap_err().to_string();
        assert!(
            err.contains("DSO_VAULT_UNIT_TEST_SECRET_ID_SURELY_UNSET"),
            "{err}"
        );
    }

    /// An HTTP server that records each request head and answers by path.
    async fn recording(
        answers: Vec<(&'static str, Vec<u8>)>,
    ) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let answers = answers.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&got).to_string();
                    let line = head.lines().next().unwrap_or_default().to_string();
                    let resp = answers
                        .iter()
                        .find(|(p, _)| line.contains(p))
                        .map(|(_, r)| r.clone())
                        .unwrap_or_else(|| http("404 Not Found", r#"{"errors":[]}"#));
                    log.lock().unwrap().push(head);
                    let _ = sock.write_all(&resp).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        (format!("http://{addr}"), seen)
    }

    #[tokio::test]
    async fn approle_login_and_namespace_header_on_every_request() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, seen) = recording(vec![
            (
                "/v1/auth/approle/login",
                http(
                    "200 OK",
                    r#"{"auth":{"client_token":"tok-from-login","lease_duration":3600,"renewable":true}}"#,
                ),
            ),
            (
                "/v1/secret/data/app",
                http(
                    "200 OK",
                    r#"{"data":{"data":{"k":"v"},"metadata":{"version":3}}}"#,
                ),
            ),
        ])
        .await;
        let mut c = approle_cfg(dir.path());
        c.address = addr;
        c.namespace = Some("team-a/".into());
        let b = VaultBackend::new(&c, T).unwrap();
        let got = b.fetch_versioned("app").await.unwrap();
        assert_eq!(got.version.as_deref(), Some("3"));
        b.fetch("app").await.unwrap();
        let heads = seen.lock().unwrap().clone();
        assert_eq!(heads.len(), 3, "one login, two reads: {heads:#?}");
        assert!(heads[0].starts_with("POST /v1/auth/approle/login "));
        for h in &heads {
            let h = h.to_ascii_lowercase();
            assert!(h.contains("\r\nx-vault-namespace: team-a\r\n"), "{h}");
        }
        assert!(!heads[0].to_ascii_lowercase().contains("x-vault-token"));
        for h in &heads[1..] {
            assert!(
                h.to_ascii_lowercase()
                    .contains("\r\nx-vault-token: tok-from-login\r\n"),
                "{h}"
            );
        }
    }

    #[tokio::test]
    async fn refused_approle_login_is_denied_without_the_secret_id() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, _seen) = recording(vec![(
            "/v1/auth/approle/login",
            http(
                "400 Bad Request",
                r#"{"errors":["invalid secret id s3cret-id-never-shown"]}"#,
            ),
        )])
        .await;
        let mut c = approle_cfg(dir.path());
        c.address = addr.clone();
        let b = VaultBackend::new(&c, T).unwrap();
        let err = b.fetch("app").await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, BackendError::Denied(_)), "{err:?}");
        assert!(
            msg.contains("AppRole login") && msg.contains(&addr) && msg.contains("secret-id"),
            "{msg}"
        );
        assert!(!msg.contains("s3cret-id-never-shown"), "{msg}");
        assert!(matches!(b.probe().await, Err(BackendError::Denied(_))));
    }
}
