//! The WHEP endpoint on the viewer page's HTTP server (draft-ietf-wish-whep): `POST /whep` with
//! an SDP offer makes a viewer's session and answers `201 Created` with the SDP answer and the
//! session's `Location` (`/whep/<id>`); `PATCH /whep/<id>` trickles the viewer's candidates
//! (`application/trickle-ice-sdpfrag`); `DELETE /whep/<id>` ends the session; `OPTIONS` answers
//! CORS preflights. Every request but a preflight needs the bearer token (`Authorization:
//! Bearer`, or `?token=` for clients that cannot send headers); without a token the endpoint is
//! not served at all (docs/SECURITY.md, "WHEP").
//!
//! This module is only the HTTP side: it checks the request (token, content type, size, form)
//! and hands it to the daemon as a [`Request`]; the signaling core decides (`max-viewers`,
//! `max-connecting`, rates) and answers through the request's reply channel. The refusal's
//! meaning ([`WhepError`]) becomes the HTTP status here.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::signaling::whep::{self as format, SdpFrag, WhepError};

/// Requests waiting for the daemon at most; beyond, `503`.
pub const QUEUE_DEPTH: usize = 16;
/// A `POST` waits this long for its answer at most; beyond, `503` (and the session ends).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Tokens shorter than this are refused at start (a guessable token would open the camera).
pub const MIN_TOKEN_LEN: usize = 16;

const SDP: &str = "application/sdp";
const SDPFRAG: &str = "application/trickle-ice-sdpfrag";

/// What the endpoint needs.
#[derive(Debug, Clone)]
pub struct WhepSettings {
    /// The bearer token every request must carry.
    pub token: crate::secret::Secret,
    /// `Link` header values for the ICE servers viewers may use (`rel="ice-server"`).
    pub links: Vec<String>,
}

/// A request for the signaling core, with the channel its reply goes back on.
#[derive(Debug)]
pub enum Request {
    /// `POST`: a new session `id` for `sdp`; the reply is the answer SDP.
    Offer {
        id: String,
        sdp: String,
        reply: oneshot::Sender<Result<String, WhepError>>,
    },
    /// `PATCH`: trickled candidates for session `id`.
    Patch {
        id: String,
        if_match: Option<String>,
        frag: SdpFrag,
        reply: oneshot::Sender<Result<(), WhepError>>,
    },
    /// `DELETE`: end session `id`.
    Delete {
        id: String,
        reply: oneshot::Sender<Result<(), WhepError>>,
    },
}

/// The endpoint's handle: settings and the way to the daemon. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Endpoint {
    settings: Arc<WhepSettings>,
    requests: mpsc::Sender<Request>,
}

impl Endpoint {
    /// The endpoint, and where its requests arrive.
    pub fn new(settings: WhepSettings) -> (Endpoint, mpsc::Receiver<Request>) {
        let (requests, incoming) = mpsc::channel(QUEUE_DEPTH);
        let endpoint = Endpoint {
            settings: Arc::new(settings),
            requests,
        };
        (endpoint, incoming)
    }
}

/// `/whep` and `/whep/{id}`, with CORS headers on every response.
pub fn routes(endpoint: Endpoint) -> Router {
    Router::new()
        .route("/whep", any(on_endpoint))
        .route("/whep/{id}", any(on_session))
        .layer(axum::middleware::map_response(cors))
        .with_state(endpoint)
}

/// Any origin may call the endpoint: it authenticates by bearer token, never by cookies, so a
/// page from elsewhere gets nothing it could not get with the token anyway.
async fn cors(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location, Link, ETag, Accept-Post, Accept-Patch, Retry-After"),
    );
    response
}

/// A preflight's answer: the methods, the headers a client sends (the token, the content
/// type, `If-Match`), and what the resource accepts.
fn preflight(methods: &'static str, accept: (&'static str, &'static str)) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(header::ALLOW, HeaderValue::from_static(methods));
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(methods),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type, If-Match"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    headers.insert(accept.0, HeaderValue::from_static(accept.1));
    response
}

fn text(status: StatusCode, message: impl Into<String>) -> Response {
    let mut body = message.into();
    body.push('\n');
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

fn with_retry_after(mut response: Response, after: Duration) -> Response {
    let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
    if let Ok(value) = HeaderValue::from_str(&secs.max(1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

fn method_not_allowed(allow: &'static str) -> Response {
    let mut response = text(StatusCode::METHOD_NOT_ALLOWED, format!("allowed: {allow}"));
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// The HTTP form of a refusal.
fn refused(error: &WhepError) -> Response {
    let message = error.to_string();
    match error {
        WhepError::BadRequest(_) => text(StatusCode::BAD_REQUEST, message),
        WhepError::Busy(_) => text(StatusCode::SERVICE_UNAVAILABLE, message),
        WhepError::Throttled { retry_in, .. } => {
            with_retry_after(text(StatusCode::SERVICE_UNAVAILABLE, message), *retry_in)
        }
        WhepError::NoLiveVideo { retry_in } => {
            with_retry_after(text(StatusCode::CONFLICT, message), *retry_in)
        }
        WhepError::NotFound => text(StatusCode::NOT_FOUND, message),
        WhepError::StaleEtag => text(StatusCode::PRECONDITION_FAILED, message),
        WhepError::IceRestart => text(StatusCode::UNPROCESSABLE_ENTITY, message),
        WhepError::TooManyPatches { retry_in } => {
            with_retry_after(text(StatusCode::TOO_MANY_REQUESTS, message), *retry_in)
        }
        WhepError::AnswerFailed { code, .. } => match code {
            crate::signaling::ErrorCode::BadRequest | crate::signaling::ErrorCode::Unsupported => {
                text(StatusCode::BAD_REQUEST, message)
            }
            // Unreachable comes only after an answer (a session that never connected).
            crate::signaling::ErrorCode::Busy | crate::signaling::ErrorCode::Unreachable => {
                text(StatusCode::SERVICE_UNAVAILABLE, message)
            }
            crate::signaling::ErrorCode::Internal => {
                text(StatusCode::INTERNAL_SERVER_ERROR, message)
            }
        },
    }
}

/// Whether the request carries the token: `Authorization: Bearer <token>`, or `token=<token>`
/// in the query (for clients that cannot set headers, such as go2rtc's WHEP source).
fn authorized(settings: &WhepSettings, headers: &HeaderMap, uri: &Uri) -> bool {
    let wanted = settings.token.as_bytes();
    let matches = |given: &[u8]| bool::from(given.ct_eq(wanted));
    let from_header = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .any(|token| matches(token.as_bytes()));
    from_header
        || uri.query().is_some_and(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .any(|(k, v)| k == "token" && matches(v.as_bytes()))
        })
}

fn unauthorized() -> Response {
    let mut response = text(
        StatusCode::UNAUTHORIZED,
        "a bearer token is needed (Authorization: Bearer <token>)",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"spyglass\""),
    );
    response
}

/// Whether the request's content type is `wanted` (parameters such as `charset` allowed).
fn content_type_is(headers: &HeaderMap, wanted: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case(wanted))
}

/// The body as text, at most `limit` bytes.
async fn read_text(body: Body, limit: usize) -> Result<String, Response> {
    let bytes: Bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {limit} bytes"),
        )
    })?;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| text(StatusCode::BAD_REQUEST, "the body is not UTF-8 text"))
}

/// A resource id: 32 lower-case hex digits (128 random bits).
fn new_resource_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn is_resource_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn queue_full() -> Response {
    with_retry_after(
        text(StatusCode::SERVICE_UNAVAILABLE, "the device is busy; retry"),
        Duration::from_secs(1),
    )
}

/// `/whep`: `POST` an offer; `OPTIONS`; `GET` (no representation: 204).
async fn on_endpoint(
    State(endpoint): State<Endpoint>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    const ALLOW: &str = "OPTIONS, POST, GET";
    if method == Method::OPTIONS {
        return preflight(ALLOW, ("accept-post", SDP));
    }
    if method != Method::POST && method != Method::GET && method != Method::HEAD {
        return method_not_allowed(ALLOW);
    }
    if !authorized(&endpoint.settings, &headers, &uri) {
        return unauthorized();
    }
    if method != Method::POST {
        return StatusCode::NO_CONTENT.into_response();
    }
    if !content_type_is(&headers, SDP) {
        return text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("the offer must be sent as {SDP}"),
        );
    }
    let sdp = match read_text(body, format::MAX_OFFER_BYTES).await {
        Ok(sdp) => sdp,
        Err(response) => return response,
    };
    let id = new_resource_id();
    let (reply, answer) = oneshot::channel();
    let request = Request::Offer {
        id: id.clone(),
        sdp,
        reply,
    };
    if endpoint.requests.try_send(request).is_err() {
        return queue_full();
    }
    match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
        Ok(Ok(Ok(sdp))) => {
            let mut response =
                (StatusCode::CREATED, [(header::CONTENT_TYPE, SDP)], sdp).into_response();
            let headers = response.headers_mut();
            if let Ok(location) = HeaderValue::from_str(&format!("/whep/{id}")) {
                headers.insert(header::LOCATION, location);
            }
            if let Ok(etag) = HeaderValue::from_str(&format::etag(&id)) {
                headers.insert(header::ETAG, etag);
            }
            for link in &endpoint.settings.links {
                if let Ok(value) = HeaderValue::from_str(link) {
                    headers.append(header::LINK, value);
                }
            }
            debug!(id, "WHEP session answered");
            response
        }
        Ok(Ok(Err(error))) => refused(&error),
        Ok(Err(_)) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the session ended before it was answered (too many connecting at once); retry",
        ),
        Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "no answer in time; retry"),
    }
}

/// `/whep/{id}`: `PATCH` candidates, `DELETE`, `OPTIONS`; `GET` (204).
async fn on_session(
    State(endpoint): State<Endpoint>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    const ALLOW: &str = "OPTIONS, PATCH, DELETE, GET";
    if method == Method::OPTIONS {
        return preflight(ALLOW, ("accept-patch", SDPFRAG));
    }
    if ![Method::PATCH, Method::DELETE, Method::GET, Method::HEAD].contains(&method) {
        return method_not_allowed(ALLOW);
    }
    if !authorized(&endpoint.settings, &headers, &uri) {
        return unauthorized();
    }
    if method == Method::GET || method == Method::HEAD {
        // No representation (the WHEP draft: 2XX without content).
        return StatusCode::NO_CONTENT.into_response();
    }
    if !is_resource_id(&id) {
        return refused(&WhepError::NotFound);
    }
    let (reply, outcome) = oneshot::channel();
    let request = if method == Method::PATCH {
        if !content_type_is(&headers, SDPFRAG) {
            return text(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("candidates must be sent as {SDPFRAG}"),
            );
        }
        let body = match read_text(body, format::MAX_PATCH_BYTES).await {
            Ok(body) => body,
            Err(response) => return response,
        };
        let frag = match format::parse_sdpfrag(&body) {
            Ok(frag) => frag,
            Err(message) => return text(StatusCode::BAD_REQUEST, message),
        };
        let if_match = headers
            .get(header::IF_MATCH)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Request::Patch {
            id,
            if_match,
            frag,
            reply,
        }
    } else {
        Request::Delete { id, reply }
    };
    if endpoint.requests.try_send(request).is_err() {
        return queue_full();
    }
    match outcome.await {
        Ok(Ok(())) if method == Method::DELETE => StatusCode::OK.into_response(),
        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(error)) => refused(&error),
        Err(_) => queue_full(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> WhepSettings {
        WhepSettings {
            token: crate::secret::Secret::from("0123456789abcdef0123"),
            links: vec![],
        }
    }

    #[test]
    fn the_token_comes_in_the_header_or_the_query() {
        let s = settings();
        let mut headers = HeaderMap::new();
        let uri: Uri = "/whep".parse().unwrap();
        assert!(!authorized(&s, &headers, &uri));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer 0123456789abcdef0123"),
        );
        assert!(authorized(&s, &headers, &uri));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer 0123456789abcdef012"),
        );
        assert!(!authorized(&s, &headers, &uri));
        let query: Uri = "/whep?x=1&token=0123456789abcdef0123".parse().unwrap();
        assert!(authorized(&s, &HeaderMap::new(), &query));
        let wrong: Uri = "/whep?token=0123456789abcdef0124".parse().unwrap();
        assert!(!authorized(&s, &HeaderMap::new(), &wrong));
    }

    #[test]
    fn content_types_and_ids() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/SDP; charset=utf-8"),
        );
        assert!(content_type_is(&headers, SDP));
        assert!(!content_type_is(&headers, SDPFRAG));
        let id = new_resource_id();
        assert!(is_resource_id(&id), "{id}");
        assert!(!is_resource_id("../etc"));
        assert!(!is_resource_id(&id.to_uppercase()));
    }
}
