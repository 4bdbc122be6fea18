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
//! `docker exec`. Each call is logged with the references and the peer's uid/gid/pid, never values.
//!
//! With `[[access]]` rules, each connection's peer credentials (`SO_PEERCRED`) decide: `callers`
//! rules say which references `/v1/resolve` returns to which uid/gid (a request with one reference
//! no rule allows is refused whole, 403), and the other endpoints need an `admin = true` caller
//! rule; root is allowed unless a caller rule names uid 0. Without rules everything is allowed.

use std::convert::Infallible;
use std::future::Future;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use std::sync::Arc;

use actix::Addr;
use bytes::Bytes;
use dso_actors::access::{AccessRules, Caller};
use dso_actors::messages::{
    CheckNow, GetSecret, GetStatus, InjectNow, Reconcile, Subscribe, Unsubscribe,
};
use dso_actors::secret::SecretRef;
use dso_actors::supervisor::Supervisor;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
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

/// Who is on the other end of one connection.
#[derive(Clone)]
struct Peer {
    /// `uid=… gid=… pid=…` for logs.
    text: String,
    /// The credentials; None when the OS did not say (then only an open rule set lets it in).
    caller: Option<Caller>,
    /// The `[[access]]` rules.
    access: Arc<AccessRules>,
}

impl Peer {
    fn is_admin(&self) -> bool {
        self.access.is_open() || self.caller.is_some_and(|c| self.access.caller_is_admin(c))
    }
}

/// The caller may not resolve one of `refs`: the message names them and the rules considered.
fn check_resolve(peer: &Peer, refs: &[String]) -> Result<(), String> {
    if peer.access.is_open() {
        return Ok(());
    }
    let Some(caller) = peer.caller else {
        return Err(
            "the agent could not read this connection's credentials; [[access]] rules are in force"
                .into(),
        );
    };
    // References that do not parse are answered one by one below.
    let parsed: Vec<SecretRef> = refs.iter().filter_map(|r| r.parse().ok()).collect();
    peer.access
        .check_caller(caller, &parsed)
        .map_err(|d| format!("caller uid={} gid={}: {d}", caller.uid, caller.gid))
}

/// `POST /v1/resolve`: each reference through the Cache (one fetch per distinct path).
/// A response body that is zeroed when hyper drops it, after sending.
struct Wiped(zeroize::Zeroizing<Vec<u8>>);

impl AsRef<[u8]> for Wiped {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// `{"values":{REF:BASE64,…},"errors":{…}}` in one buffer sized once (no reallocation leaves a
/// copy behind) and zeroed when the body is dropped; the base64 strings are zeroed by the caller.
fn wiped_answer(
    values: &[(String, zeroize::Zeroizing<String>)],
    errors: &serde_json::Map<String, serde_json::Value>,
) -> Bytes {
    let keys: Vec<String> = values
        .iter()
        .map(|(k, _)| serde_json::Value::String(k.clone()).to_string())
        .collect();
    let errors = serde_json::Value::Object(errors.clone()).to_string();
    let size = keys
        .iter()
        .zip(values)
        .map(|(k, (_, v))| k.len() + v.len() + 4)
        .sum::<usize>()
        + errors.len()
        + 32;
    let mut out = zeroize::Zeroizing::new(Vec::with_capacity(size));
    out.extend_from_slice(b"{\"values\":{");
    for (i, (k, (_, v))) in keys.iter().zip(values).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b":\"");
        out.extend_from_slice(v.as_bytes());
        out.push(b'"');
    }
    out.extend_from_slice(b"},\"errors\":");
    out.extend_from_slice(errors.as_bytes());
    out.extend_from_slice(b"}\n");
    debug_assert!(out.len() <= size);
    Bytes::from_owner(Wiped(out))
}

async fn resolve(body: &[u8], supervisor: &Addr<Supervisor>, peer: &Peer) -> Response<Full<Bytes>> {
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
    if let Err(message) = check_resolve(peer, &ask.refs) {
        tracing::warn!(peer = %peer.text, result = "denied", "access denied: {message}");
        return error(StatusCode::FORBIDDEN, message);
    }
    for id in [&ask.watch, &ask.unwatch].into_iter().flatten() {
        if id.is_empty()
            || id.len() > resolve_proto::MAX_WATCH_ID
            || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return error(
                StatusCode::BAD_REQUEST,
                "a watch id is 1 to 64 letters, digits or `-`",
            );
        }
    }
    if let Some(id) = &ask.unwatch {
        tracing::info!(peer = %peer.text, watch = %id, "`dso run --watch` ended");
        if supervisor
            .send(Unsubscribe {
                container: format!("dso-run:{id}"),
            })
            .await
            .is_err()
        {
            return error(StatusCode::SERVICE_UNAVAILABLE, "agent is shutting down");
        }
    }
    tracing::info!(peer = %peer.text, refs = %ask.refs.join(","), "resolving references for `dso run`");
    if let Some(id) = &ask.watch {
        let mut keys: Vec<(String, String)> = ask
            .refs
            .iter()
            .filter_map(|r| r.parse::<SecretRef>().ok())
            .map(|r| (r.provider, r.path))
            .collect();
        keys.sort();
        keys.dedup();
        let watch = Subscribe {
            container: format!("dso-run:{id}"),
            keys,
        };
        if supervisor.send(watch).await.is_err() {
            return error(StatusCode::SERVICE_UNAVAILABLE, "agent is shutting down");
        }
    }
    let mut values: Vec<(String, zeroize::Zeroizing<String>)> = Vec::new();
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
                    let b64 = &base64::engine::general_purpose::STANDARD;
                    let len = base64::encoded_len(v.len(), true).unwrap_or(0);
                    let mut enc = zeroize::Zeroizing::new(String::with_capacity(len));
                    b64.encode_string(v.expose(), &mut enc);
                    values.push((raw, enc));
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
    let mut r = Response::new(Full::new(wiped_answer(&values, &errors)));
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
    peer: Peer,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if path != resolve_proto::PATH && !peer.is_admin() {
        let message = format!(
            "{method} {path}: caller {} is not an admin caller; add an `[[access]]` rule with `callers = {{ uids = [...] }}` and `admin = true`",
            peer.text
        );
        tracing::warn!(peer = %peer.text, result = "denied", "access denied: {message}");
        return Ok(error(StatusCode::FORBIDDEN, message));
    }
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

/// Serves until `shutdown` completes, under [`crate::listen::ADMIN_LIMITS`]; `access` decides per
/// caller (peer credentials).
pub async fn serve(
    listener: UnixListener,
    supervisor: Addr<Supervisor>,
    access: Arc<AccessRules>,
    shutdown: impl Future<Output = ()>,
) {
    crate::listen::serve(
        listener,
        "admin",
        crate::listen::ADMIN_LIMITS,
        |stream: &tokio::net::UnixStream| {
            let supervisor = supervisor.clone();
            let peer = match stream.peer_cred() {
                Ok(c) => Peer {
                    text: format!(
                        "uid={} gid={} pid={}",
                        c.uid(),
                        c.gid(),
                        c.pid().unwrap_or(0)
                    ),
                    caller: Some(Caller {
                        uid: c.uid(),
                        gid: c.gid(),
                    }),
                    access: access.clone(),
                },
                Err(_) => Peer {
                    text: "unknown".to_string(),
                    caller: None,
                    access: access.clone(),
                },
            };
            move |req| handle(req, supervisor.clone(), peer.clone())
        },
        shutdown,
    )
    .await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wiped_answer_is_the_json_the_client_reads() {
        let values = vec![
            (
                "local/a#k".to_string(),
                zeroize::Zeroizing::new("dg==".to_string()),
            ),
            (
                "x/\"q\"".to_string(),
                zeroize::Zeroizing::new("".to_string()),
            ),
        ];
        let mut errors = serde_json::Map::new();
        errors.insert(
            "bad".into(),
            serde_json::json!({"message": "m", "not_found": true}),
        );
        let body = wiped_answer(&values, &errors);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "values": {"local/a#k": "dg==", "x/\"q\"": ""},
                "errors": {"bad": {"message": "m", "not_found": true}},
            })
        );
        let empty = wiped_answer(&[], &serde_json::Map::new());
        assert_eq!(&empty[..], b"{\"values\":{},\"errors\":{}}\n");
    }
}
