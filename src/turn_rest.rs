//! TURN credentials without handing out the secret: coturn's time-limited credentials (the
//! "TURN REST API": coturn's `use-auth-secret` with `static-auth-secret`), and the ICE servers
//! the device grants a viewer with them.
//!
//! coturn and the device share a secret. A credential is the user name `EXPIRY:NAME` (EXPIRY in
//! seconds since the Unix epoch) with the password base64(HMAC-SHA1(secret, user name)): coturn
//! computes the same password from the name and refuses a name whose expiry has passed. So the
//! device makes credentials for its own TURN allocations and hands viewers credentials that work
//! for a while, for that TURN server only, and the secret never leaves the device.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;

use crate::secret::Secret;

use crate::signaling::protocol::{IceServer, IceServersMsg};

/// Lifetime of the credentials handed out unless configured otherwise.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// The secret shared with the TURN server (coturn's `static-auth-secret`). `Debug` never shows
/// it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TurnSecret(Secret);

/// One time-limited TURN credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnCredential {
    /// `EXPIRY:NAME`.
    pub username: String,
    /// base64(HMAC-SHA1(secret, username)).
    pub password: String,
}

impl TurnSecret {
    /// `None` for an empty secret (coturn would accept anything signed with it).
    pub fn new(secret: &str) -> Option<TurnSecret> {
        (!secret.is_empty()).then(|| TurnSecret(Secret::from(secret)))
    }

    /// A credential for `name` that coturn accepts until `expires` (seconds since the epoch).
    pub fn credential_until(&self, name: &str, expires: u64) -> TurnCredential {
        let username = format!("{expires}:{name}");
        let key =
            ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, self.0.as_bytes());
        let tag = ring::hmac::sign(&key, username.as_bytes());
        TurnCredential {
            username,
            password: base64::engine::general_purpose::STANDARD.encode(tag.as_ref()),
        }
    }

    /// A credential for `name`, valid for `lifetime` from `now`.
    pub fn credential(&self, name: &str, now: SystemTime, lifetime: Duration) -> TurnCredential {
        self.credential_until(name, unix_seconds(now).saturating_add(lifetime.as_secs()))
    }
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The part of a TURN user name after `EXPIRY:`: only `[A-Za-z0-9_-]`, anything else becomes
/// `-` (a device id such as `garage/cam1` gives `garage-cam1`), at most 64 characters.
pub fn user_name(name: &str) -> String {
    name.chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// What the device hands a viewer that asks for ICE servers (docs/PROTOCOL.md, "ICE servers"):
/// its STUN servers as they are, and its viewers' TURN servers with a fresh credential made for
/// that viewer. Without a secret it hands out no TURN server: a long-term password is never
/// published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceServerGrant {
    stun: Vec<String>,
    turn: Vec<String>,
    secret: Option<TurnSecret>,
    lifetime: Duration,
}

impl IceServerGrant {
    /// `turn` is left out unless there is a `secret`.
    pub fn new(
        stun: Vec<String>,
        turn: Vec<String>,
        secret: Option<TurnSecret>,
        lifetime: Duration,
    ) -> IceServerGrant {
        let turn = if secret.is_some() { turn } else { vec![] };
        IceServerGrant {
            stun,
            turn,
            secret,
            lifetime,
        }
    }

    /// True when the device has no ICE server to hand out (it still answers requests, with an
    /// empty list).
    pub fn is_empty(&self) -> bool {
        self.stun.is_empty() && self.turn.is_empty()
    }

    /// The servers for the viewer `cid`, at `now`.
    pub fn grant(&self, cid: &str, now: SystemTime) -> IceServersMsg {
        let mut servers = Vec::new();
        if !self.stun.is_empty() {
            servers.push(IceServer {
                urls: self.stun.clone(),
                username: None,
                credential: None,
            });
        }
        if let (false, Some(secret)) = (self.turn.is_empty(), &self.secret) {
            let credential = secret.credential(&user_name(cid), now, self.lifetime);
            servers.push(IceServer {
                urls: self.turn.clone(),
                username: Some(credential.username),
                credential: Some(credential.password),
            });
        }
        IceServersMsg::granted(servers, self.lifetime.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_what_coturn_computes() {
        // The same computation as coturn's (and as netlab's, web/test/netlab.mjs, and the
        // draft's example): HMAC-SHA1 over the user name with the secret, in standard base64.
        // Reference value from `printf '1700000000:web-1' | openssl dgst -sha1 -hmac s3cret
        // -binary | base64`.
        let secret = TurnSecret::new("s3cret").unwrap();
        let c = secret.credential_until("web-1", 1_700_000_000);
        assert_eq!(c.username, "1700000000:web-1");
        assert_eq!(c.password, "YVY1xy0OvfK0DVGPN1N2OMhnz/A=");
        assert!(TurnSecret::new("").is_none());
        assert!(!format!("{secret:?}").contains("s3cret"));
    }

    #[test]
    fn the_expiry_is_now_plus_the_lifetime() {
        let secret = TurnSecret::new("k").unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let c = secret.credential("v", now, Duration::from_secs(3600));
        assert_eq!(c.username, "4600:v");
    }

    #[test]
    fn user_names_keep_to_safe_characters() {
        assert_eq!(user_name("garage/cam1"), "garage-cam1");
        assert_eq!(user_name("web-00ff_A"), "web-00ff_A");
        assert_eq!(user_name(&"x".repeat(100)).len(), 64);
    }

    #[test]
    fn a_grant_has_stun_as_is_and_turn_with_a_credential_for_the_viewer() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000 - 60);
        let grant = IceServerGrant::new(
            vec!["stun:stun.lan:3478".into()],
            vec![
                "turn:turn.lan:3478".into(),
                "turns:turn.lan:5349?transport=tcp".into(),
            ],
            TurnSecret::new("s3cret"),
            Duration::from_secs(60),
        );
        let msg = grant.grant("web-1", now);
        assert_eq!(msg.ttl, 60);
        assert_eq!(msg.ice_servers.len(), 2);
        assert_eq!(msg.ice_servers[0].urls, ["stun:stun.lan:3478"]);
        assert_eq!(msg.ice_servers[0].username, None);
        let turn = &msg.ice_servers[1];
        assert_eq!(turn.urls.len(), 2);
        assert_eq!(turn.username.as_deref(), Some("1700000000:web-1"));
        assert_eq!(
            turn.credential.as_deref(),
            Some("YVY1xy0OvfK0DVGPN1N2OMhnz/A=")
        );
        // Without a secret no TURN server is handed out.
        let stun_only = IceServerGrant::new(
            vec!["stun:s".into()],
            vec!["turn:t".into()],
            None,
            DEFAULT_LIFETIME,
        );
        assert_eq!(stun_only.grant("v", now).ice_servers.len(), 1);
        let nothing = IceServerGrant::new(vec![], vec!["turn:t".into()], None, DEFAULT_LIFETIME);
        assert!(nothing.is_empty());
        assert!(nothing.grant("v", now).ice_servers.is_empty());
    }
}
