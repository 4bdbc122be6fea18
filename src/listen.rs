//! Limits shared by the agent's two listeners (the metrics/health TCP listener and the admin Unix
//! socket), so that no local user can starve the agent with connections:
//!
//! * at most [`Limits::max_connections`] connections at once; when a new one arrives at the cap,
//!   the connection idle for longest (no request in progress) is closed to make room, and when
//!   every connection has a request in progress the new one is closed;
//! * a connection with no request in progress for [`Limits::idle_timeout`] is closed — one that
//!   never sends its headers, trickles them, or idles between keep-alive requests;
//! * a request whose answer takes longer than [`Limits::request_timeout`] gets `503`;
//! * an `accept` that fails (e.g. `EMFILE`, no file descriptor left) closes the oldest idle
//!   connection, backs off, and is logged once per burst, never in a loop.
//!
//! At start the soft `RLIMIT_NOFILE` is raised to the hard limit ([`raise_nofile_limit`]), but the
//! caps hold within the default 1024 as well.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

/// One listener's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once.
    pub max_connections: usize,
    /// A connection without a request in progress for this long is closed (covers a slow or
    /// absent request head: the header-read timeout).
    pub idle_timeout: Duration,
    /// Longest time one request may take to be answered (then `503`).
    pub request_timeout: Duration,
}

/// `agent.listen` (`/metrics`, `/healthz`, `/readyz`): scrapers and health checks.
pub const METRICS_LIMITS: Limits = Limits {
    max_connections: 256,
    idle_timeout: Duration::from_secs(10),
    request_timeout: Duration::from_secs(30),
};

/// `agent.admin_socket`: the CLI. A request may wait for backends (`/v1/resolve`, `/v1/rotate`).
pub const ADMIN_LIMITS: Limits = Limits {
    max_connections: 64,
    idle_timeout: Duration::from_secs(10),
    request_timeout: Duration::from_secs(120),
};

struct Conn {
    busy: Arc<AtomicBool>,
    last_active: Arc<Mutex<Instant>>,
    close: Option<oneshot::Sender<()>>,
}

#[derive(Default)]
struct Table {
    next: u64,
    open: BTreeMap<u64, Conn>,
    accept_errors: u64,
}

/// The connections of one listener. Cheap to clone.
#[derive(Clone)]
pub struct Slots {
    name: &'static str,
    limits: Limits,
    table: Arc<Mutex<Table>>,
}

/// An admitted connection: serve it with [`Admitted::serve`].
pub struct Admitted {
    slots: Slots,
    id: u64,
    busy: Arc<AtomicBool>,
    last_active: Arc<Mutex<Instant>>,
    closed: oneshot::Receiver<()>,
}

impl Slots {
    /// Slots for listener `name` (used in logs).
    pub fn new(name: &'static str, limits: Limits) -> Self {
        Self {
            name,
            limits,
            table: Arc::new(Mutex::new(Table::default())),
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.table.lock().map(|t| t.open.len()).unwrap_or(0)
    }

    /// Closes the connection idle for longest. False when every one has a request in progress.
    fn close_oldest_idle(t: &mut Table) -> bool {
        let victim = t
            .open
            .iter()
            .filter(|(_, c)| !c.busy.load(Ordering::Relaxed))
            .min_by_key(|(id, c)| (c.last_active.lock().map(|l| *l).ok(), **id))
            .map(|(id, _)| *id);
        match victim.and_then(|id| t.open.remove(&id)) {
            Some(mut c) => {
                if let Some(tx) = c.close.take() {
                    let _ = tx.send(());
                }
                true
            }
            None => false,
        }
    }

    /// Takes a slot for a new connection, closing the oldest idle one at the cap. None: every
    /// slot has a request in progress (the caller drops the connection).
    pub fn admit(&self) -> Option<Admitted> {
        let mut t = self.table.lock().ok()?;
        if t.accept_errors > 0 {
            tracing::info!(
                listener = self.name,
                failed = t.accept_errors,
                "accepting connections again"
            );
            t.accept_errors = 0;
        }
        if t.open.len() >= self.limits.max_connections && !Self::close_oldest_idle(&mut t) {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let busy = Arc::new(AtomicBool::new(false));
        let last_active = Arc::new(Mutex::new(Instant::now()));
        t.next += 1;
        let id = t.next;
        t.open.insert(
            id,
            Conn {
                busy: busy.clone(),
                last_active: last_active.clone(),
                close: Some(tx),
            },
        );
        Some(Admitted {
            slots: self.clone(),
            id,
            busy,
            last_active,
            closed: rx,
        })
    }

    /// After `accept` failed: frees a descriptor (the oldest idle connection), logs once per
    /// burst of failures, and backs off briefly.
    pub async fn accept_failed(&self, e: &std::io::Error) {
        let first = match self.table.lock() {
            Ok(mut t) => {
                Self::close_oldest_idle(&mut t);
                t.accept_errors += 1;
                t.accept_errors == 1
            }
            Err(_) => false,
        };
        if first {
            tracing::warn!(
                listener = self.name,
                error = %e,
                open = self.open(),
                "accepting a connection failed; closing idle connections (logged once until accepting works again)"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    fn release(&self, id: u64) {
        if let Ok(mut t) = self.table.lock() {
            t.open.remove(&id);
        }
    }
}

/// Marks a connection busy while a request is handled.
struct Busy {
    busy: Arc<AtomicBool>,
    last_active: Arc<Mutex<Instant>>,
}

impl Busy {
    fn start(busy: &Arc<AtomicBool>, last_active: &Arc<Mutex<Instant>>) -> Self {
        busy.store(true, Ordering::Relaxed);
        Self {
            busy: busy.clone(),
            last_active: last_active.clone(),
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Ok(mut l) = self.last_active.lock() {
            *l = Instant::now();
        }
        self.busy.store(false, Ordering::Relaxed);
    }
}

fn unavailable(text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    r
}

impl Admitted {
    /// Serves HTTP/1 on `io` with `handler` under the limits, until the client closes, the
    /// connection idles too long, or it is closed to make room.
    pub async fn serve<I, F, Fut>(self, io: I, handler: F)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
    {
        let Admitted {
            slots,
            id,
            busy,
            last_active,
            mut closed,
        } = self;
        let limits = slots.limits;
        let (b, l) = (busy.clone(), last_active.clone());
        let svc = service_fn(move |req| {
            let guard = Busy::start(&b, &l);
            let fut = handler.clone()(req);
            async move {
                let r = tokio::time::timeout(limits.request_timeout, fut).await;
                drop(guard);
                match r {
                    Ok(r) => r,
                    Err(_) => Ok(unavailable("request timed out\n")),
                }
            }
        });
        let conn = http1::Builder::new().serve_connection(TokioIo::new(io), svc);
        tokio::pin!(conn);
        let tick = (limits.idle_timeout / 4).max(Duration::from_millis(100));
        loop {
            tokio::select! {
                r = &mut conn => {
                    if let Err(e) = r {
                        tracing::debug!(listener = slots.name, error = %e, "connection error");
                    }
                    break;
                }
                _ = &mut closed => break,
                _ = tokio::time::sleep(tick) => {
                    let idle = last_active.lock().map(|l| l.elapsed()).unwrap_or_default();
                    if !busy.load(Ordering::Relaxed) && idle >= limits.idle_timeout {
                        break;
                    }
                }
            }
        }
        slots.release(id);
    }
}

/// A listening socket: TCP (`agent.listen`) or Unix (`agent.admin_socket`).
pub trait Listener {
    /// One accepted connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Waits for the next connection.
    fn accept_io(&self) -> impl Future<Output = std::io::Result<Self::Io>>;
}

impl Listener for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept_io(&self) -> std::io::Result<Self::Io> {
        self.accept().await.map(|(s, _)| s)
    }
}

impl Listener for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept_io(&self) -> std::io::Result<Self::Io> {
        self.accept().await.map(|(s, _)| s)
    }
}

/// Accepts connections on `listener` under `limits` until `shutdown` completes; each connection
/// is served with the handler `make` builds for it (it may look at the connection, e.g. its peer).
pub async fn serve<L, M, F, Fut>(
    listener: L,
    name: &'static str,
    limits: Limits,
    make: M,
    shutdown: impl Future<Output = ()>,
) where
    L: Listener,
    M: Fn(&L::Io) -> F,
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    let slots = Slots::new(name, limits);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept_io() => {
                let io = match accepted {
                    Ok(io) => io,
                    Err(e) => {
                        slots.accept_failed(&e).await;
                        continue;
                    }
                };
                // At the cap with every connection busy: this one is closed (dropped).
                let Some(slot) = slots.admit() else {
                    continue;
                };
                let handler = make(&io);
                actix_rt::spawn(slot.serve(io, handler));
            }
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (more room for connections, containers and
/// backends). Returns (old soft, new soft) when it changed it.
pub fn raise_nofile_limit() -> Option<(u64, u64)> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    let (cur, max) = (lim.current?, lim.maximum);
    let target = max.unwrap_or(u64::MAX).min(1 << 20);
    if target <= cur {
        return None;
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(target),
            maximum: max,
        },
    )
    .ok()?;
    Some((cur, target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_idle_connection_makes_room_and_busy_ones_stay() {
        let slots = Slots::new(
            "t",
            Limits {
                max_connections: 2,
                ..METRICS_LIMITS
            },
        );
        let a = slots.admit().unwrap();
        let b = slots.admit().unwrap();
        b.busy.store(true, Ordering::Relaxed);
        let mut a_closed = a.closed;
        let c = slots.admit().unwrap();
        assert_eq!(a_closed.try_recv(), Ok(()), "the idle oldest was closed");
        assert_eq!(slots.open(), 2);
        c.busy.store(true, Ordering::Relaxed);
        assert!(slots.admit().is_none(), "all busy: the new one is refused");
        drop(b);
    }

    #[test]
    fn the_soft_nofile_limit_reaches_the_hard_one() {
        let _ = raise_nofile_limit();
        let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(lim.current, lim.maximum.map(|m| m.min(1 << 20)));
    }
}
