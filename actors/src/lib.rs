//! DSO's actor system. See `ARCHITECTURE.md` at the repository root.

pub mod backend;
pub mod engine;
pub mod secret;
