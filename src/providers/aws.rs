//! AWS Secrets Manager backend (`type = "aws"`).
//!
//! Speaks the JSON 1.1 protocol over HTTPS (`POST /` with `X-Amz-Target:
//! secretsmanager.<Action>`), signed by hand with Signature Version 4 (service
//! `secretsmanager`): `GetSecretValue` reads a secret, `DescribeSecret` reads its `AWSCURRENT`
//! version id cheaply, `ListSecrets` (one result) is the probe.
//!
//! Credentials come from the standard chain, resolved at request time (never in
//! [`AwsBackend::new`]) and cached: the environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, optional `AWS_SESSION_TOKEN`), then the shared files
//! (`AWS_SHARED_CREDENTIALS_FILE` or `~/.aws/credentials`, then `AWS_CONFIG_FILE` or
//! `~/.aws/config`), then the EC2 instance role through IMDSv2 (cached until five minutes before
//! its `Expiration`). A refused request drops the cache, so the next one resolves again.
//!
//! Secret keys, session tokens and values never appear in `Debug` output or in error messages;
//! response bodies are bounded, never logged, and wiped (best effort) once their values have been
//! moved into [`SecretValue`]s.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::wire;
use async_trait::async_trait;
use base64::Engine as _;
use dso_actors::backend::{BackendError, Fetched, SecretBackend};
use dso_actors::secret::{zeroize_json, SecretData, SecretValue};
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

/// Largest response body accepted (a SecretString is at most 64 KiB; its JSON, or a base64
/// SecretBinary, is a little more).
const MAX_BODY: usize = 1024 * 1024;
/// Largest error body read to extract the error type and message.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Longest AWS error message quoted in an error.
const MAX_ERROR_TEXT: usize = 300;
/// The SigV4 service name, and the `X-Amz-Target` prefix.
const SERVICE: &str = "secretsmanager";
/// The JSON 1.1 protocol's content type.
const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
/// Default IMDS endpoint.
const IMDS_DEFAULT: &str = "http://169.254.169.254";
/// Timeout of each IMDS request (the SDKs use 1 s: off EC2 nothing answers).
const IMDS_TIMEOUT: Duration = Duration::from_secs(1);
/// Instance-role credentials are renewed this long before their `Expiration`.
const EXPIRY_MARGIN: Duration = Duration::from_secs(5 * 60);
/// Instance-role credentials without a readable `Expiration` are renewed after this long.
const NO_EXPIRY_REFRESH: Duration = Duration::from_secs(5 * 60);

/// Configuration of an `aws` provider (AWS Secrets Manager).
///
/// A secret reference `aws/<path>` names the secret by its name (e.g. `prod/app/db`) or ARN.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// AWS region, e.g. `"eu-west-1"`. Default: `AWS_REGION`, else `AWS_DEFAULT_REGION`, else
    /// the `region` of the profile in the shared config file. None of them: the provider does
    /// not start, with an error naming this field.
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint URL (a VPC endpoint, or a local moto_server in tests). Default
    /// `https://secretsmanager.<region>.amazonaws.com` (`.amazonaws.com.cn` for `cn-` regions).
    /// Plain `http` is accepted only for a loopback host, or with `allow_http = true`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Allow an `http://` endpoint on a non-loopback host (requests and answers, secrets
    /// included, then cross the network unencrypted). Default `false`.
    #[serde(default)]
    pub allow_http: bool,
    /// Profile of the shared credentials/config files. Default `AWS_PROFILE`, else `"default"`.
    #[serde(default)]
    pub profile: Option<String>,
}

impl AwsConfig {
    /// Every semantic problem, each `PREFIX.field: what is wrong and what to do`.
    ///
    /// Checks: `region` looks like a region name, `endpoint` is an http(s) URL (plain http only
    /// for loopback or with `allow_http`), `profile` is not empty, `timeout` is not zero. Does
    /// not touch the network, the environment or the credential files.
    pub fn validate(&self, prefix: &str) -> Vec<String> {
        let mut errs = Vec::new();
        if let Some(region) = &self.region {
            if let Err(e) = check_region(region) {
                errs.push(format!("{prefix}.region: {e}"));
            }
        }
        if let Some(endpoint) = &self.endpoint {
            if let Err(e) = parse_endpoint(endpoint, self.allow_http) {
                errs.push(format!("{prefix}.endpoint: {e}"));
            }
        }
        if self.profile.as_deref().is_some_and(|p| p.trim().is_empty()) {
            errs.push(format!(
                "{prefix}.profile: is empty: name a profile of ~/.aws/credentials (e.g. \
                 \"default\"), or remove the field"
            ));
        }
        errs
    }
}

/// A region name: lowercase letters, digits and dashes, like `eu-west-1`.
fn check_region(region: &str) -> Result<(), String> {
    let ok = !region.is_empty()
        && region.len() <= 64
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !region.starts_with('-')
        && !region.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{region}` is not an AWS region name: write it like \"eu-west-1\" or \"us-east-1\""
        ))
    }
}

/// Parses and checks an endpoint URL; the error says what is wrong and what to write.
fn parse_endpoint(endpoint: &str, allow_http: bool) -> Result<Url, String> {
    let hint = "write it like \"https://secretsmanager.eu-west-1.amazonaws.com\" or \
                \"http://127.0.0.1:5000\"";
    let url = Url::parse(endpoint.trim())
        .map_err(|e| format!("`{endpoint}` is not an http(s) URL ({e}): {hint}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "`{endpoint}` is not an http(s) URL (scheme `{}`): {hint}",
            url.scheme()
        ));
    }
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        return Err(format!("`{endpoint}` has no host: {hint}"));
    };
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "`{endpoint}` has a query or fragment: give only the base URL, {hint}"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "the URL contains credentials: remove them (credentials come from the environment, \
             the shared credentials file or the instance role)"
                .into(),
        );
    }
    if url.scheme() == "http" && !allow_http {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = bare.eq_ignore_ascii_case("localhost")
            || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return Err(format!(
                "`{endpoint}` uses plain http to a host that is not loopback: secrets would \
                 cross the network unencrypted; use https, or set allow_http = true if this \
                 network is trusted"
            ));
        }
    }
    Ok(url)
}

/// The default endpoint of a region.
fn default_endpoint(region: &str) -> String {
    let suffix = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    format!("https://{SERVICE}.{region}.{suffix}")
}

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
    fn var(&self, name: &str) -> Option<Zeroizing<String>> {
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
    fn plain(&self, name: &str) -> Option<String> {
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
struct Credentials {
    access_key_id: Zeroizing<String>,
    secret_access_key: Zeroizing<String>,
    session_token: Option<Zeroizing<String>>,
    /// Where they came from, for messages.
    source: String,
    /// When to resolve again (instance-role credentials only).
    renew_at: Option<SystemTime>,
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
    fn checked(self) -> Result<Self, BackendError> {
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

/// Who signs, and for which time, region and service.
struct SigningScope<'a> {
    access_key_id: &'a str,
    secret_access_key: &'a str,
    /// `YYYYMMDD'T'HHMMSS'Z'`.
    amz_date: &'a str,
    region: &'a str,
    service: &'a str,
}

/// `Authorization` header value for a request (AWS Signature Version 4).
///
/// `headers` are (lowercase name, value), all of them signed; `canonical_uri` is already
/// encoded as SigV4 wants it; `payload` is the body.
fn sigv4_authorization(
    method: &str,
    canonical_uri: &str,
    canonical_query: &str,
    headers: &[(String, String)],
    payload: &[u8],
    scope: &SigningScope<'_>,
) -> String {
    let mut sorted: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_ascii_lowercase(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect();
    sorted.sort();
    let canonical_headers: String = sorted.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed_headers = sorted
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_request = format!(
        "{method}\n{canonical_uri}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{}",
        hex::encode(Sha256::digest(payload))
    );
    let date = scope.amz_date.get(..8).unwrap_or(scope.amz_date);
    let credential_scope = format!("{date}/{}/{}/aws4_request", scope.region, scope.service);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{credential_scope}\n{}",
        scope.amz_date,
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let mut key = Zeroizing::new(format!("AWS4{}", scope.secret_access_key).into_bytes());
    for part in [date, scope.region, scope.service, "aws4_request"] {
        // A new `Zeroizing` each round, so every intermediate key is wiped when replaced.
        key = Zeroizing::new(hmac_sha256(&key, part.as_bytes()));
    }
    let signature = hex::encode(hmac_sha256(&key, string_to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{credential_scope}, \
         SignedHeaders={signed_headers}, Signature={signature}",
        scope.access_key_id
    )
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// SigV4 URI encoding: everything but `A-Za-z0-9-_.~` as `%XX` (uppercase).
fn uri_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The canonical URI of an endpoint's path (non-S3 services encode each segment twice; the URL
/// parser did it once).
fn canonical_uri(url: &Url) -> String {
    let path = url.path();
    if path.is_empty() || path == "/" {
        return "/".to_string();
    }
    path.split('/')
        .map(uri_encode)
        .collect::<Vec<_>>()
        .join("/")
}

/// `YYYYMMDD'T'HHMMSS'Z'` for a time (UTC).
fn amz_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) → days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fff]Z` (the IMDS `Expiration`).
fn parse_utc(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u32>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let rest = s.get(19..)?;
    let rest = rest
        .strip_prefix('.')
        .map(|r| r.trim_start_matches(|c: char| c.is_ascii_digit()))
        .unwrap_or(rest);
    if !matches!(rest, "Z" | "z" | "+00:00") || !(1..=12).contains(&mo) || d == 0 || d > 31 {
        return None;
    }
    if h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let days = days_from_civil(i64::from(y), mo, d);
    let secs = days * 86_400 + i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(se);
    u64::try_from(secs)
        .ok()
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

/// One section of an INI-style AWS file: key → value (values may be secret).
type Section = BTreeMap<String, Zeroizing<String>>;

/// The section for `profile` in a credentials file (`[name]`) or a config file (`[profile
/// name]`, or `[default]`). `None` when the file has no such section.
fn ini_section(text: &str, profile: &str, config_file: bool) -> Option<Section> {
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
enum FileCreds {
    /// Static keys.
    Found(Credentials),
    /// Nothing usable; the reason, for the "tried" list.
    Skipped(String),
}

/// Reads the `profile` section of a shared file and takes static keys from it.
fn creds_from_file(
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

/// The AWS Secrets Manager backend. Its `Debug` output never shows credentials.
pub struct AwsBackend {
    client: reqwest::Client,
    /// Client for IMDS: short timeout, no proxy.
    imds_client: reqwest::Client,
    url: Url,
    /// The endpoint as shown in messages.
    endpoint: String,
    /// `Host` header value (signed).
    host: String,
    region: String,
    profile: String,
    env: Environment,
    timeout: Duration,
    creds: tokio::sync::Mutex<Option<Credentials>>,
}

impl fmt::Debug for AwsBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsBackend")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("profile", &self.profile)
            .field("timeout", &self.timeout)
            .field("credentials", &"[redacted]")
            .finish()
    }
}

impl AwsBackend {
    /// Builds the HTTP clients and resolves the region, profile and endpoint from the config
    /// and the process environment. Credentials are not read here but at request time.
    ///
    /// An invalid config (see [`AwsConfig::validate`]) or no region anywhere is a
    /// [`BackendError::Config`] naming the field.
    pub fn new(cfg: &AwsConfig, timeout: Duration) -> Result<Self, BackendError> {
        Self::with_environment(cfg, timeout, Environment::process())
    }

    /// As [`AwsBackend::new`], with environment variables (`AWS_*`, `HOME`) read from `env`.
    pub fn with_environment(
        cfg: &AwsConfig,
        timeout: Duration,
        env: Environment,
    ) -> Result<Self, BackendError> {
        let problems = cfg.validate("aws");
        if !problems.is_empty() {
            return Err(BackendError::Config(problems.join("; ")));
        }
        let profile = cfg
            .profile
            .as_deref()
            .map(|p| p.trim().to_string())
            .or_else(|| env.plain("AWS_PROFILE"))
            .unwrap_or_else(|| "default".to_string());
        let region = resolve_region(cfg, &env, &profile)?;
        let endpoint = cfg
            .endpoint
            .as_deref()
            .map(|e| e.trim().to_string())
            .unwrap_or_else(|| default_endpoint(&region));
        let url = parse_endpoint(&endpoint, cfg.allow_http)
            .map_err(|e| BackendError::Config(format!("aws.endpoint: {e}")))?;
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => {
                return Err(BackendError::Config(format!(
                    "aws.endpoint: `{endpoint}` has no host"
                )))
            }
        };
        let build_error = |e: reqwest::Error| {
            BackendError::Config(format!(
                "cannot build the HTTP client: {}",
                wire::error_chain(&e)
            ))
        };
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("dso/", env!("CARGO_PKG_VERSION")))
            // Signed requests are never replayed elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(build_error)?;
        let imds_client = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(IMDS_TIMEOUT)
            .connect_timeout(IMDS_TIMEOUT)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(build_error)?;
        Ok(Self {
            client,
            imds_client,
            url,
            endpoint,
            host,
            region,
            profile,
            env,
            timeout,
            creds: tokio::sync::Mutex::new(None),
        })
    }

    /// The region requests are signed for.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The endpoint requests go to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The shared credentials file and config file, from the environment or `~/.aws/`.
    fn shared_files(&self) -> (Option<PathBuf>, Option<PathBuf>) {
        shared_files(&self.env)
    }

    /// Cached credentials, or the chain resolved again when there are none or they are due.
    async fn credentials(&self) -> Result<Credentials, BackendError> {
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
    async fn forget_credentials(&self) {
        *self.creds.lock().await = None;
    }

    /// Env, then shared files, then IMDSv2. Errors list every source tried (never a value).
    async fn resolve_credentials(&self) -> Result<Credentials, BackendError> {
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
    async fn imds_credentials(&self) -> Result<Credentials, String> {
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

    /// Sends one signed JSON 1.1 request; returns the body of a 200 answer. `subject` (the
    /// secret path, or the action) is what error messages talk about.
    async fn call(
        &self,
        action: &str,
        body: &serde_json::Value,
        subject: &str,
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let creds = self.credentials().await?;
        let payload = body.to_string().into_bytes();
        let amz_date = amz_date(SystemTime::now());
        let target = format!("{SERVICE}.{action}");
        let mut signed: Vec<(String, String)> = vec![
            ("content-type".into(), CONTENT_TYPE.into()),
            ("host".into(), self.host.clone()),
            ("x-amz-date".into(), amz_date.clone()),
            ("x-amz-target".into(), target),
        ];
        let authorization = Zeroizing::new(sigv4_authorization(
            "POST",
            &canonical_uri(&self.url),
            "",
            &{
                let mut all = signed.clone();
                if let Some(t) = &creds.session_token {
                    all.push(("x-amz-security-token".into(), t.to_string()));
                }
                all
            },
            &payload,
            &SigningScope {
                access_key_id: &creds.access_key_id,
                secret_access_key: &creds.secret_access_key,
                amz_date: &amz_date,
                region: &self.region,
                service: SERVICE,
            },
        ));
        let mut headers = HeaderMap::new();
        for (k, v) in signed.drain(..) {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| BackendError::Config(format!("invalid header name {k}")))?;
            let value = HeaderValue::from_str(&v).map_err(|_| {
                BackendError::Config(format!(
                    "the {k} header would not be valid (endpoint {}, region {})",
                    self.endpoint, self.region
                ))
            })?;
            headers.insert(name, value);
        }
        let sensitive = |v: &str| {
            let mut h = HeaderValue::from_str(v).map_err(|_| {
                BackendError::Config(format!(
                    "the AWS credentials from {} cannot be sent in an HTTP header",
                    creds.source
                ))
            })?;
            h.set_sensitive(true);
            Ok::<_, BackendError>(h)
        };
        if let Some(t) = &creds.session_token {
            headers.insert("x-amz-security-token", sensitive(t)?);
        }
        headers.insert(reqwest::header::AUTHORIZATION, sensitive(&authorization)?);
        let resp = self
            .client
            .post(self.url.clone())
            .headers(headers)
            .body(payload)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        if resp.status() != StatusCode::OK {
            return Err(self.status_error(resp, subject, &creds).await);
        }
        self.read_body(resp, MAX_BODY).await
    }

    /// Reads at most `limit` bytes of body into a buffer that is zeroed when dropped.
    async fn read_body(
        &self,
        resp: reqwest::Response,
        limit: usize,
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        wire::read_bounded(resp, limit).await.map_err(|e| match e {
            wire::BodyError::TooBig => BackendError::Unavailable(format!(
                "Secrets Manager at {} sent a response larger than {} KiB; refusing it",
                self.endpoint,
                limit / 1024
            )),
            wire::BodyError::Transport(e) => self.transport_error(&e),
        })
    }

    /// The error for a non-200 answer, from its AWS error type (`__type` or
    /// `X-Amzn-ErrorType`) and message.
    async fn status_error(
        &self,
        resp: reqwest::Response,
        subject: &str,
        creds: &Credentials,
    ) -> BackendError {
        let status = resp.status();
        let header_type = resp
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let (body_type, message) = match self.read_body(resp, MAX_ERROR_BODY).await {
            Ok(body) => aws_error(&body),
            Err(_) => (None, None),
        };
        let kind = body_type
            .or(header_type)
            .map(|t| error_type_name(&t))
            .unwrap_or_default();
        let message = message.map(|m| scrub(&m, creds)).filter(|m| !m.is_empty());
        let detail = match (kind.is_empty(), &message) {
            (true, None) => format!("HTTP {}", status.as_u16()),
            (true, Some(m)) => format!("HTTP {}: {m}", status.as_u16()),
            (false, None) => format!("HTTP {} {kind}", status.as_u16()),
            (false, Some(m)) => format!("HTTP {} {kind}: {m}", status.as_u16()),
        };
        let deleted = message
            .as_deref()
            .is_some_and(|m| m.contains("marked for deletion") || m.contains("deleted"));
        match kind.as_str() {
            "ResourceNotFoundException" => {
                return BackendError::NotFound {
                    path: subject.to_string(),
                }
            }
            "InvalidRequestException" if deleted => {
                return BackendError::NotFound {
                    path: subject.to_string(),
                }
            }
            "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "IncompleteSignature"
            | "SignatureDoesNotMatch"
            | "InvalidClientTokenId"
            | "MissingAuthenticationToken"
            | "ExpiredTokenException"
            | "ExpiredToken"
            | "AccessDeniedException"
            | "AccessDenied"
            | "DecryptionFailure"
            | "KMSAccessDeniedException" => {}
            "ThrottlingException"
            | "RequestLimitExceeded"
            | "InternalServiceError"
            | "ServiceUnavailable" => {
                return BackendError::Unavailable(format!(
                    "Secrets Manager at {} answered `{subject}` with {detail}",
                    self.endpoint
                ))
            }
            _ if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN => {}
            _ if status.is_client_error() && !kind.is_empty() => {
                return BackendError::Config(format!(
                    "Secrets Manager at {} rejected the request for `{subject}` ({detail}): \
                     check the secret name or ARN and the provider's region",
                    self.endpoint
                ))
            }
            _ => {
                return BackendError::Unavailable(format!(
                    "Secrets Manager at {} answered `{subject}` with {detail}",
                    self.endpoint
                ))
            }
        }
        self.forget_credentials().await;
        BackendError::Denied(format!(
            "Secrets Manager at {} refused the credentials from {} for `{subject}` ({detail}): \
             check the access key and its secret, the session token's expiry, the host's clock, \
             and that the IAM policy allows this secret (and its KMS key) in region {}",
            self.endpoint, creds.source, self.region
        ))
    }

    fn transport_error(&self, e: &reqwest::Error) -> BackendError {
        if e.is_timeout() {
            return BackendError::Timeout(self.timeout);
        }
        BackendError::Unavailable(format!(
            "cannot reach Secrets Manager at {}: {}",
            self.endpoint,
            wire::error_chain(e)
        ))
    }

    /// A decode error without serde's text, which can quote the (secret) input.
    fn decode_error(&self, e: &serde_json::Error, subject: &str) -> BackendError {
        let kind = wire::json_error_kind(e);
        BackendError::Unavailable(format!(
            "Secrets Manager at {} answered `{subject}` with {kind} (line {}, column {})",
            self.endpoint,
            e.line(),
            e.column()
        ))
    }
}

/// `(error type, message)` of a JSON 1.1 error body, when it has them.
fn aws_error(body: &[u8]) -> (Option<String>, Option<String>) {
    #[derive(Deserialize)]
    struct ErrorBody {
        #[serde(rename = "__type")]
        kind: Option<String>,
        #[serde(alias = "Message")]
        message: Option<String>,
    }
    if let Ok(e) = serde_json::from_slice::<ErrorBody>(body) {
        return (e.kind, e.message);
    }
    // Some front ends (STS-style checks, moto's IAM layer) answer with an XML ErrorResponse.
    let text = String::from_utf8_lossy(body);
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let len = text[start..].find(&format!("</{name}>"))?;
        Some(text[start..start + len].to_string())
    };
    (tag("Code"), tag("Message"))
}

/// `com.amazonaws…#ResourceNotFoundException` or `ResourceNotFoundException:http://…` →
/// `ResourceNotFoundException`.
fn error_type_name(t: &str) -> String {
    let t = t.rsplit('#').next().unwrap_or(t);
    let t = t.split(':').next().unwrap_or(t);
    t.trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '_')
        .take(100)
        .collect()
}

/// An AWS error message, one line, shortened, with the credentials scrubbed out.
fn scrub(message: &str, creds: &Credentials) -> String {
    let secrets: Vec<&str> = [
        Some(&creds.secret_access_key),
        creds.session_token.as_ref(),
        Some(&creds.access_key_id),
    ]
    .into_iter()
    .flatten()
    .map(|s| s.as_str())
    .collect();
    wire::safe_text(message.trim(), &secrets, MAX_ERROR_TEXT)
}

/// The credentials file and config file: `AWS_SHARED_CREDENTIALS_FILE` / `AWS_CONFIG_FILE`, else
/// `$HOME/.aws/credentials` / `$HOME/.aws/config` (`None` without HOME).
fn shared_files(env: &Environment) -> (Option<PathBuf>, Option<PathBuf>) {
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
fn resolve_region(
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

/// Secret path check: a name or ARN, non-empty, no control characters.
fn check_path(path: &str) -> Result<(), BackendError> {
    if path.trim().is_empty() || path.len() > 2048 || path.chars().any(char::is_control) {
        return Err(BackendError::Config(format!(
            "secret path `{}` is invalid: give the secret's name (e.g. `prod/app/db`) or its \
             ARN, at most 2048 characters, without control characters",
            path.escape_default()
        )));
    }
    Ok(())
}

/// Maps a `GetSecretValue` answer to [`SecretData`]: a SecretString holding a JSON object of
/// strings becomes a map, any other SecretString one value, a SecretBinary (base64) the bytes.
/// Moves or wipes every string it was given.
fn secret_data(
    secret_string: Option<String>,
    secret_binary: Option<String>,
) -> Result<SecretData, &'static str> {
    match (secret_string, secret_binary) {
        (Some(mut s), binary) => {
            if let Some(mut b) = binary {
                b.zeroize();
            }
            let data = match serde_json::from_str::<serde_json::Value>(&s) {
                Ok(serde_json::Value::Object(mut map))
                    if map.values().all(serde_json::Value::is_string) =>
                {
                    let values = map
                        .iter_mut()
                        .map(|(k, v)| {
                            let text = match v {
                                serde_json::Value::String(t) => std::mem::take(t),
                                _ => String::new(),
                            };
                            (k.clone(), SecretValue::new(text.into_bytes()))
                        })
                        .collect();
                    s.zeroize();
                    SecretData::Map(values)
                }
                Ok(mut other) => {
                    zeroize_json(&mut other);
                    SecretData::Value(SecretValue::new(s.into_bytes()))
                }
                Err(_) => SecretData::Value(SecretValue::new(s.into_bytes())),
            };
            Ok(data)
        }
        (None, Some(mut b)) => {
            let decoded = base64::engine::general_purpose::STANDARD.decode(b.trim());
            b.zeroize();
            match decoded {
                Ok(bytes) => Ok(SecretData::Value(SecretValue::new(bytes))),
                Err(_) => Err("a SecretBinary that is not valid base64"),
            }
        }
        (None, None) => Err("neither SecretString nor SecretBinary"),
    }
}

#[async_trait]
impl SecretBackend for AwsBackend {
    async fn fetch(&self, path: &str) -> Result<SecretData, BackendError> {
        Ok(self.fetch_versioned(path).await?.data)
    }

    /// `GetSecretValue` (stage `AWSCURRENT`); the version is its `VersionId`.
    async fn fetch_versioned(&self, path: &str) -> Result<Fetched, BackendError> {
        check_path(path)?;
        let body = self
            .call(
                "GetSecretValue",
                &serde_json::json!({ "SecretId": path }),
                path,
            )
            .await?;

        #[derive(Deserialize)]
        struct Answer {
            #[serde(rename = "SecretString")]
            secret_string: Option<String>,
            #[serde(rename = "SecretBinary")]
            secret_binary: Option<String>,
            #[serde(rename = "VersionId")]
            version_id: Option<String>,
        }
        let answer: Answer =
            serde_json::from_slice(&body).map_err(|e| self.decode_error(&e, path))?;
        drop(body);
        let version = answer.version_id;
        let data = secret_data(answer.secret_string, answer.secret_binary).map_err(|what| {
            BackendError::Unavailable(format!(
                "Secrets Manager at {} answered `{path}` with {what}",
                self.endpoint
            ))
        })?;
        Ok(Fetched { data, version })
    }

    /// `DescribeSecret`: the version id that carries the `AWSCURRENT` stage. A secret scheduled
    /// for deletion is not found.
    async fn version(&self, path: &str) -> Result<Option<String>, BackendError> {
        check_path(path)?;
        let body = self
            .call(
                "DescribeSecret",
                &serde_json::json!({ "SecretId": path }),
                path,
            )
            .await?;

        #[derive(Deserialize)]
        struct Answer {
            #[serde(rename = "VersionIdsToStages")]
            versions: Option<BTreeMap<String, Vec<String>>>,
            #[serde(rename = "DeletedDate")]
            deleted: Option<serde_json::Value>,
        }
        let answer: Answer =
            serde_json::from_slice(&body).map_err(|e| self.decode_error(&e, path))?;
        if answer.deleted.is_some_and(|d| !d.is_null()) {
            return Err(BackendError::NotFound {
                path: path.to_string(),
            });
        }
        Ok(answer.versions.and_then(|v| {
            v.into_iter()
                .find(|(_, stages)| stages.iter().any(|s| s == "AWSCURRENT"))
                .map(|(id, _)| id)
        }))
    }

    /// `ListSecrets` with `MaxResults` 1: reachable, and the credentials are accepted.
    async fn probe(&self) -> Result<(), BackendError> {
        let body = self
            .call(
                "ListSecrets",
                &serde_json::json!({ "MaxResults": 1 }),
                "ListSecrets",
            )
            .await?;
        drop(body);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(30);

    fn cfg() -> AwsConfig {
        toml::from_str("").unwrap()
    }

    fn scope<'a>(
        id: &'a str,
        secret: &'a str,
        date: &'a str,
        service: &'a str,
    ) -> SigningScope<'a> {
        SigningScope {
            access_key_id: id,
            secret_access_key: secret,
            amz_date: date,
            region: "us-east-1",
            service,
        }
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The `get-vanilla` and `post-vanilla` cases of AWS's SigV4 test suite, and the GET Object
    /// example of the S3 SigV4 documentation.
    #[test]
    fn sigv4_matches_the_published_vectors() {
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        let headers = h(&[
            ("Host", "example.amazonaws.com"),
            ("X-Amz-Date", "20150830T123600Z"),
        ]);
        let s = scope("AKIDEXAMPLE", secret, "20150830T123600Z", "service");
        assert_eq!(
            sigv4_authorization("GET", "/", "", &headers, b"", &s),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
        assert!(
            sigv4_authorization("POST", "/", "", &headers, b"", &s).ends_with(
                "Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"
            )
        );

        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let headers = h(&[
            ("host", "examplebucket.s3.amazonaws.com"),
            ("range", "bytes=0-9"),
            ("x-amz-content-sha256", empty),
            ("x-amz-date", "20130524T000000Z"),
        ]);
        let s = scope(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "20130524T000000Z",
            "s3",
        );
        assert_eq!(
            sigv4_authorization("GET", "/test.txt", "", &headers, b"", &s),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    /// A Secrets Manager request pinned once, so a change to what is signed shows up here.
    #[test]
    fn sigv4_secretsmanager_request_is_stable() {
        let headers = h(&[
            ("content-type", CONTENT_TYPE),
            ("host", "secretsmanager.eu-west-1.amazonaws.com"),
            ("x-amz-date", "20240101T000000Z"),
            ("x-amz-target", "secretsmanager.GetSecretValue"),
        ]);
        let s = SigningScope {
            region: "eu-west-1",
            ..scope("AKIDEXAMPLE", "secret", "20240101T000000Z", SERVICE)
        };
        let a = sigv4_authorization("POST", "/", "", &headers, br#"{"SecretId":"app/db"}"#, &s);
        assert!(a.starts_with(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/eu-west-1/secretsmanager/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature="
        ), "{a}");
        assert!(!a.contains("secret,") && !a.ends_with("secret"));
        // Same input, same signature; another body, another one.
        assert_eq!(
            a,
            sigv4_authorization("POST", "/", "", &headers, br#"{"SecretId":"app/db"}"#, &s)
        );
        assert_ne!(
            a,
            sigv4_authorization("POST", "/", "", &headers, br#"{"SecretId":"app/dc"}"#, &s)
        );
    }

    #[test]
    fn dates_and_uris() {
        let t = UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        assert_eq!(amz_date(t), "20150830T123600Z");
        assert_eq!(parse_utc("2015-08-30T12:36:00Z"), Some(t));
        assert_eq!(parse_utc("2015-08-30T12:36:00.123Z"), Some(t));
        assert_eq!(
            parse_utc("2000-02-29T23:59:59Z"),
            Some(UNIX_EPOCH + Duration::from_secs(951_868_799))
        );
        assert_eq!(
            amz_date(UNIX_EPOCH + Duration::from_secs(1_735_603_200)),
            "20241231T000000Z"
        );
        for bad in [
            "",
            "2015-08-30",
            "2015-13-30T12:36:00Z",
            "2015-08-30T12:36:00+02:00",
            "x",
        ] {
            assert_eq!(parse_utc(bad), None, "{bad}");
        }
        assert_eq!(uri_encode("a b/~c%"), "a%20b%2F~c%25");
        assert_eq!(canonical_uri(&Url::parse("http://h:1").unwrap()), "/");
        assert_eq!(
            canonical_uri(&Url::parse("https://h/a b/").unwrap()),
            "/a%2520b/"
        );
    }

    #[test]
    fn config_defaults_and_validation() {
        let c = cfg();
        assert_eq!(c.region, None);
        assert_eq!(c.endpoint, None);
        assert!(!c.allow_http);
        assert!(c.validate("p").is_empty());
        let err = toml::from_str::<AwsConfig>("regoin = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("regoin"), "{err}");

        let ok: AwsConfig = toml::from_str(
            "region = \"eu-west-1\"\nendpoint = \"http://127.0.0.1:5000\"\nprofile = \"ci\"",
        )
        .unwrap();
        assert!(ok.validate("p").is_empty());
        for good in [
            "http://localhost:1",
            "http://[::1]:5000",
            "https://vpce.example.com/",
        ] {
            let mut c = cfg();
            c.endpoint = Some(good.into());
            assert!(c.validate("p").is_empty(), "{good}: {:?}", c.validate("p"));
        }

        let mut bad = cfg();
        bad.region = Some("EU West".into());
        bad.endpoint = Some("http://sm.internal:80".into());
        bad.profile = Some(" ".into());
        let errs = bad.validate("providers.aws");
        assert_eq!(errs.len(), 3, "{errs:#?}");
        for (e, field) in errs.iter().zip(["region", "endpoint", "profile"]) {
            assert!(e.starts_with(&format!("providers.aws.{field}: ")), "{e}");
        }
        assert!(errs[1].contains("allow_http"), "{}", errs[1]);
        bad.allow_http = true;
        assert_eq!(bad.validate("p").len(), 2);
        for e in [
            "ftp://h",
            "http://",
            "https://u:p@h",
            "https://h/?x=1",
            "nope",
        ] {
            let mut c = cfg();
            c.endpoint = Some(e.into());
            let errs = c.validate("p");
            assert_eq!(errs.len(), 1, "{e}: {errs:?}");
            assert!(errs[0].starts_with("p.endpoint: "), "{errs:?}");
        }
    }

    #[test]
    fn region_resolution_and_its_error() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().display().to_string();
        let env = Environment::fixed([("HOME", home.as_str())]);
        let err = AwsBackend::with_environment(&cfg(), T, env.clone()).unwrap_err();
        assert!(
            matches!(&err, BackendError::Config(m) if m.contains("aws.region") && m.contains("AWS_REGION")),
            "{err}"
        );
        let b = AwsBackend::with_environment(
            &cfg(),
            T,
            Environment::fixed([("AWS_DEFAULT_REGION", "eu-central-1")]),
        )
        .unwrap();
        assert_eq!(b.region(), "eu-central-1");
        assert_eq!(
            b.endpoint(),
            "https://secretsmanager.eu-central-1.amazonaws.com"
        );
        let b = AwsBackend::with_environment(
            &cfg(),
            T,
            Environment::fixed([("AWS_REGION", "cn-north-1"), ("AWS_DEFAULT_REGION", "x")]),
        )
        .unwrap();
        assert_eq!(
            b.endpoint(),
            "https://secretsmanager.cn-north-1.amazonaws.com.cn"
        );

        std::fs::create_dir(dir.path().join(".aws")).unwrap();
        std::fs::write(
            dir.path().join(".aws/config"),
            "[default]\nregion = us-west-2\n[profile ci]\nregion = ap-south-1\n",
        )
        .unwrap();
        let b = AwsBackend::with_environment(&cfg(), T, env.clone()).unwrap();
        assert_eq!(b.region(), "us-west-2");
        let mut c = cfg();
        c.profile = Some("ci".into());
        assert_eq!(
            AwsBackend::with_environment(&c, T, env).unwrap().region(),
            "ap-south-1"
        );
        c.region = Some("sa-east-1".into());
        assert_eq!(
            AwsBackend::with_environment(&c, T, Environment::fixed([("AWS_REGION", "us-east-1")]))
                .unwrap()
                .region(),
            "sa-east-1"
        );
    }

    #[test]
    fn ini_sections() {
        let text = "# c\n[default]\naws_access_key_id = A\n\n[other]\nAWS_Secret_Access_Key=B \n\
                    [profile ci]\nregion=r\n[sso-session ci]\nregion=z\n";
        let d = ini_section(text, "default", false).unwrap();
        assert_eq!(d.get("aws_access_key_id").map(|v| v.as_str()), Some("A"));
        let o = ini_section(text, "other", false).unwrap();
        assert_eq!(
            o.get("aws_secret_access_key").map(|v| v.as_str()),
            Some("B")
        );
        assert!(ini_section(text, "ci", false).is_none());
        let ci = ini_section(text, "ci", true).unwrap();
        assert_eq!(ci.get("region").map(|v| v.as_str()), Some("r"));
        assert!(ini_section(text, "other", true).is_none());
        assert!(ini_section(text, "default", true).is_some());
    }

    /// A backend in region us-east-1 whose environment is exactly `vars` plus HOME = `home`.
    fn backend_env(home: &std::path::Path, vars: &[(&str, &str)], endpoint: &str) -> AwsBackend {
        let mut all: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        all.push(("HOME".into(), home.display().to_string()));
        let mut c = cfg();
        c.region = Some("us-east-1".into());
        c.endpoint = Some(endpoint.into());
        AwsBackend::with_environment(&c, Duration::from_secs(5), Environment::fixed(all)).unwrap()
    }

    #[tokio::test]
    async fn credential_chain_env_then_files_then_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path();
        let off = ("AWS_EC2_METADATA_DISABLED", "true");
        let ep = "http://127.0.0.1:1";

        // Nothing anywhere: Denied, naming every source tried.
        let b = backend_env(home, &[off], ep);
        let err = b.credentials().await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, BackendError::Denied(_)), "{err:?}");
        for needle in [
            "AWS_ACCESS_KEY_ID",
            ".aws/credentials: no such file",
            ".aws/config: no such file",
            "AWS_EC2_METADATA_DISABLED",
        ] {
            assert!(msg.contains(needle), "`{needle}` missing from: {msg}");
        }

        // Shared credentials file, default profile and a named one.
        std::fs::create_dir(home.join(".aws")).unwrap();
        std::fs::write(
            home.join(".aws/credentials"),
            "[default]\naws_access_key_id = AKIDFILE\naws_secret_access_key = file-secret-1\n\
             [ci]\naws_access_key_id=AKIDCI\naws_secret_access_key=ci-secret\naws_session_token=tok\n\
             [half]\naws_access_key_id=AKIDHALF\n",
        )
        .unwrap();
        let c = backend_env(home, &[off], ep).credentials().await.unwrap();
        assert_eq!(c.access_key_id.as_str(), "AKIDFILE");
        assert_eq!(c.secret_access_key.as_str(), "file-secret-1");
        assert!(c.session_token.is_none());
        assert!(c.source.contains("profile `default`"), "{}", c.source);
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("file-secret-1") && !shown.contains("AKIDFILE"),
            "{shown}"
        );

        let c = backend_env(home, &[off, ("AWS_PROFILE", "ci")], ep)
            .credentials()
            .await
            .unwrap();
        assert_eq!(c.access_key_id.as_str(), "AKIDCI");
        assert_eq!(c.session_token.as_deref().map(String::as_str), Some("tok"));

        let err = backend_env(home, &[off, ("AWS_PROFILE", "half")], ep)
            .credentials()
            .await
            .unwrap_err();
        assert!(
            matches!(&err, BackendError::Config(m) if m.contains("only one of")),
            "{err}"
        );

        // A profile only in the config file, `[profile x]` form; an unsupported one.
        std::fs::write(
            home.join(".aws/config"),
            "[profile cfgonly]\naws_access_key_id=AKIDCFG\naws_secret_access_key=cfg-secret\n\
             [profile assume]\nrole_arn=arn:aws:iam::1:role/x\nsource_profile=default\n",
        )
        .unwrap();
        let c = backend_env(home, &[off, ("AWS_PROFILE", "cfgonly")], ep)
            .credentials()
            .await
            .unwrap();
        assert_eq!(c.access_key_id.as_str(), "AKIDCFG");
        assert!(c.source.contains(".aws/config"), "{}", c.source);
        let err = backend_env(home, &[off, ("AWS_PROFILE", "assume")], ep)
            .credentials()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("role_arn"), "{err}");

        // Environment variables win over the files; a custom credentials file path.
        let c = backend_env(
            home,
            &[
                off,
                ("AWS_ACCESS_KEY_ID", "AKIDENV"),
                ("AWS_SECRET_ACCESS_KEY", "env-secret"),
                ("AWS_SESSION_TOKEN", "env-token"),
            ],
            ep,
        )
        .credentials()
        .await
        .unwrap();
        assert_eq!(c.access_key_id.as_str(), "AKIDENV");
        assert_eq!(
            c.session_token.as_deref().map(String::as_str),
            Some("env-token")
        );
        let err = backend_env(home, &[off, ("AWS_ACCESS_KEY_ID", "AKIDENV")], ep)
            .credentials()
            .await
            .unwrap_err();
        assert!(
            matches!(&err, BackendError::Config(m) if m.contains("AWS_SECRET_ACCESS_KEY is not")),
            "{err}"
        );
        let other = home.join("creds-elsewhere");
        std::fs::write(
            &other,
            "[default]\naws_access_key_id=AKIDOTHER\naws_secret_access_key=o\n",
        )
        .unwrap();
        let c = backend_env(
            home,
            &[
                off,
                ("AWS_SHARED_CREDENTIALS_FILE", &other.display().to_string()),
            ],
            ep,
        )
        .credentials()
        .await
        .unwrap();
        assert_eq!(c.access_key_id.as_str(), "AKIDOTHER");
        std::fs::write(
            &other,
            "[default]\naws_access_key_id=AKID OTHER\naws_secret_access_key=o\n",
        )
        .unwrap();
        let err = backend_env(
            home,
            &[
                off,
                ("AWS_SHARED_CREDENTIALS_FILE", &other.display().to_string()),
            ],
            ep,
        )
        .credentials()
        .await
        .unwrap_err();
        assert!(matches!(err, BackendError::Config(_)), "{err}");
    }

    /// A tiny HTTP server: each request gets the answer of the first rule whose needle is in
    /// the request head; everything received is recorded.
    async fn canned(
        rules: Vec<(&'static str, Vec<u8>)>,
    ) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let rules = rules.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut head = Vec::new();
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head).into_owned();
                    let resp = rules
                        .iter()
                        .find(|(needle, _)| text.contains(needle))
                        .map(|(_, r)| r.clone())
                        .unwrap_or_else(|| http("404 Not Found", "", ""));
                    log.lock().unwrap().push(text);
                    let _ = sock.write_all(&resp).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        (format!("http://{addr}"), seen)
    }

    fn http(status: &str, extra_headers: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/x-amz-json-1.1\r\n{extra_headers}\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn instance_role_through_imdsv2_is_cached_until_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let far = "2999-01-01T00:00:00Z";
        let (imds, seen) = canned(vec![
            ("PUT /latest/api/token", http("200 OK", "", "imds-session-token")),
            (
                "GET /latest/meta-data/iam/security-credentials/ HTTP",
                http("200 OK", "", "web-role\n"),
            ),
            (
                "GET /latest/meta-data/iam/security-credentials/web-role",
                http(
                    "200 OK",
                    "",
                    &format!(
                        r#"{{"Code":"Success","AccessKeyId":"ASIAROLE","SecretAccessKey":"role-secret","Token":"role-token","Expiration":"{far}"}}"#
                    ),
                ),
            ),
        ])
        .await;
        let b = backend_env(
            dir.path(),
            &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds)],
            "http://127.0.0.1:1",
        );
        let c = b.credentials().await.unwrap();
        assert_eq!(c.access_key_id.as_str(), "ASIAROLE");
        assert_eq!(
            c.session_token.as_deref().map(String::as_str),
            Some("role-token")
        );
        assert!(c.source.contains("web-role"), "{}", c.source);
        assert_eq!(
            c.renew_at,
            parse_utc(far).and_then(|t| t.checked_sub(EXPIRY_MARGIN))
        );
        let _again = b.credentials().await.unwrap();
        let requests = seen.lock().unwrap().clone();
        assert_eq!(
            requests.len(),
            3,
            "cached credentials are reused: {requests:#?}"
        );
        assert!(requests[0]
            .to_ascii_lowercase()
            .contains("x-aws-ec2-metadata-token-ttl-seconds: 21600"));
        assert!(
            requests[1].contains("imds-session-token"),
            "{}",
            requests[1]
        );

        // Expiring within the margin: used now, resolved again next time.
        let soon = amz_date(SystemTime::now() + Duration::from_secs(60));
        let soon = format!(
            "{}-{}-{}T{}:{}:{}Z",
            &soon[0..4],
            &soon[4..6],
            &soon[6..8],
            &soon[9..11],
            &soon[11..13],
            &soon[13..15]
        );
        let (imds, seen) = canned(vec![
            ("PUT /latest/api/token", http("200 OK", "", "t")),
            (
                "GET /latest/meta-data/iam/security-credentials/ HTTP",
                http("200 OK", "", "r"),
            ),
            (
                "GET /latest/meta-data/iam/security-credentials/r",
                http(
                    "200 OK",
                    "",
                    &format!(
                        r#"{{"Code":"Success","AccessKeyId":"A","SecretAccessKey":"S","Token":"T","Expiration":"{soon}"}}"#
                    ),
                ),
            ),
        ])
        .await;
        let b = backend_env(
            dir.path(),
            &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds)],
            "http://127.0.0.1:1",
        );
        b.credentials().await.unwrap();
        b.credentials().await.unwrap();
        assert_eq!(seen.lock().unwrap().len(), 6);

        // No role attached: the chain ends with Denied saying so.
        let (imds, _) = canned(vec![("PUT /latest/api/token", http("200 OK", "", "t"))]).await;
        let b = backend_env(
            dir.path(),
            &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds)],
            "http://127.0.0.1:1",
        );
        let err = b.credentials().await.unwrap_err();
        assert!(
            matches!(&err, BackendError::Denied(m) if m.contains("no IAM role")),
            "{err}"
        );
    }

    #[test]
    fn secret_shapes() {
        let text = |v: &SecretValue| String::from_utf8(v.expose().to_vec()).unwrap();
        let SecretData::Map(m) =
            secret_data(Some(r#"{"user":"app","password":"pw"}"#.into()), None).unwrap()
        else {
            panic!("a JSON object of strings is a map")
        };
        assert_eq!(m.keys().collect::<Vec<_>>(), ["password", "user"]);
        assert_eq!(text(&m["password"]), "pw");
        for (input, why) in [
            ("plain-password", "not JSON"),
            (r#"{"n":5,"s":"x"}"#, "not all strings"),
            (r#"["a"]"#, "an array"),
            ("\"quoted\"", "a JSON string"),
            ("", "empty"),
        ] {
            let SecretData::Value(v) = secret_data(Some(input.into()), None).unwrap() else {
                panic!("{why}: expected a single value")
            };
            assert_eq!(text(&v), input, "{why}");
        }
        // A JSON object that is not all strings still serves `#key` through select.
        let data = secret_data(Some(r#"{"n":5,"s":"x"}"#.into()), None).unwrap();
        assert_eq!(text(&data.select(Some("n")).unwrap()), "5");

        let SecretData::Value(v) = secret_data(None, Some("AAEC/w==".into())).unwrap() else {
            panic!("binary is a value")
        };
        assert_eq!(v.expose(), &[0u8, 1, 2, 255]);
        assert!(secret_data(None, Some("***".into())).is_err());
        assert!(secret_data(None, None).is_err());
        // SecretString wins when both are present.
        assert!(matches!(
            secret_data(Some("s".into()), Some("AA==".into())).unwrap(),
            SecretData::Value(v) if v.expose() == b"s"
        ));
    }

    fn env_creds() -> Vec<(&'static str, &'static str)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "AKIDUNIT"),
            ("AWS_SECRET_ACCESS_KEY", "unit-secret-never-shown"),
            ("AWS_SESSION_TOKEN", "unit-token-never-shown"),
        ]
    }

    #[tokio::test]
    async fn requests_are_signed_and_answers_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let ok = r#"{"Name":"app/db","VersionId":"v-1","SecretString":"{\"password\":\"pw\"}"}"#;
        let describe = r#"{"Name":"app/db","VersionIdsToStages":{"v-0":["AWSPREVIOUS"],"v-1":["AWSCURRENT"]}}"#;
        let (ep, seen) = canned(vec![
            ("secretsmanager.GetSecretValue", http("200 OK", "", ok)),
            (
                "secretsmanager.DescribeSecret",
                http("200 OK", "", describe),
            ),
            (
                "secretsmanager.ListSecrets",
                http("200 OK", "", r#"{"SecretList":[]}"#),
            ),
        ])
        .await;
        let b = backend_env(dir.path(), &env_creds(), &ep);
        let f = b.fetch_versioned("app/db").await.unwrap();
        assert_eq!(f.version.as_deref(), Some("v-1"));
        assert_eq!(b.version("app/db").await.unwrap().as_deref(), Some("v-1"));
        b.probe().await.unwrap();
        let SecretData::Map(m) = f.data else {
            panic!("map expected")
        };
        assert_eq!(m["password"].expose(), b"pw");
        let first = seen.lock().unwrap()[0].to_ascii_lowercase();
        for needle in [
            "post / http/1.1",
            "x-amz-target: secretsmanager.getsecretvalue",
            "content-type: application/x-amz-json-1.1",
            "x-amz-security-token: unit-token-never-shown",
            "authorization: aws4-hmac-sha256 credential=akidunit/",
            "/us-east-1/secretsmanager/aws4_request, signedheaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target, signature=",
        ] {
            assert!(first.contains(needle), "`{needle}` not in:\n{first}");
        }
        assert!(!first.contains("unit-secret-never-shown"));
    }

    #[tokio::test]
    async fn errors_are_mapped_without_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let err_body = |t: &str, m: &str| format!(r#"{{"__type":"{t}","message":"{m}"}}"#);
        for (resp, expect, needle) in [
            (
                http(
                    "400 Bad Request",
                    "",
                    &err_body("ResourceNotFoundException", "nope"),
                ),
                "not_found",
                "app/db",
            ),
            (
                http(
                    "400 Bad Request",
                    "",
                    &err_body(
                        "com.amazonaws.x#UnrecognizedClientException",
                        "bad key AKIDUNIT",
                    ),
                ),
                "denied",
                "UnrecognizedClientException: bad key [redacted]",
            ),
            (
                http(
                    "400 Bad Request",
                    "",
                    &err_body("InvalidSignatureException", "sig"),
                ),
                "denied",
                "InvalidSignatureException",
            ),
            (
                http(
                    "400 Bad Request",
                    "",
                    &err_body("AccessDeniedException", "no"),
                ),
                "denied",
                "environment variables AWS_ACCESS_KEY_ID",
            ),
            (http("403 Forbidden", "", ""), "denied", "HTTP 403"),
            (
                http(
                    "403 Forbidden",
                    "",
                    "<ErrorResponse><Errors><Error><Code>InvalidClientTokenId</Code>\
                     <Message>The security token included in the request is invalid.</Message>\
                     </Error></Errors></ErrorResponse>",
                ),
                "denied",
                "HTTP 403 InvalidClientTokenId: The security token",
            ),
            (
                http(
                    "400 Bad Request",
                    "",
                    &err_body("InvalidRequestException", "it was marked for deletion"),
                ),
                "not_found",
                "app/db",
            ),
            (
                http(
                    "400 Bad Request",
                    "x-amzn-errortype: ValidationException:http://x\r\n",
                    "{}",
                ),
                "config",
                "ValidationException",
            ),
            (
                http(
                    "500 Internal Server Error",
                    "",
                    &err_body("InternalServiceError", "oops"),
                ),
                "unavailable",
                "InternalServiceError",
            ),
            (
                http("502 Bad Gateway", "", "<html>"),
                "unavailable",
                "HTTP 502",
            ),
            (
                http("200 OK", "", "{not json"),
                "unavailable",
                "invalid JSON",
            ),
            (
                http("200 OK", "", r#"{"Name":"x"}"#),
                "unavailable",
                "neither SecretString",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 2000000\r\n\r\n".to_vec(),
                "unavailable",
                "larger than",
            ),
        ] {
            let (ep, _) = canned(vec![("POST", resp)]).await;
            let b = backend_env(dir.path(), &env_creds(), &ep);
            let err = b.fetch("app/db").await.unwrap_err();
            let msg = err.to_string();
            assert_eq!(err.metric_label(), expect, "{needle}: {msg}");
            assert!(msg.contains(needle), "`{needle}` not in: {msg}");
            for secret in [
                "unit-secret-never-shown",
                "unit-token-never-shown",
                "AKIDUNIT",
            ] {
                assert!(!msg.contains(secret), "{secret} leaked: {msg}");
            }
            if expect == "unavailable" {
                assert!(msg.contains(&ep), "{msg}");
            }
        }
        let b = backend_env(dir.path(), &env_creds(), "http://127.0.0.1:1");
        assert!(matches!(b.fetch("").await, Err(BackendError::Config(_))));
        assert!(matches!(
            b.fetch("a\nb").await,
            Err(BackendError::Config(_))
        ));
        let shown = format!("{b:?}");
        assert!(
            !shown.contains("unit-secret") && !shown.contains("AKIDUNIT"),
            "{shown}"
        );
    }
}
