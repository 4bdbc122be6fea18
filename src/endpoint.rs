//! Where the container engine is and how to talk to it: a Unix socket on this host, or `tcp://`
//! (plain only on loopback or when explicitly allowed, else TLS with the Docker CLI's files).
//!
//! Pure: the caller passes the configured values and the `DOCKER_*` environment; no I/O here
//! beyond nothing (the TLS files are read when the client is built, in `docker_tls.rs`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The engine endpoint in effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `unix:///PATH`: the engine runs on this host (the direct write path is possible).
    Unix(PathBuf),
    /// `tcp://HOST:PORT` (or `http://`, `https://`): a remote engine, always the exec path.
    Tcp {
        /// `HOST:PORT`.
        addr: String,
        /// TLS settings; `None`: plain HTTP (loopback or `allow_insecure_tcp` only).
        tls: Option<TlsFiles>,
    },
}

/// PEM files for TLS to the engine, the way the Docker CLI takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA that signed the engine's certificate (the only one trusted).
    pub ca: PathBuf,
    /// Client certificate and key; `None`: no client certificate is presented.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// What the caller configured (`agent.*`) and found in the environment.
#[derive(Debug, Clone, Default)]
pub struct EndpointSettings<'a> {
    /// `agent.docker_host`, else `DOCKER_HOST`, else the default socket.
    pub host: &'a str,
    /// `agent.tls_ca`.
    pub tls_ca: Option<&'a Path>,
    /// `agent.tls_cert`.
    pub tls_cert: Option<&'a Path>,
    /// `agent.tls_key`.
    pub tls_key: Option<&'a Path>,
    /// `agent.allow_insecure_tcp`.
    pub allow_insecure_tcp: bool,
    /// `DOCKER_TLS_VERIFY` (set and not empty, as the Docker CLI reads it).
    pub env_tls_verify: bool,
    /// `DOCKER_CERT_PATH` (or `~/.docker` as the CLI defaults).
    pub env_cert_path: Option<PathBuf>,
}

impl Endpoint {
    /// Resolves the settings to an endpoint, or says which setting is wrong.
    pub fn resolve(s: &EndpointSettings<'_>) -> Result<Endpoint, String> {
        let host = s.host;
        let explicit = s.tls_ca.is_some() || s.tls_cert.is_some() || s.tls_key.is_some();
        if let Some(path) = host.strip_prefix("unix://") {
            if explicit {
                return Err(format!(
                    "agent.tls_ca/tls_cert/tls_key apply to a tcp:// engine, not `{host}`"
                ));
            }
            if path.is_empty() {
                return Err("agent.docker_host: `unix://` needs a socket path".into());
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        let (scheme, addr) = host.split_once("://").ok_or_else(|| {
            format!(
                "agent.docker_host: `{host}` must start with unix://, tcp://, http:// or https://"
            )
        })?;
        if !["tcp", "http", "https"].contains(&scheme) {
            return Err(format!(
                "agent.docker_host: `{host}` must start with unix://, tcp://, http:// or https://"
            ));
        }
        let addr = addr.trim_end_matches('/');
        if addr.is_empty() || addr.contains('/') {
            return Err(format!(
                "agent.docker_host: `{host}` must be tcp://HOST:PORT"
            ));
        }
        let addr = if has_port(addr) {
            addr.to_string()
        } else {
            // The Docker CLI's defaults: 2376 with TLS, 2375 without.
            let tls_wanted = explicit || s.env_tls_verify || scheme == "https";
            format!("{addr}:{}", if tls_wanted { 2376 } else { 2375 })
        };
        let tls = if explicit {
            let ca = s.tls_ca.ok_or(
                "agent.tls_cert/tls_key are set but agent.tls_ca is not: the engine's CA is required",
            )?;
            let client = match (s.tls_cert, s.tls_key) {
                (Some(c), Some(k)) => Some((c.to_path_buf(), k.to_path_buf())),
                (None, None) => None,
                (Some(_), None) => return Err("agent.tls_cert is set without agent.tls_key".into()),
                (None, Some(_)) => return Err("agent.tls_key is set without agent.tls_cert".into()),
            };
            Some(TlsFiles {
                ca: ca.to_path_buf(),
                client,
            })
        } else if s.env_tls_verify {
            let dir = s.env_cert_path.clone().ok_or(
                "DOCKER_TLS_VERIFY is set but neither DOCKER_CERT_PATH nor a home directory is",
            )?;
            Some(TlsFiles {
                ca: dir.join("ca.pem"),
                client: Some((dir.join("cert.pem"), dir.join("key.pem"))),
            })
        } else {
            None
        };
        if tls.is_none() {
            if scheme == "https" {
                return Err(format!(
                    "agent.docker_host: `{host}` asks for TLS: set agent.tls_ca (and tls_cert, \
                     tls_key), or DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH"
                ));
            }
            if !s.allow_insecure_tcp && !is_loopback(&addr) {
                return Err(format!(
                    "agent.docker_host: `{host}` is plain TCP to another host: anyone on that \
                     network could control the engine and read every secret. Use TLS \
                     (agent.tls_ca, tls_cert, tls_key, or DOCKER_TLS_VERIFY=1 and \
                     DOCKER_CERT_PATH), or set agent.allow_insecure_tcp = true"
                ));
            }
        }
        Ok(Endpoint::Tcp { addr, tls })
    }

    /// The engine runs on this host (a Unix socket): the direct write path may be used.
    pub fn is_local(&self) -> bool {
        matches!(self, Endpoint::Unix(_))
    }

    /// One line for logs and `doctor`: where, and how it is protected.
    pub fn describe(&self) -> String {
        match self {
            Endpoint::Unix(p) => format!("unix://{}", p.display()),
            Endpoint::Tcp { addr, tls: None } => format!("tcp://{addr} (plain TCP, no TLS)"),
            Endpoint::Tcp {
                addr,
                tls: Some(TlsFiles { client: None, .. }),
            } => format!("tcp://{addr} (TLS, no client certificate)"),
            Endpoint::Tcp { addr, .. } => format!("tcp://{addr} (TLS, client certificate)"),
        }
    }
}

fn has_port(addr: &str) -> bool {
    match addr.rsplit_once(':') {
        // `[::1]:2376`, `host:2376`; a bare IPv6 literal has colons but is not bracketed.
        Some((h, p)) => {
            !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (!h.contains(':') || h.ends_with(']'))
        }
        None => false,
    }
}

/// `HOST:PORT` names this host's loopback (`localhost`, `127.0.0.0/8`, `[::1]`).
fn is_loopback(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn settings(host: &str) -> EndpointSettings<'_> {
        EndpointSettings {
            host,
            ..Default::default()
        }
    }

    #[test]
    fn unix_is_local() {
        let e = Endpoint::resolve(&settings("unix:///run/podman/podman.sock")).unwrap();
        assert_eq!(e, Endpoint::Unix("/run/podman/podman.sock".into()));
        assert!(e.is_local());
    }

    #[test]
    fn plain_tcp_only_on_loopback_or_when_allowed() {
        for ok in [
            "tcp://127.0.0.1:2375",
            "tcp://localhost:2375",
            "tcp://[::1]:2375",
            "http://127.0.0.2",
        ] {
            let e = Endpoint::resolve(&settings(ok)).unwrap();
            assert!(matches!(e, Endpoint::Tcp { tls: None, .. }), "{ok}");
            assert!(!e.is_local());
        }
        let err = Endpoint::resolve(&settings("tcp://10.0.0.5:2375")).unwrap_err();
        assert!(
            err.contains("plain TCP") && err.contains("allow_insecure_tcp"),
            "{err}"
        );
        let mut s = settings("tcp://10.0.0.5:2375");
        s.allow_insecure_tcp = true;
        assert!(Endpoint::resolve(&s).is_ok());
        let err = Endpoint::resolve(&settings("https://10.0.0.5:2376")).unwrap_err();
        assert!(err.contains("asks for TLS"), "{err}");
    }

    #[test]
    fn tls_from_explicit_files_or_the_docker_cli_environment() {
        let mut s = settings("tcp://engine.example:2376");
        s.tls_ca = Some(Path::new("/c/ca.pem"));
        s.tls_cert = Some(Path::new("/c/cert.pem"));
        s.tls_key = Some(Path::new("/c/key.pem"));
        let e = Endpoint::resolve(&s).unwrap();
        assert_eq!(
            e.describe(),
            "tcp://engine.example:2376 (TLS, client certificate)"
        );
        s.tls_key = None;
        assert!(Endpoint::resolve(&s)
            .unwrap_err()
            .contains("tls_cert is set without"));
        s.tls_cert = None;
        let e = Endpoint::resolve(&s).unwrap();
        assert_eq!(
            e.describe(),
            "tcp://engine.example:2376 (TLS, no client certificate)"
        );
        s.tls_ca = None;
        s.tls_key = Some(Path::new("/c/key.pem"));
        assert!(Endpoint::resolve(&s).unwrap_err().contains("tls_ca is not"));

        let mut s = settings("tcp://engine.example");
        s.env_tls_verify = true;
        s.env_cert_path = Some("/home/u/.docker".into());
        let Endpoint::Tcp { addr, tls: Some(t) } = Endpoint::resolve(&s).unwrap() else {
            panic!("not TLS")
        };
        assert_eq!(addr, "engine.example:2376");
        assert_eq!(t.ca, Path::new("/home/u/.docker/ca.pem"));
        assert_eq!(
            t.client,
            Some((
                "/home/u/.docker/cert.pem".into(),
                "/home/u/.docker/key.pem".into()
            ))
        );
    }

    #[test]
    fn bad_hosts_are_named() {
        for bad in [
            "ftp://x",
            "docker.sock",
            "tcp://",
            "tcp://h:1/path",
            "unix://",
        ] {
            let err = Endpoint::resolve(&settings(bad)).unwrap_err();
            assert!(err.contains("agent.docker_host"), "{bad}: {err}");
        }
        let mut s = settings("unix:///var/run/docker.sock");
        s.tls_ca = Some(Path::new("/c/ca.pem"));
        assert!(Endpoint::resolve(&s)
            .unwrap_err()
            .contains("apply to a tcp://"));
    }
}
