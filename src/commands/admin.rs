//! `dso reconcile`, `dso rotate`, `dso inject`: one request each to the running agent's admin
//! socket.

use std::path::{Path, PathBuf};

use dso_actors::exit::ExitCode;

/// `dso reconcile`: a reconciliation pass now.
pub fn reconcile(config: Option<&Path>, socket: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    admin_post(config, socket, "/v1/reconcile", None)
}

/// `dso rotate <provider>/<path>`: check that secret now; a change rotates it.
pub fn rotate(
    config: Option<&Path>,
    socket: Option<PathBuf>,
    reference: &str,
) -> anyhow::Result<ExitCode> {
    let body = serde_json::json!({ "ref": reference }).to_string();
    admin_post(config, socket, "/v1/rotate", Some(&body))
}

/// `dso inject <container>`: inject one container now.
pub fn inject(
    config: Option<&Path>,
    socket: Option<PathBuf>,
    container: &str,
) -> anyhow::Result<ExitCode> {
    let path = format!("/v1/containers/{container}/inject");
    admin_post(config, socket, &path, None)
}

/// One POST to the agent; its answer on stdout, or on stderr with [`ExitCode::NotFound`] for a
/// 404 and [`ExitCode::Failure`] otherwise.
fn admin_post(
    config: Option<&Path>,
    socket: Option<PathBuf>,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let socket = match super::admin_socket(config, socket) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let (code, body) = dso::admin::request(&socket, "POST", path, body)?;
    if (200..300).contains(&code) {
        print!("{body}");
        Ok(ExitCode::Ok)
    } else {
        eprintln!("dso: agent answered {code}: {}", body.trim());
        Ok(if code == 404 {
            ExitCode::NotFound
        } else {
            ExitCode::Failure
        })
    }
}
