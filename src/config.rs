//! TEMPORARY stand-in until the real config module lands.
use crate::video::VideoSpec;
use std::net::IpAddr;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub id: String,
    pub mqtt: BrokerUrl,
    pub username: Option<String>,
    pub password: Option<String>,
    pub video: VideoSpec,
    pub bitrate_kbps: u32,
    pub max_viewers: usize,
    pub peer_timeout: Duration,
    pub stun: Vec<String>,
    pub turn: Vec<String>,
    pub turn_username: Option<String>,
    pub turn_password: Option<String>,
    pub rtc_bind: Vec<IpAddr>,
    pub mdns: bool,
}

pub fn parse_args(args: Vec<String>) -> DaemonConfig {
    let mut c = DaemonConfig {
        id: "dev".into(),
        mqtt: BrokerUrl {
            host: "127.0.0.1".into(),
            port: 1883,
        },
        username: None,
        password: None,
        video: VideoSpec {
            source: "test".into(),
            width: 1280,
            height: 720,
            fps: 30,
        },
        bitrate_kbps: 2000,
        max_viewers: 4,
        peer_timeout: Duration::from_secs(30),
        stun: vec![],
        turn: vec![],
        turn_username: None,
        turn_password: None,
        rtc_bind: vec![],
        mdns: true,
    };
    let mut it = args.into_iter().skip(1);
    while let Some(a) = it.next() {
        let v = it.next().unwrap_or_default();
        match a.as_str() {
            "--id" => c.id = v,
            "--mqtt" => {
                let hp = v.trim_start_matches("mqtt://");
                let (h, p) = hp.split_once(':').unwrap();
                c.mqtt = BrokerUrl {
                    host: h.into(),
                    port: p.parse().unwrap(),
                };
            }
            "--video" => c.video.source = v,
            "--size" => {
                let (w, h) = v.split_once('x').unwrap();
                c.video.width = w.parse().unwrap();
                c.video.height = h.parse().unwrap();
            }
            "--fps" => c.video.fps = v.parse().unwrap(),
            "--bitrate" => c.bitrate_kbps = v.parse().unwrap(),
            "--max-viewers" => c.max_viewers = v.parse().unwrap(),
            "--peer-timeout" => c.peer_timeout = Duration::from_secs(v.parse().unwrap()),
            "--rtc-bind" => c.rtc_bind.push(v.parse().unwrap()),
            "--mdns" => c.mdns = v == "on",
            _ => panic!("unknown {a}"),
        }
    }
    c
}
