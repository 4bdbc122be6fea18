//! Secret-backend adapters. Each implements [`dso_actors::backend::SecretBackend`].

pub mod aws;
pub mod file;
pub mod process;
pub mod vault;
