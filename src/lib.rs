//! spyglass: a camera daemon that captures video, encodes H.264 once, and serves it to WebRTC
//! viewers whose offers arrive over MQTT 5.

/// The version the daemon announces (status messages, `/config.json`, the start-up log line).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub mod audio;
pub mod config;
pub mod daemon;
pub mod homeassistant;
pub mod logging;
pub mod mqtt;
pub mod pattern;
pub mod peer;
pub mod pipeline;
pub mod rate;
pub mod secret;
pub mod selftest;
pub mod service;
pub mod signaling;
pub mod turn_rest;
pub mod video;
pub mod view;
pub mod web;
pub mod whep;
pub mod whip;
