//! DSO's actor system. See `ARCHITECTURE.md` at the repository root.

pub mod backend;
pub mod cache;
pub mod direct;
pub mod engine;
pub mod exit;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod injector;
pub mod messages;
pub mod metrics;
pub mod model;
pub mod provider;
pub mod reconciler;
pub mod restarter;
pub mod secret;
pub mod spec;
pub mod supervisor;
pub mod tarball;
#[cfg(test)]
mod tests;
pub mod watcher;
