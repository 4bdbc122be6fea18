//! The admin API on a Unix socket (default `/run/dso/dso.sock`, mode 0660): status, reconcile,
//! rotate, inject, and resolve for `dso run` (the only endpoint that returns values). The listener and the shutdown future are
//! injected, as for the HTTP endpoint.
//!
//! | Method and path | What it does |
//! |---|---|
//! | `GET /v1/status` | JSON: containers (files, sources, digest, last result), providers, queue, cache |
//! | `POST /v1/reconcile` | runs a reconciliation pass now |
//! | `POST /v1/rotate` | body `{"ref": "<provider>/<path>"}`: checks that secret now; a change rotates it |
//! | `POST /v1/containers/{id or name}/inject` | injects one container now |
//! | `POST /v1/resolve` | body `{"refs": ["<provider>/<path>[#<key>]", …]}`: values through the cache, for `dso run` |
//!
//! `/v1/resolve` is the one endpoint that answers with values (base64, for `dso run`): whoever can
//! open the socket (0660, root and the socket's group) can already read every secret through
//! `docker exec`. Each call is logged with the references and the peer's uid/pid, never values.

use std::convert::Infallible;
use std::future::Future;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use actix::Addr;
use bytes::Bytes;
use dso_actors::messages::{CheckNow, GetSecret, GetStatus, InjectNow, Reconcile};
use dso_actors::secret::SecretRef;
use dso_actors::supervisor::Supervisor;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;

use crate::resolve_proto::{self, ResolveFailure, ResolveRequest, MAX_REFS};

/// Why the admin socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AdminSocketError {
    /// Creating the directory, removing a stale socket, binding or setting the mode failed.
    #[error("agent.admin_socket {path}: {op}: {reason}")]
    Io {
        /// The socket path.
        path: String,
        /// What we tried.
        op: &'static str,
        /// The OS error.
        reason: String,
    },
    /// Another agent is listening on the socket.
    #[error("agent.admin_socket {0}: another agent is already listening there")]
    InUse(String),
}

/// Binds the socket (mode 0660), replacing a stale one left by a crashed agent.
pub fn bind(path: &Path) -> Result<UnixListener, AdminSocketError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |op: &'static str| {
        move |e: std::io::Error| AdminSocketError::Io {
            path: path.display().to_string(),
            op,
            reason: e.to_string(),
        }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err("creating the directory"))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(AdminSocketError::InUse(path.display().to_string()));
        }
        std::fs::remove_file(path).map_err(err("removing a stale socket"))?;
    }
    let listener = UnixListener::bind(path).map_err(err("binding"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(err("setting mode 0660"))?;
    Ok(listener)
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *r.status_mut() = status;
    if let Ok(v) = "application/json".parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    json(status, serde_json::json!({ "error": message.into() }))
}

/// `POST /v1/resolve`: each reference through the Cache (one fetch per distinct path).
async fn resolve(body: &[u8], supervisor: &Addr<Supervisor>, peer: &str) -> Response<Full<Bytes>> {
    use base64::Engine as _;
    let Ok(ask) = serde_json::from_slice::<ResolveRequest>(body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "body must be JSON like {\"refs\": [\"vault/app/db#password\"]}",
        );
    };
    if ask.refs.len() > MAX_REFS {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{} references; the limit is {MAX_REFS}", ask.refs.len()),
        );
    }
    tracing::info!(peer, refs = %ask.refs.join(","), "resolving references for `dso run`");
    let mut values = serde_json::Map::new();
    let mut errors = serde_json::Map::new();
    let fail = |message: String, not_found: bool| {
        serde_json::to_value(ResolveFailure { message, not_found }).unwrap_or_default()
    };
    for raw in ask.refs {
        let r: SecretRef = match raw.parse() {
            Ok(r) => r,
            Err(e) => {
                errors.insert(raw, fail(e.to_string(), false));
                continue;
            }
        };
        match supervisor.send(GetSecret { source: r.clone() }).await {
            Ok(Ok(f)) => match f.data.select(r.key.as_deref()) {
                Ok(v) => {
                    let b64 = base64::engine::general_purpose::STANDARD.encode(v.expose());
                    values.insert(raw, serde_json::Value::String(b64));
                }
                Err(e) => {
                    errors.insert(raw, fail(e.to_string(), true));
                }
            },
            Ok(Err(e)) => {
                let not_found = matches!(
                    &e,
                    dso_actors::messages::FetchError::Backend {
                        source: dso_actors::backend::BackendError::NotFound { .. },
                        ..
                    }
                );
                errors.insert(raw, fail(e.to_string(), not_found));
            }
            Err(_) => return error(StatusCode::SERVICE_UNAVAILABLE, "agent is shutting down"),
        }
    }
    let mut answer = serde_json::json!({ "values": values, "errors": errors });
    let text = format!("{answer}\n");
    dso_actors::secret::zeroize_json(&mut answer);
    // The body buffer itself is freed by hyper after sending (not wiped): see the module docs.
    let mut r = Response::new(Full::new(Bytes::from(text)));
    if let Ok(v) = "application/json".parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    if let Ok(v) = "no-store".parse() {
        r.headers_mut().insert(hyper::header::CACHE_CONTROL, v);
    }
    r
}

async fn handle(
    req: Request<Incoming>,
    supervisor: Addr<Supervisor>,
    peer: String,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    Ok(match (method, path.as_str()) {
        (Method::GET, "/v1/status") => match supervisor.send(GetStatus).await {
            Ok(s) => json(StatusCode::OK, serde_json::to_value(s).unwrap_or_default()),
            Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "agent is shutting down"),
        },
        (Method::POST, "/v1/reconcile") => {
            let _ = supervisor.send(Reconcile { reason: "admin request" }).await;
            json(StatusCode::ACCEPTED, serde_json::json!({ "reconcile": "scheduled" }))
        }
        (Method::POST, "/v1/rotate") => {
            let body = match Limited::new(req.into_body(), 4096).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return Ok(error(StatusCode::PAYLOAD_TOO_LARGE, "body over 4 KiB")),
            };
            let reference = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("ref").and_then(|r| r.as_str()).map(str::to_string));
            let Some(reference) = reference else {
                return Ok(error(
                    StatusCode::BAD_REQUEST,
                    "body must be JSON like {\"ref\": \"vault/app/db\"}",
                ));
            };
            let r: SecretRef = match reference.parse() {
                Ok(r) => r,
                Err(e) => return Ok(error(StatusCode::BAD_REQUEST, format!("ref: {e}"))),
            };
            match supervisor
                .send(CheckNow {
                    provider: r.provider.clone(),
                    path: r.path.clone(),
                })
                .await
            {
                Ok(Ok(changed)) => json(
                    StatusCode::OK,
                    serde_json::json!({ "ref": format!("{}/{}", r.provider, r.path), "changed": changed }),
                ),
                Ok(Err(e)) => error(StatusCode::BAD_GATEWAY, e.to_string()),
                Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "agent is shutting down"),
            }
        }
        (Method::POST, resolve_proto::PATH) => {
            let limit = resolve_proto::MAX_REQUEST_BYTES;
            let body = match Limited::new(req.into_body(), limit).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    let message = format!("body over {} KiB", limit / 1024);
                    return Ok(error(StatusCode::PAYLOAD_TOO_LARGE, message));
                }
            };
            resolve(&body, &supervisor, &peer).await
        }
        (Method::POST, p) if p.starts_with("/v1/containers/") && p.ends_with("/inject") => {
            let id = &p["/v1/containers/".len()..p.len() - "/inject".len()];
            if id.is_empty() || id.contains('/') {
                return Ok(error(StatusCode::BAD_REQUEST, "use /v1/containers/{id or name}/inject"));
            }
            match supervisor.send(InjectNow { id: id.to_string() }).await {
                Ok(Ok(full)) => json(StatusCode::ACCEPTED, serde_json::json!({ "container": full, "inject": "scheduled" })),
                Ok(Err(e)) => error(StatusCode::NOT_FOUND, e),
                Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "agent is shutting down"),
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "unknown endpoint; see GET /v1/status, POST /v1/reconcile, POST /v1/rotate, POST /v1/containers/{id}/inject, POST /v1/resolve",
        ),
    })
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: UnixListener,
    supervisor: Addr<Supervisor>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let supervisor = supervisor.clone();
                let peer = match stream.peer_cred() {
                    Ok(c) => format!("uid={} pid={}", c.uid(), c.pid().unwrap_or(0)),
                    Err(_) => "unknown".to_string(),
                };
                actix_rt::spawn(async move {
                    let svc = service_fn(move |req| handle(req, supervisor.clone(), peer.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        }
    }
}

/// Why an admin request from the CLI failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    /// No agent listens on the socket.
    #[error("cannot reach the agent at {path}: {reason} (is `dso agent` running? set --socket or agent.admin_socket)")]
    Connect {
        /// The socket.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// The exchange failed midway.
    #[error("admin request to {path} failed: {reason}")]
    Io {
        /// The socket.
        path: String,
        /// Why.
        reason: String,
    },
}

/// One request over the socket: (status, body).
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), AdminClientError> {
    let io = |e: std::io::Error| AdminClientError::Io {
        path: socket.display().to_string(),
        reason: e.to_string(),
    };
    let mut s =
        std::os::unix::net::UnixStream::connect(socket).map_err(|e| AdminClientError::Connect {
            path: socket.display().to_string(),
            reason: e.to_string(),
        })?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io)?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: dso\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(io)?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(io)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    // `/v1/resolve` answers carry values: wipe our copy of the raw response.
    zeroize::Zeroize::zeroize(&mut resp);
    Ok((status, body))
}
