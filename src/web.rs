//! The viewer page's HTTP server: serves the built page (`web/dist`, or wherever `--web-root`
//! points) and `/config.json`, which tells the page which device this is and which broker to use.
//!
//! It serves files from its root and nothing else: paths with `..` (plain or percent-encoded)
//! and paths that name no file get 404. Only GET and HEAD are answered.

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::Json;
use axum::Router;
use axum::handler::HandlerWithoutStateExt;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use serde::Serialize;
use tower_http::services::ServeDir;
use tracing::{info, warn};

/// The WebSocket port the page tries on its own host name when no `--web-broker-url` is given.
/// `make demo`'s broker listens for WebSockets there; 9001 is also Mosquitto's customary port.
pub const DEFAULT_BROKER_WS_PORT: u16 = 9001;

/// What the HTTP server needs.
#[derive(Debug, Clone)]
pub struct WebSettings {
    pub bind: SocketAddr,
    pub root: PathBuf,
    /// Device id, handed to the page.
    pub id: String,
    /// The broker's WebSocket URL for browsers; `None` lets the page derive it.
    pub broker: Option<String>,
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
    let task = tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            warn!("http server stopped: {err}");
        }
    });
    Ok(WebServer { local_addr, task })
}

/// The routes: `/config.json`, then the files under the root.
pub fn router(settings: &WebSettings) -> Router {
    let config = PageConfig {
        id: settings.id.clone(),
        broker: settings.broker.clone(),
        broker_ws_port: DEFAULT_BROKER_WS_PORT,
        version: crate::daemon::VERSION.to_string(),
    };
    let files = ServeDir::new(&settings.root)
        .append_index_html_on_directories(true)
        .not_found_service(not_found.into_service());
    Router::new()
        .route(
            "/config.json",
            get(move || {
                let config = config.clone();
                async move { Json(config) }
            }),
        )
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
