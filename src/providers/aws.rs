//! AWS Secrets Manager backend (`type = "aws"`).
//!
//! Skeleton: the configuration is parsed and validated; the backend itself is being written.

use std::time::Duration;

use async_trait::async_trait;
use dso_actors::backend::{BackendError, SecretBackend};
use dso_actors::secret::SecretData;
use serde::{Deserialize, Serialize};

/// Configuration of an `aws` provider.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// AWS region, e.g. `"eu-west-1"`; default from `AWS_REGION` / `AWS_DEFAULT_REGION`.
    #[serde(default)]
    pub region: Option<String>,
    /// Custom endpoint URL (a VPC endpoint, or a local moto_server in tests).
    #[serde(default)]
    pub endpoint: Option<String>,
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

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

impl AwsConfig {
    /// Semantic problems, each `PREFIX.field: what is wrong and what to do`.
    pub fn validate(&self, prefix: &str) -> Vec<String> {
        let mut errs = Vec::new();
        if self.timeout.is_zero() {
            errs.push(format!("{prefix}.timeout: must be more than 0s"));
        }
        errs
    }
}

/// The AWS Secrets Manager backend.
pub struct AwsBackend {
    _cfg: AwsConfig,
}

impl AwsBackend {
    /// Builds the client (no network).
    pub fn new(cfg: &AwsConfig) -> Result<Self, BackendError> {
        Ok(Self { _cfg: cfg.clone() })
    }
}

#[async_trait]
impl SecretBackend for AwsBackend {
    async fn fetch(&self, _path: &str) -> Result<SecretData, BackendError> {
        Err(BackendError::Config(
            "the aws provider is not implemented yet".into(),
        ))
    }
}
