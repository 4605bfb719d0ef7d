//! spyglass: a camera daemon that captures video, encodes H.264 once, and serves it to WebRTC
//! viewers whose offers arrive over MQTT 5.

pub mod audio;
pub mod config;
pub mod daemon;
pub mod mqtt;
pub mod pattern;
pub mod peer;
pub mod pipeline;
pub mod rate;
pub mod selftest;
pub mod service;
pub mod signaling;
pub mod video;
pub mod view;
pub mod web;
