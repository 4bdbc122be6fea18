//! `dso status`: what the running agent delivered to which container (never values).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use dso_actors::exit::ExitCode;

/// Asks the agent (`GET /v1/status`) and prints its answer, as JSON or for people.
pub fn status(
    config: Option<&Path>,
    socket: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let socket = match super::admin_socket(config, socket) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let (code, body) = dso::admin::request(&socket, "GET", "/v1/status", None)?;
    if code != 200 {
        eprintln!("dso: agent answered {code}: {}", body.trim());
        return Ok(ExitCode::Failure);
    }
    if json {
        print!("{body}");
    } else {
        print_status(&body)?;
    }
    Ok(ExitCode::Ok)
}

/// The status JSON for people: Docker, providers, queue, then each container and its files.
fn print_status(body: &str) -> anyhow::Result<()> {
    let s: serde_json::Value = serde_json::from_str(body).context("status is not JSON")?;
    let yes = |b: &serde_json::Value| {
        if b.as_bool() == Some(true) {
            "up"
        } else {
            "DOWN"
        }
    };
    println!("docker: {}", yes(&s["docker"]));
    for p in s["providers"].as_array().into_iter().flatten() {
        println!(
            "provider {}: {}",
            p["name"].as_str().unwrap_or("?"),
            yes(&p["up"])
        );
    }
    println!(
        "queue depth: {}   cache entries: {}",
        s["queue_depth"], s["cache_entries"]
    );
    let containers = s["containers"].as_array().cloned().unwrap_or_default();
    if containers.is_empty() {
        println!("no containers ask for secrets");
    }
    for c in containers {
        let id = c["id"].as_str().unwrap_or("");
        println!(
            "\n{} ({})  {}  digest {}",
            c["name"].as_str().unwrap_or("?"),
            &id[..id.len().min(12)],
            c["result"].as_str().unwrap_or("?"),
            c["digest"].as_str().unwrap_or("-"),
        );
        if let Some(m) = c["message"].as_str() {
            println!("  {m}");
        }
        for f in c["files"].as_array().into_iter().flatten() {
            let digest = f["digest"].as_str().unwrap_or("-");
            let since = f["since"]
                .as_u64()
                .map(|t| {
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + Duration::from_secs(t),
                    )
                    .to_string()
                })
                .unwrap_or_else(|| "-".into());
            println!(
                "  {:<24} <- {}  version {}  digest {}  since {}",
                f["name"].as_str().unwrap_or("?"),
                f["source"].as_str().unwrap_or("?"),
                f["version"].as_str().unwrap_or("-"),
                &digest[..digest.len().min(12)],
                since
            );
        }
    }
    Ok(())
}
