//! The `vault` provider's configuration and its checks.

use super::*;

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

pub(super) fn default_mount() -> String {
    "secret".to_string()
}

pub(super) fn default_approle_mount() -> String {
    "approle".to_string()
}

pub(super) fn default_kv_version() -> u8 {
    2
}

/// Where the token is read from (`auth = "token"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum TokenSource {
    Env(String),
    File(PathBuf),
}

/// Where the role id comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RoleId {
    Inline(String),
    File(PathBuf),
}

/// Where the secret id comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SecretIdSource {
    File(PathBuf),
    Env(String),
}

/// AppRole credentials: where to read them (never the secret id itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AppRole {
    pub(super) role_id: RoleId,
    pub(super) secret_id: SecretIdSource,
    /// `auth/{mount...}/login`.
    pub(super) mount: Vec<String>,
}

/// How the backend gets its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Auth {
    Token(TokenSource),
    AppRole(AppRole),
}

/// Problems with a `/`-separated mount or namespace path; `None` when it is fine.
pub(super) fn path_problem(value: &str) -> Option<&'static str> {
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
pub(super) fn is_dns_name(name: &str) -> bool {
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
pub(super) fn load_ca(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
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
    pub(super) fn auth_spec(&self) -> Auth {
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

pub(super) fn split_path(p: &str) -> Vec<String> {
    p.trim_matches('/').split('/').map(str::to_string).collect()
}

/// Parses and checks a server address; the error says what is wrong and what to write.
pub(super) fn parse_address(address: &str) -> Result<Url, String> {
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
