//! Authentication: the token (env, file, AppRole login), its lease, renewal and replacement.

use super::*;

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
pub(super) struct FileStamp {
    pub(super) dev: u64,
    pub(super) ino: u64,
    pub(super) len: u64,
    pub(super) mtime: i64,
    pub(super) mtime_nsec: i64,
}

pub(super) fn file_stamp(path: &Path) -> Option<FileStamp> {
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
pub(super) struct AuthState {
    /// `None` until the first request.
    pub(super) token: Option<Zeroizing<String>>,
    /// `None`: lifetime unknown or not managed (env token, lookup failed): never renewed.
    pub(super) lease: Option<Lease>,
    /// When `lease` was reported.
    pub(super) since: Instant,
    /// Bumped whenever the token changes, so a request that saw a 403 with an old token does not
    /// replace a token another request already replaced.
    pub(super) generation: u64,
    /// Token file only: its identity when last read.
    pub(super) stamp: Option<FileStamp>,
}

impl VaultBackend {
    /// The token to use now: obtained at the first request, re-read when the token file
    /// changed, renewed or replaced as [`next_step`] says.
    pub(super) async fn current_token(&self) -> Result<(Zeroizing<String>, u64), BackendError> {
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
    pub(super) async fn fresh_token(
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
    pub(super) async fn replace_token(
        &self,
        st: &mut AuthState,
        why: &str,
    ) -> Result<bool, BackendError> {
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
    pub(super) async fn login(
        &self,
        ar: &AppRole,
    ) -> Result<(Zeroizing<String>, Lease), BackendError> {
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
    pub(super) async fn renew(&self, token: &str) -> Result<(Duration, bool), BackendError> {
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
    pub(super) fn parse_auth(
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
    pub(super) async fn lookup_self(&self, token: &str) -> Result<Option<Lease>, BackendError> {
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
}

impl TokenSource {
    pub(super) fn describe(&self) -> String {
        match self {
            TokenSource::Env(var) => format!("environment variable {var}"),
            TokenSource::File(path) => format!("token file {}", path.display()),
        }
    }
}

impl Auth {
    pub(super) fn describe(&self) -> String {
        match self {
            Auth::Token(source) => source.describe(),
            Auth::AppRole(ar) => format!("the AppRole login (auth/{})", ar.mount.join("/")),
        }
    }
}

impl RoleId {
    pub(super) fn describe(&self) -> String {
        match self {
            RoleId::Inline(_) => "role_id".to_string(),
            RoleId::File(path) => format!("role_id_file {}", path.display()),
        }
    }
}

impl SecretIdSource {
    pub(super) fn describe(&self) -> String {
        match self {
            SecretIdSource::File(path) => format!("secret_id_file {}", path.display()),
            SecretIdSource::Env(var) => format!("environment variable {var}"),
        }
    }
}

/// Trims surrounding whitespace in place (no copy of the value is left behind).
pub(super) fn trim_in_place(s: &mut Zeroizing<String>) {
    let end = s.trim_end().len();
    s.truncate(end);
    let start = s.len() - s.trim_start().len();
    s.drain(..start);
}

impl AppRole {
    /// The role id, trimmed; errors name the field or file.
    pub(super) fn read_role_id(&self) -> Result<Zeroizing<String>, BackendError> {
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
    pub(super) fn read_secret_id(&self) -> Result<Zeroizing<String>, BackendError> {
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
pub(super) fn read_credential_file(
    path: &Path,
    what: &str,
) -> Result<Zeroizing<String>, BackendError> {
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
pub(super) fn read_token(source: &TokenSource) -> Result<Zeroizing<String>, BackendError> {
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
