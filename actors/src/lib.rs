//! DSO's actor system. See `ARCHITECTURE.md` at the repository root.
//!
//! No OS calls and no `unsafe` here: the adapters (Docker, backends, the `/proc` writer) live in
//! the `dso` crate and are injected through the traits in `engine`, `backend` and `direct`.

#![forbid(unsafe_code)]

pub mod access;
pub mod backend;
pub mod cache;
pub mod direct;
pub mod engine;
pub mod exit;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod hints;
pub mod injector;
pub mod messages;
pub mod metrics;
pub mod model;
pub mod owners;
pub mod provider;
pub mod reconciler;
pub mod restarter;
pub mod secret;
pub mod spec;
pub mod supervisor;
pub mod tarball;
#[cfg(test)]
mod tests;
pub mod text;
pub mod watcher;
