//! The HTTP client: requests, errors, KV reads, and the `SecretBackend` implementation.

use super::*;

/// Resolves `tls_server_name` to the host of `address`, so the certificate is checked against
/// that name while the connection goes to the configured host.
pub(super) struct PinnedResolver {
    /// The host of `address` (IP literal or DNS name).
    pub(super) host: String,
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
pub(super) struct Authed {
    pub(super) resp: reqwest::Response,
    pub(super) token: Zeroizing<String>,
}

/// A Vault/OpenBao KV backend. Its `Debug` output never shows the token or secret id.
pub struct VaultBackend {
    /// The one HTTP client (rustls, timeouts, optional private CA).
    pub(super) client: reqwest::Client,
    /// `address`, with the host replaced by `tls_server_name` when set.
    pub(super) base: Url,
    /// The configured address, for messages.
    pub(super) address: String,
    pub(super) auth: Auth,
    pub(super) namespace: Option<HeaderValue>,
    pub(super) mount: Vec<String>,
    pub(super) kv_version: u8,
    pub(super) timeout: Duration,
    pub(super) state: tokio::sync::Mutex<AuthState>,
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
    pub(super) fn url(&self, infix: &[&str], path: &str) -> Result<Url, BackendError> {
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
    pub(super) fn url_raw<'a>(
        &self,
        segments: impl Iterator<Item = &'a str>,
    ) -> Result<Url, BackendError> {
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
    pub(super) async fn send(
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
    pub(super) async fn get(&self, url: Url) -> Result<Authed, BackendError> {
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

    /// Reads at most `limit` bytes of body into a buffer that is zeroed when dropped.
    pub(super) async fn read_body(
        &self,
        resp: reqwest::Response,
        limit: usize,
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let server = format!("Vault at {}", self.address);
        wire::read_body(resp, limit, &server, |e| self.transport_error(e)).await
    }

    /// The error for a non-200 answer. Reads Vault's `errors` list (not secret) for context.
    /// `token` (the one the request carried) is scrubbed out of the quoted text.
    pub(super) async fn status_error(
        &self,
        resp: reqwest::Response,
        path: &str,
        token: &str,
    ) -> BackendError {
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
    pub(super) fn vault_errors(&self, body: &[u8], scrub: &[&str]) -> String {
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

    pub(super) fn transport_error(&self, e: &reqwest::Error) -> BackendError {
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
    pub(super) fn decode_error(&self, e: &serde_json::Error) -> BackendError {
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

/// Follows at most 5 redirects, only to the same host and never from https to http (the token
/// header travels along with a redirect).
pub(super) fn redirect_policy() -> reqwest::redirect::Policy {
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
pub(super) fn take_values(
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
