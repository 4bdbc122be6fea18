//! DSO: a secret-injection agent for Docker hosts.
//!
//! This crate holds the CLI, the configuration and the adapters (Docker via bollard, secret
//! backends); the actor system lives in the `dso-actors` crate. See `ARCHITECTURE.md`.

pub mod admin;
pub mod audit;
pub mod config;
pub mod de;
pub mod docker;
pub mod dotenv;
pub mod envrun;
pub mod http;
pub mod procroot;
pub mod providers;
pub mod resolve_proto;
