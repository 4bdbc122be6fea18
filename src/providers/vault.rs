//! HashiCorp Vault / OpenBao key/value backend (KV v2 and KV v1) with token authentication.
//!
//! Requests go to the HTTP API with the token in `X-Vault-Token`. The token never appears in
//! `Debug` output or in error messages; response bodies are bounded (16 MiB), never logged, and
//! wiped (best effort) once their values have been moved into [`SecretValue`]s.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use dso_actors::backend::{BackendError, Fetched, SecretBackend};
use dso_actors::secret::zeroize_json;
use dso_actors::secret::{SecretData, SecretValue};
use reqwest::header::HeaderValue;
use reqwest::{StatusCode, Url};
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

/// Configuration of a `vault` provider (HashiCorp Vault or OpenBao, KV v1 or v2, token auth).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// Base URL of the server, e.g. `"http://127.0.0.1:8200"` (required).
    pub address: String,
    /// Env var holding the token. Default `"VAULT_TOKEN"` when `token_file` is not set.
    #[serde(default)]
    pub token_env: Option<String>,
    /// File holding the token (trailing whitespace trimmed).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// KV mount, default `"secret"`.
    #[serde(default = "default_mount")]
    pub mount: String,
    /// KV engine version: 1 or 2, default 2.
    #[serde(default = "default_kv_version")]
    pub kv_version: u8,
    /// Per-request timeout, default 30s.
    #[serde(default = "default_timeout", with = "crate::config::duration")]
    pub timeout: Duration,
    /// How often secrets in use are re-checked for changes, default `1m` (±10 % jitter).
    #[serde(
        default = "crate::config::default_refresh_interval",
        with = "crate::config::duration"
    )]
    pub refresh_interval: Duration,
    /// Most backend requests per second (token bucket; 0: unlimited). Default 100.
    #[serde(default = "crate::config::default_rate_limit")]
    pub rate_limit: f64,
    /// Requests allowed at once above the rate (bucket size). Default 50.
    #[serde(default = "crate::config::default_burst")]
    pub burst: u32,
}

fn default_mount() -> String {
    "secret".to_string()
}

fn default_kv_version() -> u8 {
    2
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Where the token is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TokenSource {
    Env(String),
    File(PathBuf),
}

impl VaultConfig {
    /// Every semantic problem, each as `"PREFIX.field: what is wrong and what to do"`.
    ///
    /// Checks: address is an http(s) URL, `token_env` and `token_file` are not both set,
    /// `kv_version` is 1 or 2, `mount` is not empty, `timeout` is not zero. Does not touch the
    /// network or read the token.
    pub fn validate(&self, prefix: &str) -> Vec<String> {
        let mut errs = Vec::new();
        if let Err(e) = parse_address(&self.address) {
            errs.push(format!("{prefix}.address: {e}"));
        }
        if self.token_env.is_some() && self.token_file.is_some() {
            errs.push(format!(
                "{prefix}.token_env: both token_env and token_file are set: keep only one of them"
            ));
        }
        if self
            .token_env
            .as_deref()
            .is_some_and(|v| v.trim().is_empty())
        {
            errs.push(format!(
                "{prefix}.token_env: is empty: name the environment variable that holds the \
                 token (e.g. \"VAULT_TOKEN\"), or remove the field"
            ));
        }
        if self
            .token_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            errs.push(format!(
                "{prefix}.token_file: is empty: give the path of the file holding the token, or \
                 remove the field"
            ));
        }
        if !matches!(self.kv_version, 1 | 2) {
            errs.push(format!(
                "{prefix}.kv_version: must be 1 or 2 (got {}): use 2 for a KV v2 engine (the \
                 default `secret/` mount of a dev server), 1 for KV v1",
                self.kv_version
            ));
        }
        let mount = self.mount.trim_matches('/');
        if mount.is_empty() {
            errs.push(format!(
                "{prefix}.mount: is empty: set the path the KV engine is mounted at, e.g. \"secret\""
            ));
        } else if mount
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        {
            errs.push(format!(
                "{prefix}.mount: `{}` has an empty, `.` or `..` segment: write the mount path \
                 like \"secret\" or \"team/kv\"",
                self.mount
            ));
        }
        if self.timeout.is_zero() {
            errs.push(format!(
                "{prefix}.timeout: must be more than zero: write it like \"30s\""
            ));
        }
        errs
    }

    fn token_source(&self) -> TokenSource {
        match (&self.token_env, &self.token_file) {
            (Some(var), _) => TokenSource::Env(var.clone()),
            (None, Some(file)) => TokenSource::File(file.clone()),
            (None, None) => TokenSource::Env(DEFAULT_TOKEN_ENV.to_string()),
        }
    }
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

/// A Vault/OpenBao KV backend. Its `Debug` output never shows the token.
pub struct VaultBackend {
    client: reqwest::Client,
    base: Url,
    /// The configured address, for messages.
    address: String,
    token: Zeroizing<String>,
    token_source: TokenSource,
    mount: Vec<String>,
    kv_version: u8,
    timeout: Duration,
}

impl fmt::Debug for VaultBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultBackend")
            .field("address", &self.address)
            .field("token", &"[redacted]")
            .field("token_source", &self.token_source)
            .field("mount", &self.mount.join("/"))
            .field("kv_version", &self.kv_version)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl VaultBackend {
    /// Builds the HTTP client (rustls, timeout) and reads the token (env var or file).
    ///
    /// An invalid config (see [`VaultConfig::validate`]), or a missing, unreadable or empty
    /// token, is a [`BackendError::Config`] naming the variable or file (never the token).
    pub fn new(cfg: &VaultConfig) -> Result<Self, BackendError> {
        let problems = cfg.validate("vault");
        if !problems.is_empty() {
            return Err(BackendError::Config(problems.join("; ")));
        }
        let base = parse_address(&cfg.address).map_err(BackendError::Config)?;
        let token_source = cfg.token_source();
        let token = read_token(&token_source)?;
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .user_agent(concat!("dso/", env!("CARGO_PKG_VERSION")))
            .redirect(redirect_policy())
            .build()
            .map_err(|e| {
                BackendError::Config(format!("cannot build the HTTP client: {}", chain(&e)))
            })?;
        Ok(Self {
            client,
            base,
            address: cfg.address.trim().to_string(),
            token,
            token_source,
            mount: cfg
                .mount
                .trim_matches('/')
                .split('/')
                .map(str::to_string)
                .collect(),
            kv_version: cfg.kv_version,
            timeout: cfg.timeout,
        })
    }

    /// The KV v2 `current_version` of `path` (from `{mount}/metadata/{path}`); `None` for KV v1,
    /// which has no versions. Lets a caller notice a rotation without fetching the secret.
    pub async fn current_version(&self, path: &str) -> Result<Option<u64>, BackendError> {
        if self.kv_version == 1 {
            return Ok(None);
        }
        let url = self.url(&["metadata"], path)?;
        let resp = self.get(url).await?;
        let status = resp.status();
        if status != StatusCode::OK {
            return Err(self.status_error(resp, path).await);
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

    /// Sends an authenticated GET.
    async fn get(&self, url: Url) -> Result<reqwest::Response, BackendError> {
        let mut token = HeaderValue::from_str(&self.token).map_err(|_| {
            BackendError::Config(format!(
                "the token from {} contains characters not allowed in an HTTP header",
                self.token_source.describe()
            ))
        })?;
        token.set_sensitive(true);
        self.client
            .get(url)
            .header("X-Vault-Token", token)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))
    }

    /// Reads at most `limit` bytes of body into a buffer that is zeroed when dropped.
    async fn read_body(
        &self,
        mut resp: reqwest::Response,
        limit: usize,
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let too_big = || {
            BackendError::Unavailable(format!(
                "Vault at {} sent a response larger than {} MiB; refusing it",
                self.address,
                limit / (1024 * 1024)
            ))
        };
        let declared = resp.content_length().unwrap_or(0);
        if declared > limit as u64 {
            return Err(too_big());
        }
        // `declared <= limit`, so this conversion cannot truncate.
        let mut buf = Zeroizing::new(Vec::with_capacity(declared as usize));
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport_error(&e))? {
            if buf.len() + chunk.len() > limit {
                wipe_bytes(chunk);
                return Err(too_big());
            }
            if buf.capacity() - buf.len() < chunk.len() {
                // Grow by hand so the old buffer is zeroed rather than freed with data in it.
                let cap = (buf.len() + chunk.len())
                    .max(buf.capacity().saturating_mul(2))
                    .min(limit);
                let mut bigger = Zeroizing::new(Vec::with_capacity(cap));
                bigger.extend_from_slice(&buf);
                buf = bigger;
            }
            buf.extend_from_slice(&chunk);
            wipe_bytes(chunk);
        }
        Ok(buf)
    }

    /// The error for a non-200 answer. Reads Vault's `errors` list (not secret) for context.
    async fn status_error(&self, resp: reqwest::Response, path: &str) -> BackendError {
        let status = resp.status();
        let detail = match self.read_body(resp, MAX_ERROR_BODY).await {
            Ok(body) => self.vault_errors(&body),
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
                self.token_source.describe(),
                status.as_u16(),
            )),
            _ => BackendError::Unavailable(format!(
                "Vault at {} answered HTTP {} for `{path}`{detail_sfx}",
                self.address, status
            )),
        }
    }

    /// Vault's `{"errors": [...]}` joined and shortened, with the token scrubbed out.
    fn vault_errors(&self, body: &[u8]) -> String {
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
        let mut text = e
            .errors
            .into_iter()
            .chain(e.warnings.unwrap_or_default())
            .map(|s| s.trim().replace('\n', " "))
            .collect::<Vec<_>>()
            .join("; ");
        if !self.token.is_empty() && text.contains(self.token.as_str()) {
            text = text.replace(self.token.as_str(), "[redacted]");
        }
        if text.len() > MAX_ERROR_TEXT {
            let mut end = MAX_ERROR_TEXT;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push('…');
        }
        text
    }

    fn transport_error(&self, e: &reqwest::Error) -> BackendError {
        if e.is_timeout() {
            return BackendError::Timeout(self.timeout);
        }
        BackendError::Unavailable(format!(
            "cannot reach Vault at {}: {}",
            self.address,
            chain(e)
        ))
    }

    /// A decode error without serde's text, which can quote the (secret) input.
    fn decode_error(&self, e: &serde_json::Error) -> BackendError {
        let kind = match e.classify() {
            serde_json::error::Category::Io => "I/O error",
            serde_json::error::Category::Syntax => "invalid JSON",
            serde_json::error::Category::Data => "unexpected JSON structure",
            serde_json::error::Category::Eof => "truncated JSON",
        };
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
        let resp = self.get(url).await?;
        if resp.status() != StatusCode::OK {
            return Err(self.status_error(resp, path).await);
        }
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

    /// `GET {address}/v1/auth/token/lookup-self`: OK when the token is accepted.
    async fn probe(&self) -> Result<(), BackendError> {
        let url = self.url_raw(["auth", "token", "lookup-self"].into_iter())?;
        let resp = self.get(url).await?;
        if resp.status() != StatusCode::OK {
            return Err(self.status_error(resp, "auth/token/lookup-self").await);
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
                wipe_os(raw);
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

/// Best-effort wipe of a rejected (non-UTF-8) env value.
fn wipe_os(raw: std::ffi::OsString) {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStringExt;
        raw.into_vec().zeroize();
    }
    #[cfg(not(unix))]
    drop(raw);
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

/// Wipes a received chunk when this is its only owner (hyper may share the allocation).
fn wipe_bytes(chunk: bytes::Bytes) {
    if let Ok(mut m) = chunk.try_into_mut() {
        m[..].zeroize();
    }
}

/// An error and its sources, `": "`-joined, without repeats.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(address: &str) -> VaultConfig {
        VaultConfig {
            address: address.to_string(),
            token_env: None,
            token_file: None,
            mount: default_mount(),
            kv_version: 2,
            timeout: Duration::from_secs(30),
            refresh_interval: crate::config::default_refresh_interval(),
            rate_limit: crate::config::default_rate_limit(),
            burst: crate::config::default_burst(),
        }
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        let c: VaultConfig = toml::from_str(r#"address = "http://127.0.0.1:8200""#).unwrap();
        assert_eq!(c, cfg("http://127.0.0.1:8200"));
        assert_eq!(c.token_source(), TokenSource::Env("VAULT_TOKEN".into()));
        let c: VaultConfig = toml::from_str(
            r#"
            address = "https://vault.example.com"
            token_file = "/run/token"
            mount = "kv"
            kv_version = 1
            timeout = "5s"
            "#,
        )
        .unwrap();
        assert_eq!(c.token_source(), TokenSource::File("/run/token".into()));
        assert_eq!(c.timeout, Duration::from_secs(5));
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
        c.timeout = Duration::ZERO;
        let errs = c.validate("providers.vault");
        assert_eq!(errs.len(), 5, "{errs:#?}");
        for (e, field) in
            errs.iter()
                .zip(["address", "token_env", "kv_version", "mount", "timeout"])
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
        let err = VaultBackend::new(&c).unwrap_err();
        assert!(
            matches!(&err, BackendError::Config(m) if m.contains("vault.address")),
            "{err}"
        );
        let mut c = cfg("http://127.0.0.1:1");
        c.token_env = Some("DSO_VAULT_UNIT_TEST_SURELY_UNSET".into());
        let err = VaultBackend::new(&c).unwrap_err();
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
        c.timeout = Duration::from_secs(5);
        (VaultBackend::new(&c).unwrap(), dir)
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
}
