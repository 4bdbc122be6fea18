//! One module per command (or family of commands). Each returns the [`ExitCode`] it ends with;
//! `main.rs` only parses and dispatches.

use std::path::{Path, PathBuf};

use dso::config::Config;
use dso_actors::exit::ExitCode;

pub mod admin;
pub mod agent;
pub mod check;
pub mod doctor;
pub mod health;
pub mod run;
pub mod secret;
pub mod status;

/// Loads the config, or prints why not and gives [`ExitCode::Config`].
pub fn load_config(path: Option<&Path>) -> Result<(Config, String), ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("dso: {e}");
        ExitCode::Config
    })
}

/// The admin socket: `--socket`, else `agent.admin_socket` from the config.
pub fn admin_socket(config: Option<&Path>, given: Option<PathBuf>) -> Result<PathBuf, ExitCode> {
    match given {
        Some(s) => Ok(s),
        None => load_config(config).map(|(c, _)| c.agent.admin_socket),
    }
}
