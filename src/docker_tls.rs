//! TLS to a `tcp://` engine: our own rustls client (only the configured CA is trusted, not the
//! system's roots), a client certificate when configured, and errors that say "TLS" and why.
//!
//! bollard gets it as a custom transport, so everything above the connection (exec upgrades,
//! event streams, version negotiation) is bollard's as for a Unix socket.

use std::path::Path;
use std::sync::Arc;

use bollard::{BollardRequest, Docker};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::endpoint::TlsFiles;

/// Why the TLS client could not be built (a file is missing or not what it should be).
#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub struct TlsSetupError(String);

/// A bollard client speaking HTTPS to `addr` (`HOST:PORT`) with `files`.
pub fn connect(addr: &str, files: &TlsFiles, timeout_secs: u64) -> Result<Docker, TlsSetupError> {
    let config = client_config(files)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnector::from((http, Arc::new(config)));
    let mut builder = Client::builder(TokioExecutor::new());
    builder.pool_max_idle_per_host(0);
    let client = builder.build(https);
    let url = format!("https://{addr}");
    let with_cert = files.client.is_some();
    Docker::connect_with_custom_transport(
        move |req: BollardRequest| {
            let client = client.clone();
            async move {
                client
                    .request(req)
                    .await
                    .map_err(|e| bollard::errors::Error::IOError {
                        err: std::io::Error::other(explain(&e, with_cert)),
                    })
            }
        },
        Some(url),
        timeout_secs,
        bollard::API_DEFAULT_VERSION,
    )
    .map_err(|e| TlsSetupError(e.to_string()))
}

fn client_config(files: &TlsFiles) -> Result<rustls::ClientConfig, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    let cas = certs(&files.ca, "agent.tls_ca")?;
    for ca in cas {
        roots.add(ca).map_err(|e| {
            TlsSetupError(format!(
                "agent.tls_ca {}: not a usable CA certificate ({e})",
                files.ca.display()
            ))
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError(e.to_string()))?
        .with_root_certificates(roots);
    Ok(match &files.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = certs(cert, "agent.tls_cert")?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                TlsSetupError(format!(
                    "agent.tls_key {}: no PEM private key ({e})",
                    key.display()
                ))
            })?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                TlsSetupError(format!(
                    "agent.tls_cert {} and agent.tls_key {} do not fit together ({e})",
                    cert.display(),
                    key.display()
                ))
            })?
        }
    })
}

fn certs(path: &Path, setting: &str) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let bad = |why: String| TlsSetupError(format!("{setting} {}: {why}", path.display()));
    let list = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not PEM ({e})")))?;
    if list.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(list)
}

/// The whole error chain in one line, prefixed with what a TLS failure means when it is one.
fn explain(e: &(dyn std::error::Error + 'static), with_cert: bool) -> String {
    let chain = crate::providers::wire::error_chain(e);
    match tls_reason(&chain, with_cert) {
        Some(why) => format!("TLS: {why} ({chain})"),
        None => chain,
    }
}

/// What a TLS failure means, from rustls' words (`with_cert`: we presented a client certificate).
pub fn tls_reason(chain: &str, with_cert: bool) -> Option<&'static str> {
    let c = chain.to_ascii_lowercase();
    let refused = c.contains("alert: badcertificate")
        || c.contains("alert: unknownca")
        || c.contains("alert: certificateunknown");
    Some(if c.contains("invalid peer certificate: unknownissuer") {
        "the engine's certificate is not signed by the configured CA (agent.tls_ca / ca.pem)"
    } else if c.contains("invalid peer certificate: expired") {
        "the engine's certificate has expired"
    } else if c.contains("invalid peer certificate: notvalidforname") {
        "the engine's certificate does not name this host (agent.docker_host)"
    } else if c.contains("invalid peer certificate") {
        "the engine's certificate was rejected"
    } else if c.contains("certificaterequired") || (refused && !with_cert) {
        "the engine requires a client certificate (agent.tls_cert, agent.tls_key)"
    } else if c.contains("alert: certificateexpired") {
        "the engine refused our client certificate: it has expired"
    } else if refused {
        "the engine refused our client certificate (not signed by a CA it trusts)"
    } else if c.contains("invalidcontenttype") || c.contains("corrupt message") {
        "the engine does not speak TLS on this port"
    } else if c.contains("received fatal alert") || c.contains("handshake") {
        "the handshake failed"
    } else {
        return None;
    })
}

/// A plain-HTTP client talking to a TLS port gets this answer from the engine.
pub fn plain_http_to_tls(status: u16, message: &str) -> bool {
    status == 400 && message.contains("HTTP request to an HTTPS server")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rustls_words_become_reasons() {
        let cases = [
            (
                "client error (Connect): invalid peer certificate: UnknownIssuer",
                "not signed by the configured CA",
            ),
            ("invalid peer certificate: Expired", "has expired"),
            (
                "received fatal alert: CertificateRequired",
                "requires a client certificate",
            ),
            (
                "received fatal alert: BadCertificate",
                "refused our client certificate",
            ),
            (
                "received corrupt message of type InvalidContentType",
                "does not speak TLS",
            ),
        ];
        for (chain, want) in cases {
            assert!(tls_reason(chain, true).unwrap().contains(want), "{chain}");
        }
        assert_eq!(tls_reason("connection refused", true), None);
        let no_cert = tls_reason("received fatal alert: BadCertificate", false).unwrap();
        assert!(
            no_cert.contains("requires a client certificate"),
            "{no_cert}"
        );
    }

    #[test]
    fn missing_or_empty_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let files = TlsFiles {
            ca: ca.clone(),
            client: None,
        };
        let e = client_config(&files).unwrap_err().to_string();
        assert!(
            e.starts_with("TLS: agent.tls_ca") && e.contains("ca.pem"),
            "{e}"
        );
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let e = client_config(&files).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
    }
}
