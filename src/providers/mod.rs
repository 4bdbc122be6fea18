//! Secret-backend adapters. Each implements [`dso_actors::backend::SecretBackend`].

use std::sync::Arc;

use dso_actors::backend::{BackendError, SecretBackend};
use dso_actors::provider::BackendFactory;

use crate::config::ProviderConfig;

pub mod aws;
pub mod file;
pub mod process;
pub mod vault;
pub(crate) mod wire;

/// How the ProviderConnection named `name` builds (and, after failures, rebuilds) its backend.
pub fn factory(name: &str, p: &ProviderConfig) -> BackendFactory {
    let name = name.to_string();
    match p.clone() {
        ProviderConfig::Vault(v) => Arc::new(move || {
            vault::VaultBackend::new(&v).map(|b| Arc::new(b) as Arc<dyn SecretBackend>)
        }),
        ProviderConfig::File(f) => Arc::new(move || {
            file::FileVault::open(&f)
                .map(|b| Arc::new(b) as Arc<dyn SecretBackend>)
                .map_err(|e| BackendError::Config(e.to_string()))
        }),
        ProviderConfig::Aws(a) => Arc::new(move || {
            aws::AwsBackend::new(&a).map(|b| Arc::new(b) as Arc<dyn SecretBackend>)
        }),
        ProviderConfig::Process(p) => Arc::new(move || {
            process::ProcessBackend::new(&name, &p).map(|b| Arc::new(b) as Arc<dyn SecretBackend>)
        }),
    }
}
