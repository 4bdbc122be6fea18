//! The admin HTTP surface on `agent.listen`: `GET /metrics`, `GET /healthz`, `GET /readyz`.
//!
//! The listener and the shutdown future are injected (as in mini-redis), so tests can bind port 0
//! and stop the server deterministically.

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, OnceLock};

use actix::Addr;
use bytes::Bytes;
use dso_actors::messages::GetReadiness;
use dso_actors::supervisor::Supervisor;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// What the handlers need.
#[derive(Clone)]
pub struct AdminState {
    /// Metrics registry.
    pub registry: Arc<Registry>,
    /// Asked for readiness; unset while the agent is a hot standby (`/readyz` then says so).
    pub supervisor: Arc<OnceLock<Addr<Supervisor>>>,
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

async fn handle(
    req: Request<Incoming>,
    state: AdminState,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        ));
    }
    Ok(match req.uri().path() {
        "/metrics" => {
            let text = dso_actors::metrics::render(&state.registry);
            let wants_openmetrics = req
                .headers()
                .get(hyper::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("application/openmetrics-text"));
            if wants_openmetrics {
                reply(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                )
            } else {
                reply(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    openmetrics_to_prometheus_text(&text),
                )
            }
        }
        "/healthz" | "/live" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" | "/ready" => {
            let Some(supervisor) = state.supervisor.get() else {
                return Ok(reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "application/json",
                    "{\"ready\":false,\"standby\":true}\n".into(),
                ));
            };
            let r = supervisor.send(GetReadiness).await.unwrap_or_default();
            let body = serde_json::json!({
                "ready": r.ready(),
                "docker": r.docker,
                "docker_error": r.docker_error,
                "providers": r.providers.iter().map(|(n, up)| (n.clone(), *up)).collect::<std::collections::BTreeMap<_, _>>(),
            });
            let status = if r.ready() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(status, "application/json", format!("{body}\n"))
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /metrics, /healthz or /readyz\n".into(),
        ),
    })
}

/// Converts OpenMetrics text to the Prometheus text format 0.0.4 (for scrapers and tools such as
/// `promtool check metrics` that do not ask for OpenMetrics): counter families are named with
/// their `_total` suffix, `# UNIT` and `# EOF` lines are dropped.
pub fn openmetrics_to_prometheus_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending_help: Option<&str> = None;
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some(h) = pending_help.take() {
                out.push_str(h);
                out.push('\n');
            }
            let _ = rest;
            pending_help = Some(line);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.splitn(2, ' ');
            let name = parts.next().unwrap_or_default();
            let kind = parts.next().unwrap_or_default();
            let name = if kind == "counter" && !name.ends_with("_total") {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            if let Some(h) = pending_help.take() {
                let help = h
                    .strip_prefix("# HELP ")
                    .and_then(|r| r.split_once(' '))
                    .map(|(_, text)| text)
                    .unwrap_or_default();
                out.push_str(&format!("# HELP {name} {help}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if let Some(h) = pending_help.take() {
            out.push_str(h);
            out.push('\n');
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Serves until `shutdown` completes, under [`crate::listen::METRICS_LIMITS`].
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: impl Future<Output = ()>) {
    crate::listen::serve(
        listener,
        "metrics",
        crate::listen::METRICS_LIMITS,
        |_| {
            let state = state.clone();
            move |req| handle(req, state.clone())
        },
        shutdown,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_their_total_suffix_in_prometheus_text() {
        let om = "# HELP dso_x Things.\n# TYPE dso_x counter\ndso_x_total 3\n# HELP dso_g A gauge.\n# TYPE dso_g gauge\ndso_g 1\n# EOF\n";
        assert_eq!(
            openmetrics_to_prometheus_text(om),
            "# HELP dso_x_total Things.\n# TYPE dso_x_total counter\ndso_x_total 3\n# HELP dso_g A gauge.\n# TYPE dso_g gauge\ndso_g 1\n"
        );
    }
}
