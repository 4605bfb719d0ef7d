//! A viewer's nomination that comes before the device's own check: [`EarlyNomination`] wraps each
//! UDP socket of a peer connection and makes webrtc's ICE agent answer it.
//!
//! Chromium nominates aggressively: its very first connectivity check carries USE-CANDIDATE.
//! When it arrives, the device (the controlled agent) has not checked that pair yet, and
//! `ControlledSelector::handle_binding_request` (`rtc-ice-0.21.1/src/agent/agent_selector.rs`)
//! then only sends its own triggered check: it neither answers the request nor remembers the
//! nomination for when its check succeeds (RFC 8445 §7.3.1.4 and §7.3.1.5 ask for both). The
//! pair is selected, and DTLS starts, only when Chromium checks again: ~50 ms later on loopback
//! (its ping interval while no pair works), more over a real network.
//!
//! The wrapper keeps the last unanswered nominating request from each address; when the success
//! response to the device's own check comes from that address (so the pair is now valid), it
//! hands the same request to the agent once more. The agent then selects the pair and answers
//! the viewer's original transaction, which is what RFC 8445 asks of it. Only Binding
//! requests and responses are looked at; everything else passes untouched. At most
//! [`MAX_PENDING`] requests are kept, one per address; a request is replayed at most once and
//! only after a response from its own address.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use rtc::stun::attributes::ATTR_USE_CANDIDATE;
use rtc::stun::message::{
    BINDING_REQUEST, BINDING_SUCCESS, Message, TRANSACTION_ID_SIZE, is_stun_message,
};
use webrtc::runtime::{AsyncUdpSocket, RecvMeta, Transmit};

/// Unanswered nominating requests kept, one per source address.
pub const MAX_PENDING: usize = 8;

type TransactionId = [u8; TRANSACTION_ID_SIZE];

#[derive(Debug)]
struct Request {
    from: SocketAddr,
    id: TransactionId,
    datagram: Vec<u8>,
}

/// What one datagram is, as far as this module cares.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    /// A Binding request that nominates (USE-CANDIDATE).
    Nomination(TransactionId),
    /// A Binding success response.
    Success(TransactionId),
    Other,
}

fn classify(datagram: &[u8]) -> Kind {
    if !is_stun_message(datagram) {
        return Kind::Other;
    }
    let mut message = Message::new();
    message.raw = datagram.to_vec();
    if message.decode().is_err() {
        return Kind::Other;
    }
    let id = message.transaction_id.0;
    if message.typ == BINDING_REQUEST && message.contains(ATTR_USE_CANDIDATE) {
        Kind::Nomination(id)
    } else if message.typ == BINDING_SUCCESS {
        Kind::Success(id)
    } else {
        Kind::Other
    }
}

/// The nominations waiting for the device's own check, and those due for the agent again.
/// Sans-IO: datagrams in, replays out.
#[derive(Debug, Default)]
pub struct Nominations {
    pending: VecDeque<Request>,
    replay: VecDeque<(SocketAddr, Vec<u8>)>,
}

impl Nominations {
    /// A datagram arrived from `from`.
    pub fn received(&mut self, from: SocketAddr, datagram: &[u8]) {
        match classify(datagram) {
            Kind::Nomination(id) => {
                self.pending.retain(|r| r.from != from);
                if self.pending.len() >= MAX_PENDING {
                    self.pending.pop_front();
                }
                self.pending.push_back(Request {
                    from,
                    id,
                    datagram: datagram.to_vec(),
                });
            }
            Kind::Success(_) => {
                if let Some(at) = self.pending.iter().position(|r| r.from == from)
                    && let Some(request) = self.pending.remove(at)
                {
                    self.replay.push_back((from, request.datagram));
                }
            }
            Kind::Other => {}
        }
    }

    /// A datagram is sent to `to`: an answer to a kept request means it needs no replay.
    pub fn sent(&mut self, to: SocketAddr, datagram: &[u8]) {
        if self.pending.is_empty() {
            return;
        }
        if let Kind::Success(id) = classify(datagram) {
            self.pending.retain(|r| !(r.from == to && r.id == id));
        }
    }

    /// The next request to hand to the agent again.
    pub fn next_replay(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.replay.pop_front()
    }
}

/// A peer connection's UDP socket with [`Nominations`] in between.
pub struct EarlyNomination {
    inner: Arc<dyn AsyncUdpSocket>,
    nominations: Mutex<Nominations>,
}

impl fmt::Debug for EarlyNomination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EarlyNomination")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl EarlyNomination {
    pub fn new(inner: Arc<dyn AsyncUdpSocket>) -> Self {
        EarlyNomination {
            inner,
            nominations: Mutex::new(Nominations::default()),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Nominations) -> T) -> T {
        let mut n = self.nominations.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut n)
    }
}

/// Whether a datagram may be STUN (its first two bits are zero), before anything is parsed:
/// media (RTP/RTCP, 0x80-0xBF) and DTLS (20-63) are told apart by their first byte alone.
fn may_be_stun(datagram: &[u8]) -> bool {
    datagram.len() >= 20 && datagram[0] < 2
}

impl AsyncUdpSocket for EarlyNomination {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn poll_send(&self, cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        if transmit.segment_size.is_none() && may_be_stun(transmit.contents) {
            self.with(|n| n.sent(transmit.destination, transmit.contents));
        }
        self.inner.poll_send(cx, transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        if let (Some(buf), Some(slot)) = (bufs.first_mut(), meta.first_mut())
            && let Some((from, datagram)) = self.with(Nominations::next_replay)
            && datagram.len() <= buf.len()
        {
            buf[..datagram.len()].copy_from_slice(&datagram);
            let mut replay = RecvMeta::default();
            replay.addr = from;
            replay.len = datagram.len();
            replay.stride = datagram.len();
            replay.dst_ip = self.inner.local_addr().ok().map(|a| a.ip());
            *slot = replay;
            return Poll::Ready(Ok(1));
        }
        let polled = self.inner.poll_recv(cx, bufs, meta);
        if let Poll::Ready(Ok(count)) = &polled {
            let mut replay_due = false;
            for (buf, m) in bufs.iter().zip(meta.iter()).take(*count) {
                // Coalesced (GRO) buffers hold media, never a lone STUN message.
                if m.stride >= m.len && may_be_stun(&buf[..m.len]) {
                    replay_due |= self.with(|n| {
                        n.received(m.addr, &buf[..m.len]);
                        !n.replay.is_empty()
                    });
                }
            }
            if replay_due {
                // Polled again at once: the replay follows the response it waited for.
                cx.waker().wake_by_ref();
            }
        }
        polled
    }

    fn max_gso_segments(&self) -> usize {
        self.inner.max_gso_segments()
    }

    fn max_gro_segments(&self) -> usize {
        self.inner.max_gro_segments()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::stun::message::{Setter, TransactionId};

    struct UseCandidate;
    impl Setter for UseCandidate {
        fn add_to(&self, m: &mut Message) -> Result<(), rtc::shared::error::Error> {
            m.add(ATTR_USE_CANDIDATE, &[]);
            Ok(())
        }
    }

    fn message(typ: rtc::stun::message::MessageType, id: [u8; 12], nominate: bool) -> Vec<u8> {
        let mut m = Message::new();
        let mut setters: Vec<Box<dyn Setter>> = vec![Box::new(typ), Box::new(TransactionId(id))];
        if nominate {
            setters.push(Box::new(UseCandidate));
        }
        m.build(&setters).unwrap();
        m.raw
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn an_unanswered_nomination_is_replayed_after_our_check_succeeds() {
        let mut n = Nominations::default();
        let nominate = message(BINDING_REQUEST, [1; 12], true);
        n.received(addr(5000), &nominate);
        assert_eq!(n.next_replay(), None, "nothing before our check succeeds");
        // Our own check's response from another address does not count.
        n.received(addr(5001), &message(BINDING_SUCCESS, [9; 12], false));
        assert_eq!(n.next_replay(), None);
        n.received(addr(5000), &message(BINDING_SUCCESS, [2; 12], false));
        assert_eq!(n.next_replay(), Some((addr(5000), nominate)));
        // Once only.
        n.received(addr(5000), &message(BINDING_SUCCESS, [3; 12], false));
        assert_eq!(n.next_replay(), None);
    }

    #[test]
    fn an_answered_or_plain_request_is_not_replayed() {
        let mut n = Nominations::default();
        n.received(addr(5000), &message(BINDING_REQUEST, [1; 12], true));
        n.sent(addr(5000), &message(BINDING_SUCCESS, [1; 12], false));
        n.received(addr(5000), &message(BINDING_REQUEST, [4; 12], false));
        n.received(addr(5000), &message(BINDING_SUCCESS, [2; 12], false));
        assert_eq!(n.next_replay(), None);
        // Media and garbage pass by.
        n.received(addr(5000), &[0x80; 40]);
        n.received(addr(5000), &[0u8; 24]);
        assert_eq!(n.next_replay(), None);
    }

    #[test]
    fn pending_requests_are_bounded() {
        let mut n = Nominations::default();
        for port in 0..100 {
            n.received(addr(6000 + port), &message(BINDING_REQUEST, [5; 12], true));
        }
        assert_eq!(n.pending.len(), MAX_PENDING);
    }
}
