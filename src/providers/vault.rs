//! `type = "vault"`: HashiCorp Vault / OpenBao KV (v2 and v1) with token auth.
//!
//! The token comes from an environment variable or a file, is read when the connection is built
//! (again on every ProviderConnection restart, so a rotated token file is picked up), and is never
//! printed: `Debug` of the backend omits it and error messages name the variable or file instead.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use dso_actors::backend::{BackendError, SecretBackend};
use dso_actors::secret::{SecretData, SecretValue};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

/// Largest response body accepted.
const MAX_BODY: usize = 16 * 1024 * 1024;

fn default_mount() -> String {
    "secret".to_string()
}
fn default_kv_version() -> u8 {
    2
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// `[providers.<name>]` with `type = "vault"`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// Server address, e.g. `http://127.0.0.1:8200`.
    pub address: String,
    /// Environment variable holding the token. Default `VAULT_TOKEN` when `token_file` is unset.
    #[serde(default)]
    pub token_env: Option<String>,
    /// File holding the token (surrounding whitespace ignored).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// KV mount path. Default `secret`.
    #[serde(default = "default_mount")]
    pub mount: String,
    /// KV engine version, 1 or 2. Default 2.
    #[serde(default = "default_kv_version")]
    pub kv_version: u8,
    /// Per-request timeout. Default `30s`.
    #[serde(default = "default_timeout", with = "crate::config::duration")]
    pub timeout: Duration,
}

impl VaultConfig {
    /// Every semantic problem, each `PREFIX.field: problem`. Touches neither network nor token.
    pub fn validate(&self, prefix: &str) -> Vec<String> {
        let mut p = Vec::new();
        match reqwest::Url::parse(&self.address) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => p.push(format!(
                "{prefix}.address: `{}` is not an http(s) URL such as http://127.0.0.1:8200",
                self.address
            )),
        }
        if self.token_env.is_some() && self.token_file.is_some() {
            p.push(format!(
                "{prefix}: set either token_env or token_file, not both"
            ));
        }
        if !(1..=2).contains(&self.kv_version) {
            p.push(format!(
                "{prefix}.kv_version: {} must be 1 or 2",
                self.kv_version
            ));
        }
        if self.mount.trim_matches('/').is_empty() {
            p.push(format!(
                "{prefix}.mount: must not be empty (e.g. \"secret\")"
            ));
        }
        if self.timeout.is_zero() {
            p.push(format!("{prefix}.timeout: must be more than 0s"));
        }
        p
    }
}

/// A Vault/OpenBao connection.
pub struct VaultBackend {
    client: reqwest::Client,
    base: String,
    mount: String,
    kv_version: u8,
    timeout: Duration,
    token: Zeroizing<String>,
}

impl std::fmt::Debug for VaultBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultBackend")
            .field("address", &self.base)
            .field("mount", &self.mount)
            .field("kv_version", &self.kv_version)
            .field("token", &"[redacted]")
            .finish()
    }
}

impl VaultBackend {
    /// Builds the HTTP client and reads the token.
    pub fn new(cfg: &VaultConfig) -> Result<Self, BackendError> {
        let token = read_token(cfg)?;
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| BackendError::Config(format!("HTTP client: {e}")))?;
        Ok(Self {
            client,
            base: cfg.address.trim_end_matches('/').to_string(),
            mount: cfg.mount.trim_matches('/').to_string(),
            kv_version: cfg.kv_version,
            timeout: cfg.timeout,
            token,
        })
    }

    fn data_url(&self, path: &str) -> String {
        match self.kv_version {
            1 => format!("{}/v1/{}/{}", self.base, self.mount, path),
            _ => format!("{}/v1/{}/data/{}", self.base, self.mount, path),
        }
    }

    async fn get(&self, url: &str, path: &str) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let resp = self
            .client
            .get(url)
            .header("X-Vault-Token", self.token.as_str())
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = resp.status();
        if let Some(len) = resp.content_length() {
            if len as usize > MAX_BODY {
                return Err(BackendError::Unavailable(format!(
                    "{}: response of {len} bytes exceeds the {MAX_BODY}-byte limit",
                    self.base
                )));
            }
        }
        let body = Zeroizing::new(
            resp.bytes()
                .await
                .map_err(|e| self.transport_error(e))?
                .to_vec(),
        );
        if body.len() > MAX_BODY {
            return Err(BackendError::Unavailable(format!(
                "{}: response exceeds the {MAX_BODY}-byte limit",
                self.base
            )));
        }
        match status.as_u16() {
            200..=299 => Ok(body),
            404 => Err(BackendError::NotFound {
                path: path.to_string(),
            }),
            401 | 403 => Err(BackendError::Denied(format!(
                "{} refused the token (HTTP {}); check the token and its policy for `{}/{}`",
                self.base,
                status.as_u16(),
                self.mount,
                path
            ))),
            code => Err(BackendError::Unavailable(format!(
                "{} answered HTTP {code}",
                self.base
            ))),
        }
    }

    fn transport_error(&self, e: reqwest::Error) -> BackendError {
        if e.is_timeout() {
            BackendError::Timeout(self.timeout)
        } else {
            // reqwest errors carry the URL (no token: it travels in a header).
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            BackendError::Unavailable(format!("{}: {msg}", self.base))
        }
    }

    /// KV v2 `current_version` of a secret (None for KV v1): a cheap change check.
    pub async fn current_version(&self, path: &str) -> Result<Option<u64>, BackendError> {
        if self.kv_version == 1 {
            return Ok(None);
        }
        let url = format!("{}/v1/{}/metadata/{}", self.base, self.mount, path);
        let body = self.get(&url, path).await?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| BackendError::Unavailable(format!("{}: bad JSON: {e}", self.base)))?;
        Ok(v.pointer("/data/current_version").and_then(|x| x.as_u64()))
    }
}

fn read_token(cfg: &VaultConfig) -> Result<Zeroizing<String>, BackendError> {
    if let Some(file) = &cfg.token_file {
        let raw = Zeroizing::new(std::fs::read_to_string(file).map_err(|e| {
            BackendError::Config(format!("cannot read token_file {}: {e}", file.display()))
        })?);
        let t = raw.trim();
        if t.is_empty() {
            return Err(BackendError::Config(format!(
                "token_file {} is empty",
                file.display()
            )));
        }
        return Ok(Zeroizing::new(t.to_string()));
    }
    let var = cfg.token_env.as_deref().unwrap_or("VAULT_TOKEN");
    match std::env::var(var) {
        Ok(t) if !t.trim().is_empty() => Ok(Zeroizing::new(t.trim().to_string())),
        _ => Err(BackendError::Config(format!(
            "environment variable {var} (token_env) is not set or empty"
        ))),
    }
}

fn json_to_value(v: &serde_json::Value) -> SecretValue {
    match v {
        serde_json::Value::String(s) => SecretValue::from_str_copy(s),
        other => SecretValue::new(other.to_string().into_bytes()),
    }
}

fn wipe(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) => s.zeroize(),
        serde_json::Value::Array(a) => a.iter_mut().for_each(wipe),
        serde_json::Value::Object(o) => o.iter_mut().for_each(|(_, v)| wipe(v)),
        _ => {}
    }
}

#[async_trait]
impl SecretBackend for VaultBackend {
    async fn fetch(&self, path: &str) -> Result<SecretData, BackendError> {
        let body = self.get(&self.data_url(path), path).await?;
        let mut doc: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            BackendError::Unavailable(format!("{}: response is not JSON: {e}", self.base))
        })?;
        let pointer = if self.kv_version == 1 {
            "/data"
        } else {
            "/data/data"
        };
        let out = match doc.pointer(pointer) {
            Some(serde_json::Value::Object(m)) => Ok(SecretData::Map(
                m.iter()
                    .map(|(k, v)| (k.clone(), json_to_value(v)))
                    .collect::<BTreeMap<_, _>>(),
            )),
            // KV v2: the latest version is deleted or destroyed.
            Some(serde_json::Value::Null) | None => Err(BackendError::NotFound {
                path: path.to_string(),
            }),
            Some(_) => Err(BackendError::Unavailable(format!(
                "{}: unexpected data shape at {pointer}",
                self.base
            ))),
        };
        wipe(&mut doc);
        out
    }

    async fn probe(&self) -> Result<(), BackendError> {
        let url = format!("{}/v1/auth/token/lookup-self", self.base);
        self.get(&url, "auth/token/lookup-self").await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> VaultConfig {
        VaultConfig {
            address: "http://127.0.0.1:8200".into(),
            token_env: Some("DSO_UNIT_TOKEN_THAT_IS_NOT_SET".into()),
            token_file: None,
            mount: "secret".into(),
            kv_version: 2,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn validation_names_fields() {
        let mut c = cfg();
        assert!(c.validate("providers.v").is_empty());
        c.address = "ftp://x".into();
        c.kv_version = 3;
        c.token_file = Some("/x".into());
        let p = c.validate("providers.v").join("\n");
        assert!(p.contains("providers.v.address"), "{p}");
        assert!(p.contains("providers.v.kv_version"), "{p}");
        assert!(p.contains("not both"), "{p}");
    }

    #[test]
    fn missing_token_names_the_variable_and_debug_hides_the_token() {
        let e = VaultBackend::new(&cfg()).unwrap_err();
        assert!(
            e.to_string().contains("DSO_UNIT_TOKEN_THAT_IS_NOT_SET"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t");
        std::fs::write(&f, "  s.supersecrettoken\n").unwrap();
        let mut c = cfg();
        c.token_env = None;
        c.token_file = Some(f);
        let b = VaultBackend::new(&c).unwrap();
        assert_eq!(b.token.as_str(), "s.supersecrettoken");
        assert!(!format!("{b:?}").contains("supersecret"));
    }
}
