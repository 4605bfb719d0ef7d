//! Shared harness for the integration tests: a private Mosquitto broker on a free loopback port,
//! a real spyglass daemon process, an MQTT client for the test itself, and the in-process
//! headless viewer. Everything binds to 127.0.0.1; processes are ended by PID on drop.
//! `netlab` builds namespace networks (NAT, TURN, shaped links) for the field tests.

#![allow(dead_code)]

pub mod board;
pub mod netlab;

use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

/// A new directory for one test, kept until its owner removes it (the broker and daemon
/// harnesses on drop, the tests at their end).
pub fn temp_dir(tag: &str) -> PathBuf {
    tempfile::Builder::new()
        .prefix(&format!("spyglass-test-{tag}-"))
        .tempdir()
        .unwrap()
        .keep()
}

fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A private Mosquitto on 127.0.0.1.
pub struct Broker {
    pub port: u16,
    child: Child,
    dir: PathBuf,
}

impl Broker {
    pub fn start() -> Broker {
        let dir = temp_dir("broker");
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("persistence false\nallow_anonymous true\nlistener {port} 127.0.0.1\nprotocol mqtt\n"),
        )
        .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting mosquitto (apt-get install mosquitto)");
        assert!(
            wait_for_port(port, Duration::from_secs(10)),
            "mosquitto did not listen on {port}"
        );
        Broker { port, child, dir }
    }

    /// A Mosquitto with a config of the test's own: `config` gets the broker's private directory
    /// (for certificates, password and ACL files) and the plain MQTT port, and returns the whole
    /// config text, which must open `listener {port} 127.0.0.1` (the port waited for here).
    pub fn start_with(config: impl FnOnce(&std::path::Path, u16) -> String) -> Broker {
        let dir = temp_dir("broker");
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(&conf, config(&dir, port)).unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("mosquitto.log")).unwrap())
            .spawn()
            .expect("starting mosquitto (apt-get install mosquitto)");
        let mut broker = Broker { port, child, dir };
        if !wait_for_port(port, Duration::from_secs(10)) {
            broker.stop();
            panic!(
                "mosquitto did not listen on {port}: {}",
                std::fs::read_to_string(broker.dir.join("mosquitto.log")).unwrap_or_default()
            );
        }
        broker
    }

    /// The broker's private directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Stop the broker (it forgets retained messages: persistence is off).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("restarting mosquitto");
        assert!(
            wait_for_port(self.port, Duration::from_secs(10)),
            "mosquitto did not come back"
        );
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn spyglass_bin() -> &'static str {
    env!("CARGO_BIN_EXE_spyglass")
}

/// A spyglass daemon with the test pattern, on loopback, mDNS off.
pub struct Daemon {
    pub id: String,
    child: Option<Child>,
    log: PathBuf,
    dir: PathBuf,
}

impl Daemon {
    /// Start with the defaults for tests plus `extra` arguments (flag/value pairs).
    pub fn start(broker: &Broker, extra: &[&str]) -> Daemon {
        Daemon::start_with_env(broker, extra, &[])
    }

    /// Like [`Daemon::start`], with extra environment variables for the process.
    pub fn start_with_env(broker: &Broker, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let id = format!("test/cam-{}", rand::random::<u32>());
        let dir = temp_dir("daemon");
        let log = dir.join("spyglass.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let mut args: Vec<String> = vec![
            "--id".into(),
            id.clone(),
            "--mqtt".into(),
            broker.url(),
            "--video".into(),
            "test".into(),
            "--size".into(),
            "320x240".into(),
            "--bitrate".into(),
            "600".into(),
            "--rtc-bind".into(),
            "127.0.0.1".into(),
            "--mdns".into(),
            "off".into(),
            // Everything here runs on loopback: the viewers' candidates name 127.0.0.1.
            "--rtc-allow-loopback".into(),
            "on".into(),
            // No viewer page unless a test asks: the default would bind 0.0.0.0:8080.
            "--http".into(),
            "off".into(),
            // Tests do not depend on the machine's sound card; audio tests pick a source.
            "--audio".into(),
            "none".into(),
        ];
        // Options given in `extra` replace the defaults above.
        for pair in extra.chunks(2) {
            if let Some(i) = args.iter().position(|a| a == pair[0]) {
                args.drain(i..i + 2);
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new(spyglass_bin())
            .args(&args)
            .env("RUST_LOG", "spyglass=debug,info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("starting spyglass");
        Daemon {
            id,
            child: Some(child),
            log,
            dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no clean stop, so the broker publishes the last will.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- spyglass log ---\n{}", self.log());
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The test's own MQTT 5 client.
pub struct TestClient {
    pub client: AsyncClient,
    pub messages: mpsc::UnboundedReceiver<(String, Vec<u8>, bool)>,
    task: tokio::task::JoinHandle<()>,
}

impl TestClient {
    pub async fn connect(broker: &Broker, subscriptions: &[String]) -> TestClient {
        let mut options = MqttOptions::new(
            format!("test-{}", rand::random::<u32>()),
            "127.0.0.1",
            broker.port,
        );
        options.set_max_packet_size(Some(4 * 1024 * 1024));
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, messages) = mpsc::unbounded_channel();
        let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
        let filters: Vec<Filter> = subscriptions
            .iter()
            .map(|s| Filter {
                nolocal: true,
                ..Filter::new(s.clone(), QoS::AtLeastOnce)
            })
            .collect();
        let sub_client = client.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if !filters.is_empty() {
                            sub_client.subscribe_many(filters.clone()).await.unwrap();
                        } else {
                            let _ = ready_tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let topic = String::from_utf8_lossy(&p.topic).into_owned();
                        let _ = tx.send((topic, p.payload.to_vec(), p.retain));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx.recv())
            .await
            .expect("test MQTT client did not connect");
        TestClient {
            client,
            messages,
            task,
        }
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic.to_string(), QoS::AtLeastOnce, false, payload.into())
            .await
            .unwrap();
    }

    /// The next message on `topic` whose JSON satisfies `pred`, within `timeout`.
    pub async fn wait_json(
        &mut self,
        topic: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.messages.recv()).await;
            match next {
                Ok(Some((t, payload, _))) if t == topic => {
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&payload)
                        && pred(&v)
                    {
                        return v;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => panic!("no matching message on {topic} within {timeout:?}"),
            }
        }
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Wait until the device's retained status says online.
pub async fn wait_online(broker: &Broker, daemon: &Daemon) -> serde_json::Value {
    let topic = format!("{}/status", daemon.id);
    let mut client = TestClient::connect(broker, &[topic.clone()]).await;
    client
        .wait_json(&topic, Duration::from_secs(20), |v| v["online"] == true)
        .await
}

pub fn view_options(broker: &Broker, daemon: &Daemon, frames: u64) -> spyglass::view::ViewOptions {
    spyglass::view::ViewOptions {
        host: "127.0.0.1".into(),
        port: broker.port,
        username: None,
        password: None,
        transport: Default::default(),
        id: daemon.id.clone(),
        cid: format!("viewer-{}", rand::random::<u32>()),
        frames,
        timeout: Duration::from_secs(30),
        bind: vec!["127.0.0.1".parse().unwrap()],
        mdns: false,
        own_servers: Default::default(),
        stop: None,
        data_channel: None,
    }
}

/// Read a child's whole stdout (for CLI tests).
pub fn read_all(mut r: impl Read) -> String {
    let mut s = String::new();
    let _ = r.read_to_string(&mut s);
    s
}

/// An offer SDP from a real peer connection that receives `kinds`, which is then closed. With
/// `with_candidates` false its candidates are removed, so ICE can never complete.
pub async fn recvonly_offer(
    kinds: &[rtc::rtp_transceiver::rtp_sender::RtpCodecKind],
    with_candidates: bool,
) -> String {
    use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
    use webrtc::peer_connection::PeerConnectionEventHandler;

    struct Quiet;
    #[async_trait::async_trait]
    impl PeerConnectionEventHandler for Quiet {}

    let factory = spyglass::peer::PeerFactory::new(spyglass::peer::PeerSettings {
        bind: vec!["127.0.0.1".parse().unwrap()],
        mdns: false,
        ..Default::default()
    })
    .unwrap();
    let pc = factory.build(std::sync::Arc::new(Quiet)).await.unwrap();
    for kind in kinds {
        pc.add_transceiver_from_kind(
            *kind,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    }
    let offer = pc.create_offer(None).await.unwrap();
    pc.set_local_description(offer).await.unwrap();
    let sdp = pc.local_description().await.unwrap().sdp;
    pc.close().await.unwrap();
    if with_candidates {
        sdp
    } else {
        sdp.split("\r\n")
            .filter(|l| !l.starts_with("a=candidate"))
            .collect::<Vec<_>>()
            .join("\r\n")
    }
}

/// A process's resident memory, open descriptors and threads, from /proc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStats {
    pub rss_kb: u64,
    pub fds: usize,
    pub threads: usize,
}

pub fn proc_stats(pid: u32) -> ProcStats {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    ProcStats {
        rss_kb: field("VmRSS:"),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count(),
        threads: field("Threads:") as usize,
    }
}

/// Publish an offer on `cid` and wait for the device's answer (panics on an error reply).
pub async fn offer_and_wait_answer(
    broker: &Broker,
    daemon: &Daemon,
    cid: &str,
    sdp: &str,
) -> String {
    let answer_topic = format!("{}/answer/{cid}", daemon.id);
    let error_topic = format!("{}/error/{cid}", daemon.id);
    let mut client =
        TestClient::connect(broker, &[answer_topic.clone(), error_topic.clone()]).await;
    let msg = serde_json::json!({"type": "offer", "sdp": sdp}).to_string();
    client
        .publish(&format!("{}/offer/{cid}", daemon.id), msg)
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match tokio::time::timeout_at(deadline, client.messages.recv()).await {
            Ok(Some((topic, payload, _))) if topic == answer_topic => {
                let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
                return v["sdp"].as_str().unwrap().to_string();
            }
            Ok(Some((topic, payload, _))) if topic == error_topic => {
                panic!("offer refused: {}", String::from_utf8_lossy(&payload))
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => panic!("no answer on {answer_topic}"),
        }
    }
}
