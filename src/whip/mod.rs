//! Publishing the stream to an SFU over WHIP (RFC 9725), `--whip URL`: the SFU then carries it
//! to as many viewers as it serves, while the device sends one stream (docs/SCALING.md).
//!
//! The publication is a [`session`] like a viewer's, started as the offerer: the same shared
//! encoders feed it (no second encode), keyframe requests from the SFU reach the encoder, and a
//! closed or failed connection ends it. This module keeps it up: offer (with every candidate:
//! the device gathers before it posts), `POST` to the endpoint (bearer token from
//! `--whip-token-file`), answer, connect; when the session ends (the SFU went away, the
//! connection failed, the endpoint refused), `DELETE` the old resource and start a new session
//! after a back-off (1 s, doubling to 30 s; back to 1 s after a session that stayed up). A new
//! session rather than an ICE restart: after an SFU restart the old session is gone anyway, and
//! WHIP endpoints may refuse restarts (RFC 9725 lets them; the tests' front-end does).
//! What it is doing goes into the status ([`WhipStatus`]).

pub mod http;

use std::time::{Duration, Instant};

use hyper::http::{Method, StatusCode, header};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use url::Url;

use crate::audio::hub::AudioHub;
use crate::peer::PeerFactory;
use crate::peer::session::{self, SessionEvent, SessionHandle};
use crate::signaling::SessionKey;
use crate::signaling::protocol::{IceCandidateMsg, WhipState, WhipStatus};
use crate::signaling::whep::{GATHER_WAIT, with_candidates};
use crate::video::hub::Hub;

/// The SFU must connect within this long after its answer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// A session that stayed up this long resets the back-off.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// Redirects (307/308) followed for one `POST`.
const MAX_REDIRECTS: usize = 3;
/// At shutdown, the `DELETE` of the live resource gets this long.
const DELETE_AT_SHUTDOWN: Duration = Duration::from_millis(700);

/// Where to publish.
#[derive(Debug, Clone)]
pub struct WhipSettings {
    pub endpoint: Url,
    pub token: Option<crate::secret::Secret>,
}

/// What the publisher shares with the daemon.
pub struct Media {
    pub factory: PeerFactory,
    pub hub: Hub,
    pub audio: Option<AudioHub>,
    /// The shared encoder's rate control: the SFU's link counts like a viewer's.
    pub rate: crate::peer::bitrate::RateControl,
}

/// The running publisher.
pub struct Publisher {
    task: JoinHandle<()>,
    stop: Option<oneshot::Sender<()>>,
}

impl Publisher {
    /// Start publishing; the status follows `status`.
    pub fn start(
        settings: WhipSettings,
        media: Media,
        status: watch::Sender<Option<WhipStatus>>,
    ) -> Publisher {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(keep_up(settings, media, status, stopped));
        Publisher {
            task,
            stop: Some(stop),
        }
    }

    /// End the session and `DELETE` its resource (briefly: shutdown must be quick).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let limit = DELETE_AT_SHUTDOWN + Duration::from_millis(100);
        if tokio::time::timeout(limit, &mut self.task).await.is_err() {
            self.task.abort();
        }
    }
}

/// The back-off before session `n` + 1 after `n` consecutive failures: 1 s, doubling, at most
/// 30 s, jittered (the MQTT client's curve, started two steps later).
fn backoff(failures: u32) -> Duration {
    crate::mqtt::backoff(failures + 2, rand::random::<f64>())
}

async fn keep_up(
    settings: WhipSettings,
    media: Media,
    status: watch::Sender<Option<WhipStatus>>,
    mut stopped: oneshot::Receiver<()>,
) {
    let client = http::Client::new();
    let mut report = WhipStatus {
        state: WhipState::Connecting,
        reconnects: 0,
        error: None,
    };
    let mut failures: u32 = 0;
    for attempt in 1u64.. {
        if attempt > 1 {
            report.reconnects += 1;
        }
        report.state = WhipState::Connecting;
        status.send_replace(Some(report.clone()));
        let started = Instant::now();
        // The session's resource, once the endpoint made one: deleted when the session ends.
        let resource = std::sync::Mutex::new(None::<Url>);
        let stopping = tokio::select! {
            reason = publish(&settings, &client, &media, attempt, &status, &report, &resource) => {
                Err(reason)
            }
            _ = &mut stopped => Ok(()),
        };
        let made = resource.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(resource) = made {
            let limit = if stopping.is_ok() {
                DELETE_AT_SHUTDOWN
            } else {
                http::EXCHANGE_TIMEOUT
            };
            delete(&client, &resource, settings.token.as_deref(), limit).await;
        }
        let Err(reason) = stopping else {
            return;
        };
        if started.elapsed() >= STABLE_AFTER {
            failures = 0;
        }
        failures = failures.saturating_add(1);
        let wait = backoff(failures);
        warn!(
            endpoint = %redacted(&settings.endpoint),
            "WHIP publication ended: {reason}; retrying in {} ms",
            wait.as_millis()
        );
        report.state = WhipState::Retrying;
        report.error = Some(reason);
        status.send_replace(Some(report.clone()));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = &mut stopped => return,
        }
    }
}

/// One session, from the offer until it ends: why it ended. The resource the endpoint made goes
/// into `resource`.
async fn publish(
    settings: &WhipSettings,
    client: &http::Client,
    media: &Media,
    attempt: u64,
    status: &watch::Sender<Option<WhipStatus>>,
    report: &WhipStatus,
    resource: &std::sync::Mutex<Option<Url>>,
) -> String {
    let key = SessionKey {
        cid: "whip".to_string(),
        generation: attempt,
    };
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let handle = session::start_offer(
        media.factory.clone(),
        media.hub.clone(),
        media.audio.clone(),
        media.rate.clone(),
        key,
        events_tx,
    );
    let _closer = CloseOnDrop(&handle);
    let offer = match gather(&mut events).await {
        Ok(offer) => offer,
        Err(reason) => return reason,
    };
    let (made, answer) = match post(settings, client, offer).await {
        Ok(ok) => ok,
        Err(reason) => return reason,
    };
    debug!(resource = %redacted(&made), "WHIP session created");
    *resource.lock().unwrap_or_else(|e| e.into_inner()) = Some(made);
    handle.set_answer(answer);
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, async {
        loop {
            match events.recv().await {
                Some((_, SessionEvent::Connected)) => return Ok(()),
                Some((_, SessionEvent::Closed(reason))) => return Err(reason),
                Some((_, SessionEvent::Failed(err))) => return Err(format!("{err:?}")),
                Some(_) => {}
                None => return Err("the session task ended".to_string()),
            }
        }
    })
    .await;
    match connected {
        Ok(Ok(())) => {}
        Ok(Err(reason)) => return reason,
        Err(_) => {
            return format!(
                "the SFU did not connect within {} s",
                CONNECT_TIMEOUT.as_secs()
            );
        }
    }
    info!(endpoint = %redacted(&settings.endpoint), "publishing over WHIP");
    status.send_replace(Some(WhipStatus {
        state: WhipState::Live,
        ..report.clone()
    }));
    loop {
        match events.recv().await {
            Some((_, SessionEvent::Closed(reason))) => return reason,
            Some(_) => {}
            None => return "the session task ended".to_string(),
        }
    }
}

/// Closes the session when the attempt ends, however it ends (the publisher stopping
/// included).
struct CloseOnDrop<'h>(&'h SessionHandle);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The offer with the candidates gathered within [`GATHER_WAIT`].
async fn gather(
    events: &mut mpsc::UnboundedReceiver<(SessionKey, SessionEvent)>,
) -> Result<String, String> {
    let offer = loop {
        match events.recv().await {
            Some((_, SessionEvent::Offered(sdp))) => break sdp,
            Some((_, SessionEvent::Failed(err))) => return Err(format!("offer: {err:?}")),
            Some((_, SessionEvent::Closed(reason))) => return Err(reason),
            Some(_) => {}
            None => return Err("the session task ended".to_string()),
        }
    };
    let mut candidates: Vec<IceCandidateMsg> = Vec::new();
    let deadline = tokio::time::Instant::now() + GATHER_WAIT;
    let complete = loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some((_, SessionEvent::LocalCandidate(Some(c))))) => {
                candidates.push(IceCandidateMsg {
                    candidate: c.candidate,
                    sdp_mid: c.sdp_mid,
                    sdp_mline_index: c.sdp_mline_index,
                    username_fragment: None,
                })
            }
            Ok(Some((_, SessionEvent::LocalCandidate(None)))) => break true,
            Ok(Some((_, SessionEvent::Closed(reason)))) => return Err(reason),
            Ok(Some(_)) => {}
            Ok(None) => return Err("the session task ended".to_string()),
            Err(_) => break false,
        }
    };
    Ok(with_candidates(&offer, &candidates, complete))
}

/// `POST` the offer: the resource's URL and the answer, or why not.
async fn post(
    settings: &WhipSettings,
    client: &http::Client,
    offer: String,
) -> Result<(Url, String), String> {
    let mut url = settings.endpoint.clone();
    for _ in 0..=MAX_REDIRECTS {
        let reply = client
            .send(
                Method::POST,
                &url,
                settings.token.as_deref(),
                Some(("application/sdp", offer.clone())),
            )
            .await
            .map_err(|e| format!("POST {}: {e}", redacted(&url)))?;
        let location = reply
            .headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| url.join(l).ok());
        match reply.status {
            StatusCode::CREATED => {
                let resource =
                    location.ok_or_else(|| "the endpoint's 201 has no Location".to_string())?;
                if !reply.body.trim_start().starts_with("v=0") {
                    return Err("the endpoint's 201 carries no SDP answer".to_string());
                }
                return Ok((resource, reply.body));
            }
            StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT => {
                url = location.ok_or_else(|| "a redirect without Location".to_string())?;
            }
            _ => {
                return Err(format!(
                    "the endpoint refused the offer: {}",
                    reply.reason()
                ));
            }
        }
    }
    Err(format!("more than {MAX_REDIRECTS} redirects"))
}

/// `DELETE` a resource, best effort within `limit`.
async fn delete(client: &http::Client, resource: &Url, token: Option<&str>, limit: Duration) {
    let sent =
        tokio::time::timeout(limit, client.send(Method::DELETE, resource, token, None)).await;
    match sent {
        Ok(Ok(reply)) => debug!(status = %reply.status, "WHIP resource deleted"),
        Ok(Err(err)) => debug!("WHIP DELETE: {err}"),
        Err(_) => debug!("WHIP DELETE: no answer in time"),
    }
}

/// A URL for logs and errors: no user info, no query (where tokens may hide).
fn redacted(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.to_string()
}
