//! Secret-backend adapters. Each implements [`dso_actors::backend::SecretBackend`].

pub mod file;
pub mod vault;
