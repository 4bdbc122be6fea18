//! Credentials and region: the environment, the shared credentials/config files, the instance role (IMDSv2), cached until they expire.

use super::*;

/// Where environment variables are read from: the process environment, or a fixed set (for
/// tests and embedders that must not depend on the process environment). Values are never
/// shown by `Debug`.
#[derive(Clone, Default)]
pub struct Environment(Option<Arc<BTreeMap<String, Zeroizing<String>>>>);

impl Environment {
    /// The process environment.
    pub fn process() -> Self {
        Self(None)
    }

    /// Exactly these variables, nothing from the process.
    pub fn fixed<K: Into<String>, V: Into<String>>(vars: impl IntoIterator<Item = (K, V)>) -> Self {
        Self(Some(Arc::new(
            vars.into_iter()
                .map(|(k, v)| (k.into(), Zeroizing::new(v.into())))
                .collect(),
        )))
    }

    /// A variable's value; `None` when unset, empty or not UTF-8.
    pub(super) fn var(&self, name: &str) -> Option<Zeroizing<String>> {
        let v = match &self.0 {
            None => match std::env::var(name) {
                Ok(v) => Zeroizing::new(v),
                Err(std::env::VarError::NotPresent) => return None,
                Err(std::env::VarError::NotUnicode(raw)) => {
                    wire::wipe_os(raw);
                    return None;
                }
            },
            Some(map) => map.get(name)?.clone(),
        };
        (!v.trim().is_empty()).then_some(v)
    }

    /// A non-secret variable (names, paths, flags) as a plain string.
    pub(super) fn plain(&self, name: &str) -> Option<String> {
        self.var(name).map(|v| v.trim().to_string())
    }
}

impl fmt::Debug for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("Environment(process)"),
            Some(map) => f
                .debug_struct("Environment")
                .field("names", &map.keys().collect::<Vec<_>>())
                .finish(),
        }
    }
}

/// One set of AWS credentials. `Debug` shows only where they came from.
#[derive(Clone)]
pub(super) struct Credentials {
    pub(super) access_key_id: Zeroizing<String>,
    pub(super) secret_access_key: Zeroizing<String>,
    pub(super) session_token: Option<Zeroizing<String>>,
    /// Where they came from, for messages.
    pub(super) source: String,
    /// When to resolve again (instance-role credentials only).
    pub(super) renew_at: Option<SystemTime>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("source", &self.source)
            .field("keys", &"[redacted]")
            .finish()
    }
}

impl Credentials {
    /// Checks that the parts can be sent in HTTP headers (without quoting them).
    pub(super) fn checked(self) -> Result<Self, BackendError> {
        let header_safe = |s: &str| s.bytes().all(|b| b.is_ascii_graphic());
        if !header_safe(&self.access_key_id)
            || !header_safe(&self.secret_access_key)
            || self
                .session_token
                .as_deref()
                .is_some_and(|t| !header_safe(t))
        {
            return Err(BackendError::Config(format!(
                "the AWS credentials from {} contain spaces or characters that are not \
                 printable ASCII: copy the access key id, secret access key and session token \
                 again",
                self.source
            )));
        }
        Ok(self)
    }
}

/// One section of an INI-style AWS file: key → value (values may be secret).
pub(super) type Section = BTreeMap<String, Zeroizing<String>>;

/// The section for `profile` in a credentials file (`[name]`) or a config file (`[profile
/// name]`, or `[default]`). `None` when the file has no such section.
pub(super) fn ini_section(text: &str, profile: &str, config_file: bool) -> Option<Section> {
    let mut found: Option<Section> = None;
    let mut in_section = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            let name = if config_file {
                match name.strip_prefix("profile ") {
                    Some(n) => n.trim(),
                    None if name == "default" => name,
                    // `[sso-session x]`, `[services x]`, …: not profiles.
                    None => "",
                }
            } else {
                name
            };
            in_section = !name.is_empty() && name == profile;
            if in_section {
                found.get_or_insert_with(BTreeMap::new);
            }
            continue;
        }
        if !in_section {
            continue;
        }
        if let (Some((k, v)), Some(section)) = (line.split_once('='), found.as_mut()) {
            let k = k.trim().to_ascii_lowercase();
            let v = v.trim();
            // Nested sub-sections (`s3 =` followed by indented lines) are ignored: their
            // keys are not ours, and an empty value never matters here.
            if !v.is_empty() {
                section.insert(k, Zeroizing::new(v.to_string()));
            }
        }
    }
    found
}

/// What the credential chain found in one shared file.
pub(super) enum FileCreds {
    /// Static keys.
    Found(Credentials),
    /// Nothing usable; the reason, for the "tried" list.
    Skipped(String),
}

/// Reads the `profile` section of a shared file and takes static keys from it.
pub(super) fn creds_from_file(
    path: &std::path::Path,
    profile: &str,
    config_file: bool,
) -> Result<FileCreds, BackendError> {
    let what = format!("profile `{profile}` in {}", path.display());
    let bytes = match std::fs::read(path) {
        Ok(b) => Zeroizing::new(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(FileCreds::Skipped(format!(
                "{}: no such file",
                path.display()
            )))
        }
        Err(e) => {
            return Err(BackendError::Config(format!(
                "cannot read the AWS shared file {}: {e}: fix its permissions, or point \
                 AWS_SHARED_CREDENTIALS_FILE / AWS_CONFIG_FILE elsewhere",
                path.display()
            )))
        }
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return Err(BackendError::Config(format!(
            "the AWS shared file {} is not valid UTF-8: it must be an INI file like \
             `[default]\\naws_access_key_id = …`",
            path.display()
        )));
    };
    let Some(section) = ini_section(text, profile, config_file) else {
        return Ok(FileCreds::Skipped(format!("{what}: no such profile")));
    };
    let key_id = section.get("aws_access_key_id");
    let secret = section.get("aws_secret_access_key");
    match (key_id, secret) {
        (Some(id), Some(secret)) => Ok(FileCreds::Found(
            Credentials {
                access_key_id: id.clone(),
                secret_access_key: secret.clone(),
                session_token: section.get("aws_session_token").cloned(),
                source: what,
                renew_at: None,
            }
            .checked()?,
        )),
        (Some(_), None) | (None, Some(_)) => Err(BackendError::Config(format!(
            "{what} has only one of aws_access_key_id and aws_secret_access_key: set both"
        ))),
        (None, None) => {
            let unsupported: Vec<&str> = [
                "role_arn",
                "credential_process",
                "sso_session",
                "sso_start_url",
                "web_identity_token_file",
            ]
            .into_iter()
            .filter(|k| section.contains_key(*k))
            .collect();
            if unsupported.is_empty() {
                Ok(FileCreds::Skipped(format!(
                    "{what}: no aws_access_key_id / aws_secret_access_key"
                )))
            } else {
                Ok(FileCreds::Skipped(format!(
                    "{what}: uses {}, which dso does not support (use static keys or the \
                     instance role)",
                    unsupported.join(", ")
                )))
            }
        }
    }
}

impl AwsBackend {
    /// The shared credentials file and config file, from the environment or `~/.aws/`.
    pub(super) fn shared_files(&self) -> (Option<PathBuf>, Option<PathBuf>) {
        shared_files(&self.env)
    }

    /// Cached credentials, or the chain resolved again when there are none or they are due.
    pub(super) async fn credentials(&self) -> Result<Credentials, BackendError> {
        let mut cached = self.creds.lock().await;
        if let Some(c) = cached.as_ref() {
            if c.renew_at.is_none_or(|t| SystemTime::now() < t) {
                return Ok(c.clone());
            }
        }
        let fresh = self.resolve_credentials().await?;
        *cached = Some(fresh.clone());
        Ok(fresh)
    }

    /// Drops cached credentials (after a refusal), so the next request resolves them again.
    pub(super) async fn forget_credentials(&self) {
        *self.creds.lock().await = None;
    }

    /// Env, then shared files, then IMDSv2. Errors list every source tried (never a value).
    pub(super) async fn resolve_credentials(&self) -> Result<Credentials, BackendError> {
        let mut tried: Vec<String> = Vec::new();
        match (
            self.env.var("AWS_ACCESS_KEY_ID"),
            self.env.var("AWS_SECRET_ACCESS_KEY"),
        ) {
            (Some(id), Some(secret)) => {
                return Credentials {
                    access_key_id: Zeroizing::new(id.trim().to_string()),
                    secret_access_key: Zeroizing::new(secret.trim().to_string()),
                    session_token: self
                        .env
                        .var("AWS_SESSION_TOKEN")
                        .map(|t| Zeroizing::new(t.trim().to_string())),
                    source: "environment variables AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
                        .into(),
                    renew_at: None,
                }
                .checked();
            }
            (Some(_), None) => {
                return Err(BackendError::Config(
                    "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not: export both, \
                     or neither to use the shared credentials file or the instance role"
                        .into(),
                ))
            }
            (None, Some(_)) => {
                return Err(BackendError::Config(
                    "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not: export both, \
                     or neither to use the shared credentials file or the instance role"
                        .into(),
                ))
            }
            (None, None) => tried.push(
                "environment variables AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY: not set".into(),
            ),
        }
        let (credentials_file, config_file) = self.shared_files();
        for (file, is_config) in [(credentials_file, false), (config_file, true)] {
            let Some(file) = file else {
                tried.push("shared files: HOME is not set".into());
                continue;
            };
            match creds_from_file(&file, &self.profile, is_config)? {
                FileCreds::Found(c) => return Ok(c),
                FileCreds::Skipped(why) => tried.push(why),
            }
        }
        let disabled = self
            .env
            .plain("AWS_EC2_METADATA_DISABLED")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if disabled {
            tried.push("EC2 instance role: AWS_EC2_METADATA_DISABLED is true".into());
        } else {
            match self.imds_credentials().await {
                Ok(c) => return Ok(c),
                Err(why) => tried.push(why),
            }
        }
        Err(BackendError::Denied(format!(
            "no AWS credentials found (tried {}): export AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY, add profile `{}` to the shared credentials file, or run on \
             an EC2 instance with an instance role",
            tried.join("; "),
            self.profile
        )))
    }

    /// Instance-role credentials through IMDSv2. The error (a reason for the "tried" list)
    /// never holds a value.
    pub(super) async fn imds_credentials(&self) -> Result<Credentials, String> {
        let base = self
            .env
            .plain("AWS_EC2_METADATA_SERVICE_ENDPOINT")
            .unwrap_or_else(|| IMDS_DEFAULT.to_string());
        let base = base.trim_end_matches('/');
        let what = format!("EC2 instance role via IMDSv2 at {base}");
        let fail = |e: &reqwest::Error| {
            if e.is_timeout() {
                format!("{what}: no answer within {IMDS_TIMEOUT:?} (not on EC2?)")
            } else {
                format!("{what}: {}", wire::error_chain(e))
            }
        };
        let resp = self
            .imds_client
            .put(format!("{base}/latest/api/token"))
            .header("X-aws-ec2-metadata-token-ttl-seconds", "21600")
            .send()
            .await
            .map_err(|e| fail(&e))?;
        if !resp.status().is_success() {
            return Err(format!(
                "{what}: the token request answered HTTP {}",
                resp.status()
            ));
        }
        let token = Zeroizing::new(resp.text().await.map_err(|e| fail(&e))?);
        let mut token_header = HeaderValue::from_str(token.trim())
            .map_err(|_| format!("{what}: the session token is not a valid header value"))?;
        token_header.set_sensitive(true);
        let get = |path: String| {
            self.imds_client
                .get(format!(
                    "{base}/latest/meta-data/iam/security-credentials/{path}"
                ))
                .header("X-aws-ec2-metadata-token", token_header.clone())
                .send()
        };
        let resp = get(String::new()).await.map_err(|e| fail(&e))?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(format!("{what}: the instance has no IAM role attached"));
        }
        if !resp.status().is_success() {
            return Err(format!(
                "{what}: listing roles answered HTTP {}",
                resp.status()
            ));
        }
        let roles = resp.text().await.map_err(|e| fail(&e))?;
        let Some(role) = roles.lines().map(str::trim).find(|l| !l.is_empty()) else {
            return Err(format!("{what}: the instance has no IAM role attached"));
        };
        let role = role.to_string();
        let resp = get(role.clone()).await.map_err(|e| fail(&e))?;
        if !resp.status().is_success() {
            return Err(format!(
                "{what}: reading the credentials of role `{role}` answered HTTP {}",
                resp.status()
            ));
        }
        let body = Zeroizing::new(resp.bytes().await.map_err(|e| fail(&e))?.to_vec());

        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct RoleCreds {
            code: Option<String>,
            access_key_id: Option<String>,
            secret_access_key: Option<String>,
            token: Option<String>,
            expiration: Option<String>,
        }
        let mut rc: RoleCreds = serde_json::from_slice(&body)
            .map_err(|_| format!("{what}: the credentials of role `{role}` are not valid JSON"))?;
        let wipe = |rc: &mut RoleCreds| {
            for s in [
                &mut rc.access_key_id,
                &mut rc.secret_access_key,
                &mut rc.token,
            ]
            .into_iter()
            .flatten()
            {
                s.zeroize();
            }
        };
        if rc.code.as_deref().is_some_and(|c| c != "Success") {
            let code = rc.code.clone().unwrap_or_default();
            wipe(&mut rc);
            return Err(format!("{what}: role `{role}` answered Code {code}"));
        }
        let (Some(id), Some(secret)) = (rc.access_key_id.take(), rc.secret_access_key.take())
        else {
            wipe(&mut rc);
            return Err(format!(
                "{what}: the credentials of role `{role}` lack AccessKeyId or SecretAccessKey"
            ));
        };
        let now = SystemTime::now();
        let renew_at = match rc.expiration.as_deref().and_then(parse_utc) {
            Some(exp) => exp
                .checked_sub(EXPIRY_MARGIN)
                .filter(|t| *t > now)
                // Already inside the margin: use them for this request, renew next time.
                .unwrap_or(now),
            None => now + NO_EXPIRY_REFRESH,
        };
        Credentials {
            access_key_id: Zeroizing::new(id),
            secret_access_key: Zeroizing::new(secret),
            session_token: rc.token.take().map(Zeroizing::new),
            source: format!("EC2 instance role `{role}` (IMDSv2)"),
            renew_at: Some(renew_at),
        }
        .checked()
        .map_err(|e| format!("{what}: {e}"))
    }
}

/// The credentials file and config file: `AWS_SHARED_CREDENTIALS_FILE` / `AWS_CONFIG_FILE`, else
/// `$HOME/.aws/credentials` / `$HOME/.aws/config` (`None` without HOME).
pub(super) fn shared_files(env: &Environment) -> (Option<PathBuf>, Option<PathBuf>) {
    let home = env.plain("HOME").map(PathBuf::from);
    let pick = |var: &str, name: &str| {
        env.plain(var)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws").join(name)))
    };
    (
        pick("AWS_SHARED_CREDENTIALS_FILE", "credentials"),
        pick("AWS_CONFIG_FILE", "config"),
    )
}

/// Region: config, `AWS_REGION`, `AWS_DEFAULT_REGION`, then the profile's `region` in the
/// shared config file.
pub(super) fn resolve_region(
    cfg: &AwsConfig,
    env: &Environment,
    profile: &str,
) -> Result<String, BackendError> {
    if let Some(r) = &cfg.region {
        return Ok(r.trim().to_string());
    }
    for var in ["AWS_REGION", "AWS_DEFAULT_REGION"] {
        if let Some(r) = env.plain(var) {
            return check_region(&r).map(|()| r).map_err(|e| {
                BackendError::Config(format!(
                    "environment variable {var}: {e}, or set `region` in the provider config"
                ))
            });
        }
    }
    let (_, config_file) = shared_files(env);
    if let Some(file) = &config_file {
        if let Ok(bytes) = std::fs::read(file) {
            let bytes = Zeroizing::new(bytes);
            if let Some(r) = std::str::from_utf8(&bytes)
                .ok()
                .and_then(|text| ini_section(text, profile, true))
                .and_then(|s| s.get("region").map(|r| r.trim().to_string()))
            {
                return check_region(&r).map(|()| r.clone()).map_err(|e| {
                    BackendError::Config(format!(
                        "region of profile `{profile}` in {}: {e}, or set `region` in the \
                         provider config",
                        file.display()
                    ))
                });
            }
        }
    }
    Err(BackendError::Config(format!(
        "aws.region: no AWS region configured: set `region = \"eu-west-1\"` (for example) in the \
         provider config, or export AWS_REGION, or set `region` in profile `{profile}` of {}",
        config_file
            .map(|f| f.display().to_string())
            .unwrap_or_else(|| "~/.aws/config".into())
    )))
}
