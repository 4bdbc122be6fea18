//! `dso health`: exit 0 when the agent's `/healthz` answers 200 (Docker HEALTHCHECK).

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use dso_actors::exit::ExitCode;

/// Asks `/healthz` at `--addr`, else at `agent.listen` from the config.
pub fn health(config: Option<&Path>, addr: Option<String>) -> anyhow::Result<ExitCode> {
    let addr = match addr {
        Some(a) => a,
        None => match super::load_config(config) {
            Ok((c, _)) => c.agent.listen.to_string(),
            Err(code) => return Ok(code),
        },
    };
    probe(&addr)
}

/// `GET /healthz` over plain HTTP/1.0 with a 3 s read timeout.
fn probe(addr: &str) -> anyhow::Result<ExitCode> {
    use std::net::TcpStream;
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"GET /healthz HTTP/1.0\r\nHost: dso\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    if resp.starts_with("HTTP/1.1 200") || resp.starts_with("HTTP/1.0 200") {
        println!("ok");
        Ok(ExitCode::Ok)
    } else {
        eprintln!(
            "dso: unhealthy: {}",
            resp.lines().next().unwrap_or("no answer")
        );
        Ok(ExitCode::Failure)
    }
}
