//! Which of a viewer's ICE candidates reach webrtc's ICE agent. Every remote candidate, whether
//! it came in the offer's `a=candidate` lines or trickled later, passes one [`CandidateGate`]
//! per session before the library sees it:
//!
//! - **TCP candidates are refused.** The device gathers no TCP candidates, and webrtc 0.21 opens a
//!   TCP connection to every remote `tcptype passive` candidate it is given (no cap, no timeout):
//!   a viewer could make the device connect anywhere and run it out of file descriptors.
//! - **Addresses no viewer can have are refused**: unspecified (`0.0.0.0/8`, `::`), multicast,
//!   broadcast (`255.255.255.255` and the broadcast addresses of the device's own networks), IPv4
//!   class E (`240.0.0.0/4`), link-local (`169.254.0.0/16`, `fe80::/10`), IPv4-mapped and
//!   IPv4-compatible IPv6 (`::ffff:0:0/96`, `::/96`), ports below 1024 (browsers and TURN servers
//!   never use them; they are where the well-known services listen), and host names other than mDNS `.local` names (which
//!   webrtc resolves only with `--mdns on`).
//! - Loopback (`127.0.0.0/8`, `::1`) and the device's own addresses are refused unless
//!   [`RemotePolicy::allow_loopback`] is set (`--rtc-allow-loopback on`, for tests on 127.0.0.1).
//!   A viewer on the device itself connects either way: the device answers its checks and learns
//!   its address as peer-reflexive.
//! - Candidates for RTCP's component 2 are left out (RTP and RTCP share one transport).
//! - **At most [`MAX_REMOTE_CANDIDATES`] remote candidates per session**, and no more than keep the
//!   session within [`MAX_CANDIDATE_PAIRS`] candidate pairs (RFC 8445 §6.1.2.5): webrtc pairs every
//!   remote candidate with every local candidate of the same address family and checks each pair.
//!
//! The offer's candidates are taken out of its SDP ([`split_offer`]) and handed in after the
//! answer is made, when the device's own host candidates are known, so that both kinds go
//! through the same count.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rtc::shared::ifaces::{Kind, NextHop};

use rtc::ice::candidate::{Candidate, unmarshal_candidate};
use rtc::ice::network_type::NetworkType;

/// Most remote candidates one session hands to the ICE agent (the offer's and trickled ones
/// together; repeats of an admitted candidate are not counted). Browsers send a handful: one host
/// candidate per interface and address family, server-reflexive and relayed ones.
pub const MAX_REMOTE_CANDIDATES: usize = 20;

/// Most candidate pairs per session, RFC 8445's default limit on a checklist (§6.1.2.5).
pub const MAX_CANDIDATE_PAIRS: usize = 100;

/// Lowest port a remote candidate may name.
pub const MIN_REMOTE_PORT: u16 = 1024;

/// Which remote addresses are acceptable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemotePolicy {
    /// Accept loopback candidates and the device's own addresses (tests on 127.0.0.1).
    pub allow_loopback: bool,
}

/// The device's own addresses and its networks' broadcast addresses.
#[derive(Debug, Clone, Default)]
pub struct LocalAddresses {
    pub own: HashSet<IpAddr>,
    pub broadcast: HashSet<IpAddr>,
}

impl LocalAddresses {
    /// This machine's, as its interfaces say now (none when they cannot be listed).
    pub fn of_this_host() -> Self {
        let mut local = LocalAddresses::default();
        for interface in rtc::shared::ifaces::ifaces().unwrap_or_default() {
            if !matches!(interface.kind, Kind::Ipv4 | Kind::Ipv6) {
                continue;
            }
            if let Some(addr) = interface.addr {
                local.own.insert(addr.ip());
            }
            if let Some(NextHop::Broadcast(addr)) = interface.hop {
                local.broadcast.insert(addr.ip());
            }
        }
        local
    }
}

/// Why a remote candidate was not handed to the ICE agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("does not parse")]
    Unparsable,
    #[error("TCP candidates are not used")]
    Tcp,
    #[error("{0} address")]
    Address(&'static str),
    #[error("port below {MIN_REMOTE_PORT}")]
    LowPort,
    #[error("host name that is not an mDNS .local name")]
    HostName,
    #[error("the session already has {MAX_REMOTE_CANDIDATES} remote candidates")]
    TooMany,
    #[error("it would take the session past {MAX_CANDIDATE_PAIRS} candidate pairs")]
    TooManyPairs,
}

/// Address families, as webrtc pairs them (UDP over IPv4 with UDP over IPv4, and so on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4 = 0,
    V6 = 1,
}

/// One session's remote candidate admission: the policy, what was admitted, and how many local
/// candidates each remote one will be paired with.
#[derive(Debug)]
pub struct CandidateGate {
    policy: RemotePolicy,
    local_addresses: LocalAddresses,
    /// Admitted candidates, by the fields webrtc compares to drop repeats.
    admitted: HashSet<String>,
    remote: [usize; 2],
    /// Distinct local UDP candidates seen (host, and server-reflexive or relayed once gathered).
    local: [HashSet<String>; 2],
    /// Local candidates still to come per family: one server-reflexive per host candidate and
    /// STUN server, one relayed per TURN server. Counted in advance so that pairs made when they
    /// arrive stay within the cap.
    stun_servers: usize,
    turn_servers: usize,
    host: [usize; 2],
    refused: usize,
}

impl CandidateGate {
    /// A gate for a session on a device with `local_addresses` whose peer connection uses
    /// `stun_servers` STUN and `turn_servers` TURN URLs.
    pub fn new(
        policy: RemotePolicy,
        local_addresses: LocalAddresses,
        stun_servers: usize,
        turn_servers: usize,
    ) -> Self {
        CandidateGate {
            policy,
            local_addresses,
            admitted: HashSet::new(),
            remote: [0; 2],
            local: [HashSet::new(), HashSet::new()],
            stun_servers,
            turn_servers,
            host: [0; 2],
            refused: 0,
        }
    }

    /// Count the local candidates of the answer's SDP (the host candidates, gathered by the
    /// time the answer exists).
    pub fn note_local_sdp(&mut self, sdp: &str) {
        for line in sdp.lines() {
            if let Some(value) = line.trim_end().strip_prefix("a=") {
                self.note_local(value);
            }
        }
    }

    /// Count one local candidate (`candidate:...`, as trickled to the viewer).
    pub fn note_local(&mut self, candidate: &str) {
        let Ok(c) = parse(candidate) else { return };
        let Some(family) = family(&c) else { return };
        let key = format!("{}:{}", c.address(), c.port());
        if self.local[family as usize].insert(key)
            && c.candidate_type() == rtc::ice::candidate::CandidateType::Host
        {
            self.host[family as usize] += 1;
        }
    }

    /// Local candidates a remote candidate of `family` may end up paired with: those seen, or
    /// the host candidates plus the server-reflexive and relayed ones still to come.
    fn locals(&self, family: Family) -> usize {
        let f = family as usize;
        let expected = self.host[f] * (1 + self.stun_servers) + self.turn_servers;
        self.local[f].len().max(expected).max(1)
    }

    /// Decide about one remote candidate (`candidate:...` or the bare value). `Ok(true)`: hand it
    /// to webrtc and it counts; `Ok(false)`: harmless but not needed (a repeat of one already
    /// handed in, or an RTCP component-2 candidate: RTP and RTCP share one transport).
    pub fn admit(&mut self, candidate: &str) -> Result<bool, Refusal> {
        let result = self.check(candidate);
        if result.is_err() {
            self.refused += 1;
        }
        result
    }

    fn check(&mut self, candidate: &str) -> Result<bool, Refusal> {
        let c = parse(candidate).map_err(|_| Refusal::Unparsable)?;
        if c.network_type().is_tcp() {
            return Err(Refusal::Tcp);
        }
        if c.component() != 1 {
            // RTCP candidates of a peer that also offers rtcp-mux: not needed, not a threat.
            return Ok(false);
        }
        let family = if c.address().ends_with(".local") {
            // Resolved by webrtc when mDNS is on (always to IPv4), ignored when it is off.
            Family::V4
        } else {
            if c.address().parse::<IpAddr>().is_err() {
                return Err(Refusal::HostName);
            }
            let ip = c.addr().ip();
            if let Some(kind) = refused_address(ip, self.policy) {
                return Err(Refusal::Address(kind));
            }
            if self.local_addresses.broadcast.contains(&ip) {
                return Err(Refusal::Address("broadcast"));
            }
            if !self.policy.allow_loopback && self.local_addresses.own.contains(&ip) {
                return Err(Refusal::Address("the device's own"));
            }
            family(&c).ok_or(Refusal::Unparsable)?
        };
        if c.port() < MIN_REMOTE_PORT {
            return Err(Refusal::LowPort);
        }
        let key = format!(
            "{}|{}|{}|{}|{}|{:?}",
            c.network_type(),
            c.candidate_type(),
            c.address(),
            c.port(),
            c.tcp_type(),
            c.related_address().map(|r| (r.address, r.port)),
        );
        if self.admitted.contains(&key) {
            return Ok(false);
        }
        if self.admitted.len() >= MAX_REMOTE_CANDIDATES {
            return Err(Refusal::TooMany);
        }
        let f = family as usize;
        if (self.remote[f] + 1) * self.locals(family) > MAX_CANDIDATE_PAIRS {
            return Err(Refusal::TooManyPairs);
        }
        self.admitted.insert(key);
        self.remote[f] += 1;
        Ok(true)
    }

    /// An ICE restart: the agent forgets the remote candidates it had, so the counts start
    /// afresh (the refusals are kept for the session's log line).
    pub fn restart(&mut self) {
        self.admitted.clear();
        self.remote = [0; 2];
    }

    /// Remote candidates handed to webrtc so far.
    pub fn admitted(&self) -> usize {
        self.admitted.len()
    }

    /// Remote candidates refused so far.
    pub fn refused(&self) -> usize {
        self.refused
    }

    /// The most candidate pairs webrtc can have made from what was admitted.
    pub fn max_pairs(&self) -> usize {
        [Family::V4, Family::V6]
            .into_iter()
            .map(|f| self.remote[f as usize] * self.locals(f))
            .sum()
    }
}

fn parse(candidate: &str) -> Result<Candidate, rtc::shared::error::Error> {
    let value = candidate.strip_prefix("candidate:").unwrap_or(candidate);
    unmarshal_candidate(value)
}

fn family(c: &Candidate) -> Option<Family> {
    match c.network_type() {
        NetworkType::Udp4 | NetworkType::Tcp4 => Some(Family::V4),
        NetworkType::Udp6 | NetworkType::Tcp6 => Some(Family::V6),
        _ => None,
    }
}

/// Why `ip` is not an address a viewer can be reached at, or `None` when it may be.
pub fn refused_address(ip: IpAddr, policy: RemotePolicy) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4, policy),
        IpAddr::V6(v6) => refused_v6(v6, policy),
    }
}

fn refused_v4(ip: Ipv4Addr, policy: RemotePolicy) -> Option<&'static str> {
    let a = ip.octets()[0];
    if a == 0 {
        Some("unspecified (0.0.0.0/8)")
    } else if ip.is_loopback() && !policy.allow_loopback {
        Some("loopback")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast() {
        Some("broadcast")
    } else if a >= 240 {
        Some("reserved (240.0.0.0/4)")
    } else {
        None
    }
}

fn refused_v6(ip: Ipv6Addr, policy: RemotePolicy) -> Option<&'static str> {
    let segments = ip.segments();
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_loopback() {
        (!policy.allow_loopback).then_some("loopback")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if segments[0] & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if ip.to_ipv4_mapped().is_some() {
        Some("IPv4-mapped")
    } else if segments[..6] == [0; 6] {
        Some("IPv4-compatible")
    } else {
        None
    }
}

/// Take the `a=candidate` lines out of an offer's media sections: the SDP without them (line
/// endings kept) and the candidates (`candidate:...`), to be handed in one by one through a
/// [`CandidateGate`]. Candidate lines before the first `m=` are dropped (webrtc ignores them).
pub fn split_offer(sdp: &str) -> (String, Vec<String>) {
    let mut kept = String::with_capacity(sdp.len());
    let mut candidates = Vec::new();
    let mut in_media = false;
    for line in sdp.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\r', '\n']);
        in_media |= bare.starts_with("m=");
        if let Some(value) = bare.strip_prefix("a=")
            && value.starts_with("candidate:")
        {
            if in_media {
                candidates.push(value.to_string());
            }
            continue;
        }
        kept.push_str(line);
    }
    (kept, candidates)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: RemotePolicy = RemotePolicy {
        allow_loopback: false,
    };
    const LOOPBACK: RemotePolicy = RemotePolicy {
        allow_loopback: true,
    };

    fn udp(addr: &str, port: u16) -> String {
        format!("candidate:1 1 udp 2130706431 {addr} {port} typ host")
    }

    #[test]
    fn tcp_candidates_are_refused_whatever_their_address() {
        let mut gate = CandidateGate::new(LOOPBACK, LocalAddresses::default(), 0, 0);
        for c in [
            "candidate:1 1 tcp 1 127.0.0.1 9 typ host tcptype passive",
            "candidate:2 1 TCP 1 192.168.1.2 443 typ host tcptype passive",
            "candidate:3 1 tcp 1 10.0.0.1 5000 typ host tcptype active",
            "candidate:4 1 tcp 1 10.0.0.1 5000 typ host tcptype so",
        ] {
            assert_eq!(gate.admit(c), Err(Refusal::Tcp), "{c}");
        }
        assert_eq!(gate.admitted(), 0);
        assert_eq!(gate.refused(), 4);
    }

    #[test]
    fn addresses_no_viewer_has_are_refused() {
        for addr in [
            "0.0.0.0",
            "0.1.2.3",
            "169.254.1.1",
            "224.0.0.251",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "::",
            "fe80::1",
            "ff02::fb",
            "::ffff:127.0.0.1",
            "::ffff:192.168.1.1",
            "::127.0.0.1",
        ] {
            for policy in [OPEN, LOOPBACK] {
                let mut gate = CandidateGate::new(policy, LocalAddresses::default(), 0, 0);
                assert!(
                    matches!(gate.admit(&udp(addr, 5000)), Err(Refusal::Address(_))),
                    "{addr}"
                );
            }
        }
    }

    #[test]
    fn loopback_is_refused_unless_allowed() {
        for addr in ["127.0.0.1", "127.9.9.9", "::1"] {
            let mut gate = CandidateGate::new(OPEN, LocalAddresses::default(), 0, 0);
            assert_eq!(
                gate.admit(&udp(addr, 5000)),
                Err(Refusal::Address("loopback"))
            );
            let mut gate = CandidateGate::new(LOOPBACK, LocalAddresses::default(), 0, 0);
            assert_eq!(gate.admit(&udp(addr, 5000)), Ok(true), "{addr}");
        }
    }

    #[test]
    fn lan_public_relay_and_mdns_candidates_pass() {
        let mut gate = CandidateGate::new(OPEN, LocalAddresses::default(), 0, 0);
        for c in [
            udp("192.168.1.20", 50000),
            udp("10.1.2.3", 50000),
            udp("100.64.0.1", 50000),
            udp("2001:db8::1", 50000),
            udp("fd00::1", 50000),
            udp("1b3e5d02-6a7c-4d7e-9e51-3f6f4b8a1c2d.local", 50000),
            "candidate:5 1 udp 1677729535 203.0.113.7 61000 typ srflx raddr 0.0.0.0 rport 0".into(),
            "candidate:6 1 udp 16777215 198.51.100.9 3478 typ relay raddr 203.0.113.7 rport 61000"
                .into(),
        ] {
            assert_eq!(gate.admit(&c), Ok(true), "{c}");
        }
        assert_eq!(gate.admitted(), 8);
    }

    #[test]
    fn junk_host_names_and_low_ports_are_refused_and_rtcp_components_left_out() {
        let mut gate = CandidateGate::new(OPEN, LocalAddresses::default(), 0, 0);
        assert_eq!(gate.admit("candidate:garbage"), Err(Refusal::Unparsable));
        assert_eq!(
            gate.admit(&udp("attacker.example", 5000)),
            Err(Refusal::Unparsable),
            "webrtc itself rejects host names; so do we"
        );
        for port in [0, 53, 123, 1023] {
            assert_eq!(gate.admit(&udp("192.168.1.2", port)), Err(Refusal::LowPort));
        }
        // RTCP component 2: not needed, not counted, not refused.
        assert_eq!(
            gate.admit("candidate:1 2 udp 2130706430 192.168.1.2 5001 typ host"),
            Ok(false)
        );
        assert_eq!((gate.admitted(), gate.refused()), (0, 6));
    }

    #[test]
    fn the_devices_own_addresses_and_broadcasts_are_refused() {
        let local = LocalAddresses {
            own: ["192.168.1.20".parse().unwrap(), "fd00::20".parse().unwrap()].into(),
            broadcast: ["192.168.1.255".parse().unwrap()].into(),
        };
        let mut gate = CandidateGate::new(OPEN, local.clone(), 0, 0);
        for addr in ["192.168.1.20", "fd00::20", "192.168.1.255"] {
            assert!(
                matches!(gate.admit(&udp(addr, 5000)), Err(Refusal::Address(_))),
                "{addr}"
            );
        }
        assert_eq!(gate.admit(&udp("192.168.1.21", 5000)), Ok(true));
        // With loopback allowed (tests), the device's own addresses are too; broadcast never.
        let mut gate = CandidateGate::new(LOOPBACK, local, 0, 0);
        assert_eq!(gate.admit(&udp("192.168.1.20", 5000)), Ok(true));
        assert!(gate.admit(&udp("192.168.1.255", 5000)).is_err());
    }

    #[test]
    fn this_hosts_loopback_is_among_its_own_addresses() {
        let local = LocalAddresses::of_this_host();
        assert!(
            local.own.contains(&"127.0.0.1".parse::<IpAddr>().unwrap()),
            "{local:?}"
        );
    }

    #[test]
    fn at_most_the_cap_of_remote_candidates_and_repeats_are_free() {
        let mut gate = CandidateGate::new(LOOPBACK, LocalAddresses::default(), 0, 0);
        gate.note_local_sdp("a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host\r\n");
        for port in 40001..=40000 + MAX_REMOTE_CANDIDATES as u16 {
            assert_eq!(gate.admit(&udp("127.0.0.1", port)), Ok(true));
        }
        // A repeat of an admitted candidate is harmless (webrtc ignores it) and not counted.
        assert_eq!(gate.admit(&udp("127.0.0.1", 40001)), Ok(false));
        assert_eq!(gate.admit(&udp("127.0.0.1", 50000)), Err(Refusal::TooMany));
        assert_eq!(gate.admitted(), MAX_REMOTE_CANDIDATES);
        assert_eq!(gate.max_pairs(), MAX_REMOTE_CANDIDATES);
    }

    #[test]
    fn pairs_stay_within_the_cap_with_many_local_candidates() {
        // Eight host candidates on IPv4 and one STUN server: 16 local candidates per remote one.
        let mut gate = CandidateGate::new(OPEN, LocalAddresses::default(), 1, 0);
        for i in 1..=8 {
            gate.note_local(&udp(&format!("192.168.{i}.2"), 40000));
        }
        let mut admitted = 0;
        for port in 40001..=40050u16 {
            if gate.admit(&udp("192.168.1.77", port)).is_ok() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, MAX_CANDIDATE_PAIRS / 16);
        assert!(gate.max_pairs() <= MAX_CANDIDATE_PAIRS);
        // IPv6 candidates pair only with IPv6 local candidates (none: counted as one).
        assert_eq!(gate.admit(&udp("2001:db8::1", 5000)), Ok(true));
        assert!(gate.max_pairs() <= MAX_CANDIDATE_PAIRS);
    }

    #[test]
    fn the_offer_loses_its_candidate_lines_and_keeps_the_rest() {
        let sdp = "v=0\r\na=candidate:0 1 udp 1 10.0.0.1 1 typ host\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\n\
a=mid:0\r\na=candidate:1 1 udp 2130706431 192.168.1.2 5000 typ host\r\n\
a=candidate:2 1 tcp 1 127.0.0.1 9 typ host tcptype passive\r\na=end-of-candidates\r\n";
        let (kept, candidates) = split_offer(sdp);
        assert_eq!(
            kept,
            "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=mid:0\r\na=end-of-candidates\r\n"
        );
        assert_eq!(
            candidates,
            [
                "candidate:1 1 udp 2130706431 192.168.1.2 5000 typ host",
                "candidate:2 1 tcp 1 127.0.0.1 9 typ host tcptype passive"
            ]
        );
    }
}
