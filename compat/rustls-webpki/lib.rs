//! rustls-webpki 0.102's name for rustls-webpki 0.103. rumqttc 0.25 depends on 0.102 only for
//! `webpki::Error` (a variant of its TLS error, never produced with the rustls configuration
//! spyglass hands it); re-exporting 0.103 keeps one certificate verifier in the build, the one
//! rustls uses.

pub use upstream::*;
