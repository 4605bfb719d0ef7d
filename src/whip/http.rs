//! One HTTP/1.1 exchange with a WHIP endpoint or session, on a connection of its own: plain for
//! `http://`, TLS for `https://` (rustls, the system's root certificates). Each exchange is
//! bounded in time and in the size of the response, since the response comes from the network.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1;
use hyper::http::{HeaderMap, Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use url::Url;

/// An exchange (connect, TLS, request and response) takes at most this long.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response body read (an SDP answer is a few KiB).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0}: not an http:// or https:// URL with a host")]
    Url(Url),
    #[error("connecting to {host}: {err}")]
    Connect { host: String, err: std::io::Error },
    #[error("TLS with {host}: {err}")]
    Tls { host: String, err: std::io::Error },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("HTTP request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("the response is larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    #[error("reading the response: {0}")]
    Body(String),
    #[error("no response within {} s", EXCHANGE_TIMEOUT.as_secs())]
    Timeout,
}

/// A response: status, headers, body as text.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    /// The first line of the body, for error messages.
    pub fn reason(&self) -> String {
        let line = self.body.lines().next().unwrap_or("").trim();
        let mut end = line.len().min(200);
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        format!("{} {}", self.status, &line[..end])
            .trim_end()
            .to_string()
    }
}

/// Makes exchanges; holds the TLS configuration.
#[derive(Clone)]
pub struct Client {
    tls: tokio_rustls::TlsConnector,
}

impl Client {
    /// A client that trusts the system's root certificates.
    pub fn new() -> Self {
        let mut roots = rustls::RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for cert in found.certs {
            // Certificates the parser cannot take are skipped, as every TLS client does.
            let _ = roots.add(cert);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = match rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
        {
            Ok(builder) => builder.with_root_certificates(roots).with_no_client_auth(),
            // The ring provider supports the default versions; kept as a fallback anyway.
            Err(_) => rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Client {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        }
    }

    /// `method` on `url`, with the bearer `token` if any, and `body` of `content_type` if any.
    pub async fn send(
        &self,
        method: Method,
        url: &Url,
        token: Option<&str>,
        body: Option<(&str, String)>,
    ) -> Result<Reply, HttpError> {
        tokio::time::timeout(EXCHANGE_TIMEOUT, self.exchange(method, url, token, body))
            .await
            .map_err(|_| HttpError::Timeout)?
    }

    async fn exchange(
        &self,
        method: Method,
        url: &Url,
        token: Option<&str>,
        body: Option<(&str, String)>,
    ) -> Result<Reply, HttpError> {
        let (Some(host), Some(port)) = (url.host(), url.port_or_known_default()) else {
            return Err(HttpError::Url(url.clone()));
        };
        let host_name = match &host {
            url::Host::Domain(d) => d.to_string(),
            url::Host::Ipv4(a) => a.to_string(),
            url::Host::Ipv6(a) => a.to_string(),
        };
        let stream = TcpStream::connect((host_name.as_str(), port))
            .await
            .map_err(|err| HttpError::Connect {
                host: host_name.clone(),
                err,
            })?;
        let _ = stream.set_nodelay(true);
        let mut request = Request::builder()
            .method(method)
            .uri(&url[url::Position::BeforePath..url::Position::AfterQuery])
            .header(
                header::HOST,
                &url[url::Position::BeforeHost..url::Position::AfterPort],
            );
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some((content_type, body)) => request
                .header(header::CONTENT_TYPE, content_type)
                .body(Full::new(Bytes::from(body)))?,
            None => request.body(Full::new(Bytes::new()))?,
        };
        match url.scheme() {
            "https" => {
                let name =
                    rustls_pki_types::ServerName::try_from(host_name.clone()).map_err(|e| {
                        HttpError::Tls {
                            host: host_name.clone(),
                            err: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
                        }
                    })?;
                let tls = self
                    .tls
                    .connect(name, stream)
                    .await
                    .map_err(|err| HttpError::Tls {
                        host: host_name.clone(),
                        err,
                    })?;
                over(tls, request).await
            }
            "http" => over(stream, request).await,
            _ => Err(HttpError::Url(url.clone())),
        }
    }
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

async fn over<I>(io: I, request: Request<Full<Bytes>>) -> Result<Reply, HttpError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = http1::handshake(TokioIo::new(io)).await?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let result = async {
        let response = sender.send_request(request).await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    HttpError::TooLarge
                } else {
                    HttpError::Body(e.to_string())
                }
            })?
            .to_bytes();
        Ok(Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
    .await;
    driver.abort();
    result
}
