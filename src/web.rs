//! The viewer page's HTTP server: serves the built page (`web/dist`, or wherever `--web-root`
//! points) and `/config.json`, which tells the page which device this is and which broker to use,
//! and, when it has a token, the WHEP endpoint ([`crate::whep`]) under `/whep`.
//!
//! It serves files from its root and nothing else: paths with `..` (plain or percent-encoded)
//! and paths that name no file get 404. Only GET and HEAD are answered, but under `/whep`.
//!
//! Connections are bounded (docs/SECURITY.md): at most `max_connections` are open, and a new one
//! beyond closes the oldest idle one (no request in progress; if none is idle, the oldest); a
//! connection that sends no complete request head within [`IDLE_TIMEOUT`] (a new one, or a
//! kept-alive one between requests) is closed; request heads are at most [`MAX_HEAD_BYTES`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::handler::HandlerWithoutStateExt;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Serialize;
use tokio::sync::Notify;
use tower_http::services::ServeDir;
use tracing::{debug, info, warn};

/// The WebSocket port the page tries on its own host name when no `--web-broker-url` is given.
/// `make demo`'s broker listens for WebSockets there; 9001 is also Mosquitto's customary port.
pub const DEFAULT_BROKER_WS_PORT: u16 = 9001;
/// A connection that sends no complete request head for this long is closed: a new connection
/// that says nothing, a slow sender, and a kept-alive connection between requests.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line and headers) read.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// What the HTTP server needs.
#[derive(Debug, Clone)]
pub struct WebSettings {
    pub bind: SocketAddr,
    pub root: PathBuf,
    /// Device id, handed to the page.
    pub id: String,
    /// The broker's WebSocket URL for browsers; `None` lets the page derive it.
    pub broker: Option<String>,
    /// Open connections at most.
    pub max_connections: usize,
    /// The WHEP endpoint, when it is on.
    pub whep: Option<crate::whep::Endpoint>,
    /// STUN servers for the page's peer connections (never TURN: its credentials go to viewers
    /// that ask over MQTT, where the broker's ACL keeps them private).
    pub stun: Vec<String>,
}

/// The body of `/config.json`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PageConfig {
    /// Device id of this spyglass.
    pub id: String,
    /// The broker's WebSocket URL, or `null`: then the page uses
    /// `ws://<its own host name>:<broker_ws_port>` (`wss://` on an https page).
    pub broker: Option<String>,
    pub broker_ws_port: u16,
    pub version: String,
    /// Static ICE servers for the page (STUN; `RTCIceServer` objects).
    pub ice_servers: Vec<crate::signaling::protocol::IceServer>,
}

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("--http {addr}: cannot listen: {err}")]
    Bind {
        addr: SocketAddr,
        err: std::io::Error,
    },
}

/// A running server; dropping it stops it.
pub struct WebServer {
    pub local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WebServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Bind the listener (an error names the address) and serve in the background.
pub async fn start(settings: WebSettings) -> Result<WebServer, WebError> {
    let listener = tokio::net::TcpListener::bind(settings.bind)
        .await
        .map_err(|err| WebError::Bind {
            addr: settings.bind,
            err,
        })?;
    let local_addr = listener.local_addr().unwrap_or(settings.bind);
    if !settings.root.join("index.html").is_file() {
        warn!(
            root = %settings.root.display(),
            "no index.html in the web root: the viewer page is not built (run `make`), or set --web-root"
        );
    }
    let app = router(&settings);
    info!(root = %settings.root.display(), "viewer page at http://{local_addr}/");
    let connections = Arc::new(Connections::new(settings.max_connections));
    let task = tokio::spawn(serve(listener, app, connections));
    Ok(WebServer { local_addr, task })
}

/// The open connections, oldest first, each with its requests in flight and a way to close it.
struct Connections {
    max: usize,
    open: Mutex<BTreeMap<u64, Open>>,
}

struct Open {
    in_flight: Arc<AtomicUsize>,
    close: Arc<Notify>,
}

impl Connections {
    fn new(max: usize) -> Self {
        Connections {
            max: max.max(1),
            open: Mutex::new(BTreeMap::new()),
        }
    }

    /// Register connection `id`; when that makes one too many, the oldest idle one (or the
    /// oldest, if none is idle) is told to close and no longer counted.
    fn admit(&self, id: u64) -> (Arc<AtomicUsize>, Arc<Notify>) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        while open.len() >= self.max {
            let victim = open
                .iter()
                .find(|(_, c)| c.in_flight.load(Ordering::Relaxed) == 0)
                .or_else(|| open.iter().next())
                .map(|(id, _)| *id);
            let Some(victim) = victim.and_then(|v| open.remove(&v)) else {
                break;
            };
            victim.close.notify_one();
        }
        let entry = Open {
            in_flight: Arc::new(AtomicUsize::new(0)),
            close: Arc::new(Notify::new()),
        };
        let handles = (Arc::clone(&entry.in_flight), Arc::clone(&entry.close));
        open.insert(id, entry);
        handles
    }

    fn forget(&self, id: u64) {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }
}

/// Counts a request in flight while it lives.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(count))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accept connections and serve each on its own task, within the bounds above.
async fn serve(listener: tokio::net::TcpListener, app: Router, connections: Arc<Connections>) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(IDLE_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    let mut next_id: u64 = 0;
    let mut accept_errors: u64 = 0;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of descriptors, most likely: the limits above keep this server's own
                // use bounded, so wait for others to free some.
                accept_errors += 1;
                if accept_errors.is_power_of_two() {
                    warn!(errors = accept_errors, "http server: accept: {err}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let id = next_id;
        next_id += 1;
        let (in_flight, close) = connections.admit(id);
        let service = TowerToHyperService::new(app.clone());
        let service = hyper::service::service_fn(move |request| {
            let busy = InFlight::new(&in_flight);
            let response = hyper::service::Service::call(&service, request);
            async move {
                let response = response.await;
                drop(busy);
                response
            }
        });
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let connections = Arc::clone(&connections);
        tokio::spawn(async move {
            tokio::select! {
                result = connection => {
                    if let Err(err) = result {
                        debug!("http connection: {err}");
                    }
                }
                () = close.notified() => debug!("http connection closed: too many open"),
            }
            connections.forget(id);
        });
    }
}

/// The routes: `/config.json`, then the files under the root.
pub fn router(settings: &WebSettings) -> Router {
    let config = PageConfig {
        id: settings.id.clone(),
        broker: settings.broker.clone(),
        broker_ws_port: DEFAULT_BROKER_WS_PORT,
        version: crate::VERSION.to_string(),
        ice_servers: if settings.stun.is_empty() {
            vec![]
        } else {
            vec![crate::signaling::protocol::IceServer {
                urls: settings.stun.clone(),
                username: None,
                credential: None,
            }]
        },
    };
    let files = ServeDir::new(&settings.root)
        .append_index_html_on_directories(true)
        .not_found_service(not_found.into_service());
    let router = Router::new().route(
        "/config.json",
        get(move || {
            let config = config.clone();
            async move { Json(config) }
        }),
    );
    let router = match &settings.whep {
        Some(endpoint) => router.merge(crate::whep::routes(endpoint.clone())),
        None => router,
    };
    router
        .fallback_service(files)
        .layer(axum::middleware::map_response(common_headers))
}

async fn not_found() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, "not found\n")
}

/// No caching (the page must match the daemon it came from) and no MIME sniffing.
async fn common_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
