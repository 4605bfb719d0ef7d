//! Every pure parser a viewer's message reaches: the topic (split off at the first NUL byte),
//! then the payload as an offer, answer, candidate, error and status. Nothing may panic, and what
//! parses must survive a round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spyglass::signaling::protocol::{self as p, IceCandidateMsg, SessionDescriptionMsg};

fuzz_target!(|data: &[u8]| {
    let (topic, payload) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b""[..], data),
    };
    if let Ok(topic) = std::str::from_utf8(topic) {
        let _ = p::validate_cid(topic);
        let _ = p::validate_uid(topic);
        if let Some((_, Some(cid))) = p::parse_topic("fuzz/cam", topic) {
            assert!(
                p::validate_cid(cid).is_ok(),
                "parse_topic let a bad CID through: {cid:?}"
            );
        }
        if let Ok(topics) = p::Topics::new(topic) {
            let offer = topics.offer("viewer1");
            assert!(
                matches!(topics.parse(&offer), Some((_, Some("viewer1")))),
                "{offer}"
            );
        }
    }
    if let Ok(sdp) = p::parse_offer(payload) {
        let again = p::parse_offer(&SessionDescriptionMsg::offer(sdp.clone()).to_json()).unwrap();
        assert_eq!(sdp, again);
    }
    let _ = p::parse_answer(payload);
    if let Ok(Some(c)) = p::parse_candidate(payload) {
        let json = IceCandidateMsg::to_json(&c);
        assert_eq!(p::parse_candidate(&json).unwrap(), Some(c));
    }
    let _ = p::parse_error(payload);
    let _ = p::parse_status(payload);
    let _ = p::parse_ice_servers_request(payload);
    if let Ok(Some(reply)) = p::parse_ice_servers(payload) {
        assert_eq!(p::parse_ice_servers(&reply.to_json()).unwrap(), Some(reply));
    }
});
