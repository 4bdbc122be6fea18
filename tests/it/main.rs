//! One integration-test binary, topic modules (as ripgrep does). Everything here runs against real
//! services that `scripts/test` installs and starts: Docker Engine, OpenBao, promtool.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod engine2;
mod support;

mod access;
mod admin;
mod aws_provider;
mod cli;
mod envrun;
mod faults;
mod hostile;
mod inject;
mod lifecycle;
mod limits;
mod metrics;
mod named_users;
mod outage;
mod podman;
mod process_provider;
mod reload;
mod rotation;
mod run_watch;
mod standby;
mod starve;
mod swarm;
mod tls;
mod vault_env;
mod vault_provider;
