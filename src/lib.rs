//! DSO: a secret-injection agent for Docker hosts.
//!
//! This crate holds the CLI, the configuration and the adapters (Docker via bollard, secret
//! backends); the actor system lives in the `dso-actors` crate. See `ARCHITECTURE.md`.

pub mod accounts;
pub mod admin;
pub mod audit;
pub mod compose;
pub mod config;
pub mod de;
pub mod docker;
pub mod docker_tls;
pub mod dotenv;
pub mod endpoint;
pub mod envrun;
pub mod http;
pub mod hung;
pub mod layout;
pub mod listen;
pub mod logging;
pub mod pidproof;
pub mod procroot;
pub mod providers;
pub mod resolve_proto;
pub mod runwatch;
pub mod standby;
