//! The Secrets Manager client: signed calls, errors (credentials scrubbed), answers, and the `SecretBackend` implementation.

use super::*;

/// The AWS Secrets Manager backend. Its `Debug` output never shows credentials.
pub struct AwsBackend {
    pub(super) client: reqwest::Client,
    /// Client for IMDS: short timeout, no proxy.
    pub(super) imds_client: reqwest::Client,
    pub(super) url: Url,
    /// The endpoint as shown in messages.
    pub(super) endpoint: String,
    /// `Host` header value (signed).
    pub(super) host: String,
    pub(super) region: String,
    pub(super) profile: String,
    pub(super) env: Environment,
    pub(super) timeout: Duration,
    pub(super) creds: tokio::sync::Mutex<Option<Credentials>>,
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

    /// Sends one signed JSON 1.1 request; returns the body of a 200 answer. `subject` (the
    /// secret path, or the action) is what error messages talk about.
    pub(super) async fn call(
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
    pub(super) async fn read_body(
        &self,
        resp: reqwest::Response,
        limit: usize,
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let server = format!("Secrets Manager at {}", self.endpoint);
        wire::read_body(resp, limit, &server, |e| self.transport_error(e)).await
    }

    /// The error for a non-200 answer, from its AWS error type (`__type` or
    /// `X-Amzn-ErrorType`) and message.
    pub(super) async fn status_error(
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

    pub(super) fn transport_error(&self, e: &reqwest::Error) -> BackendError {
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
    pub(super) fn decode_error(&self, e: &serde_json::Error, subject: &str) -> BackendError {
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
pub(super) fn aws_error(body: &[u8]) -> (Option<String>, Option<String>) {
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
pub(super) fn error_type_name(t: &str) -> String {
    let t = t.rsplit('#').next().unwrap_or(t);
    let t = t.split(':').next().unwrap_or(t);
    t.trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '_')
        .take(100)
        .collect()
}

/// An AWS error message, one line, shortened, with the credentials scrubbed out.
pub(super) fn scrub(message: &str, creds: &Credentials) -> String {
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

/// Secret path check: a name or ARN, non-empty, no control characters.
pub(super) fn check_path(path: &str) -> Result<(), BackendError> {
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
pub(super) fn secret_data(
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
