//! The secret-backend trait: what a ProviderConnection needs from a store.
//!
//! Real adapters (Vault/OpenBao, the encrypted file vault, …) live in the `dso` crate and implement
//! this; the actor only ever sees `Arc<dyn SecretBackend>`.

use async_trait::async_trait;

use crate::secret::SecretData;

/// What a backend returned for a path, with the backend's own version of it when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The secret.
    pub data: SecretData,
    /// The backend's version of this value (KV v2 `version`, AWS `VersionId`, …), shown in
    /// status and used for cheap change detection; `None` when the backend has none.
    pub version: Option<String>,
}

/// Why a backend request failed. Variants that say `connection` count toward the
/// five-consecutive-failures restart of a ProviderConnection; the others are answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The path does not exist in the backend.
    #[error("secret `{path}` not found")]
    NotFound {
        /// The path asked for.
        path: String,
    },
    /// The backend refused our credentials (HTTP 401/403, bad key file, wrong passphrase).
    #[error("permission denied: {0}")]
    Denied(String),
    /// The backend could not be reached or answered garbage (connection refused, TLS, 5xx, decode).
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The request did not finish within the provider's timeout.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The backend's own configuration is wrong (e.g. missing token variable); fix the config.
    #[error("misconfigured: {0}")]
    Config(String),
}

impl BackendError {
    /// True for failures of the connection itself (not answers such as "not found").
    pub fn is_connection_failure(&self) -> bool {
        matches!(
            self,
            BackendError::Unavailable(_) | BackendError::Timeout(_) | BackendError::Denied(_)
        )
    }

    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            BackendError::NotFound { .. } => "not_found",
            BackendError::Denied(_) => "denied",
            BackendError::Unavailable(_) => "unavailable",
            BackendError::Timeout(_) => "timeout",
            BackendError::Config(_) => "config",
        }
    }
}

/// A secret store.
#[async_trait]
pub trait SecretBackend: Send + Sync + 'static {
    /// Fetches everything stored at `path`.
    async fn fetch(&self, path: &str) -> Result<SecretData, BackendError>;

    /// Fetches `path` with the backend's version of it. Default: [`SecretBackend::fetch`], no
    /// version. Backends whose read answers carry a version should override this.
    async fn fetch_versioned(&self, path: &str) -> Result<Fetched, BackendError> {
        Ok(Fetched {
            data: self.fetch(path).await?,
            version: None,
        })
    }

    /// The current version of `path`, read cheaply without the value (KV v2 metadata, AWS
    /// `DescribeSecret`). It must equal the `version` [`SecretBackend::fetch_versioned`] returns
    /// for the same content. `None` (the default) when the backend cannot tell: the Cache then
    /// re-fetches the value to detect changes.
    async fn version(&self, path: &str) -> Result<Option<String>, BackendError> {
        let _ = path;
        Ok(None)
    }

    /// A cheap liveness/auth check (e.g. token lookup). Default: always fine.
    async fn probe(&self) -> Result<(), BackendError> {
        Ok(())
    }
}
