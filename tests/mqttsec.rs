//! The MQTT connection's transports and the broker ACL of docs/SECURITY.md, against a real
//! Mosquitto: TLS with a private CA (`mqtts://` and `--mqtt-ca`), a listener that requires client
//! certificates (`--mqtt-cert`, `--mqtt-key`), MQTT over WebSockets (`ws://`, `wss://`), and a
//! password file with an ACL that keeps viewers out of each other's sessions. The CA and the
//! certificates are made by each test with the openssl command. Everything listens on 127.0.0.1.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, PubAckReason, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions};
use spyglass::mqtt::MqttTransport;
use spyglass::mqtt::{BrokerScheme, MqttTls};
use spyglass::view::{ViewOptions, ViewReport};
use support::*;
use tokio::sync::mpsc;

// ---------------------------------------------------------------------------------------------
// A private CA, a server certificate for 127.0.0.1 and a client certificate.

struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A key and a certificate for `cn` with extensions `ext`, signed by the CA in `dir`.
fn leaf(dir: &Path, name: &str, cn: &str, ext: &str) -> (PathBuf, PathBuf) {
    let (key, csr, cert, extfile) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.ext"),
    );
    std::fs::write(dir.join(&extfile), ext).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &key,
            "-out",
            &csr,
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &extfile,
            "-out",
            &cert,
        ],
    );
    (dir.join(cert), dir.join(key))
}

fn make_pki(dir: &Path) -> Pki {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=spyglass test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    let (server_cert, server_key) = leaf(
        dir,
        "server",
        "localhost",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    );
    let (client_cert, client_key) = leaf(
        dir,
        "device",
        "test-device",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=clientAuth\n",
    );
    // Mosquitto started as root reads its key after switching to the user mosquitto; openssl
    // writes keys readable by their owner only.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&server_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    Pki {
        ca: dir.join("ca.pem"),
        server_cert,
        server_key,
        client_cert,
        client_key,
    }
}

/// Mosquitto's TLS settings for a listener.
fn tls_lines(pki: &Pki) -> String {
    format!(
        "cafile {}\ncertfile {}\nkeyfile {}\n",
        pki.ca.display(),
        pki.server_cert.display(),
        pki.server_key.display()
    )
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn wait_port(port: u16) {
    for _ in 0..500 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listens on 127.0.0.1:{port}");
}

/// Every listening TCP socket on `port` is bound to 127.0.0.1 (none to a wildcard address).
fn listens_on_loopback_only(port: u16) -> bool {
    let mut found = false;
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (cols.get(1), cols.get(3)) else {
                continue;
            };
            let Some((addr, p)) = local.rsplit_once(':') else {
                continue;
            };
            if *state == "0A" && u16::from_str_radix(p, 16) == Ok(port) {
                if addr != "0100007F" {
                    return false;
                }
                found = true;
            }
        }
    }
    found
}

/// A viewer's options for a broker reached at `port` with `scheme`.
fn via(
    mut opts: ViewOptions,
    port: u16,
    scheme: BrokerScheme,
    path: &str,
    tls: MqttTls,
) -> ViewOptions {
    opts.port = port;
    opts.transport = MqttTransport {
        scheme,
        path: path.into(),
        tls,
    };
    opts
}

fn ca_only(pki: &Pki) -> MqttTls {
    MqttTls {
        ca: Some(pki.ca.clone()),
        ..MqttTls::default()
    }
}

fn assert_streamed(report: &ViewReport, frames: u64) {
    assert!(report.error.is_none(), "{report:?}");
    assert_eq!(report.frames, frames, "{report:?}");
    assert!(report.stamped_frames > 0, "{report:?}");
}

// ---------------------------------------------------------------------------------------------
// Transports

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_with_a_private_ca_carries_daemon_and_viewer() {
    let tls_port = free_port();
    let mut pki = None;
    let broker = Broker::start_with(|dir, port| {
        let p = make_pki(dir);
        let conf = format!(
            "persistence false\nallow_anonymous true\nlistener {port} 127.0.0.1\n\
             listener {tls_port} 127.0.0.1\n{}",
            tls_lines(&p)
        );
        pki = Some(p);
        conf
    });
    let pki = pki.unwrap();
    wait_port(tls_port);
    let url = format!("mqtts://127.0.0.1:{tls_port}");
    let daemon = Daemon::start(&broker, &["--mqtt", &url, "--mqtt-ca", s(&pki.ca)]);
    // The status is published over TLS; the test reads it through the same broker.
    wait_online(&broker, &daemon).await;
    assert!(daemon.log().contains(&url), "{}", daemon.log());

    let opts = via(
        view_options(&broker, &daemon, 30),
        tls_port,
        BrokerScheme::Mqtts,
        "",
        ca_only(&pki),
    );
    let report = spyglass::view::run(opts).await.unwrap();
    assert_streamed(&report, 30);

    // The system's roots do not know the test CA: without --mqtt-ca the connection is refused.
    let mut opts = via(
        view_options(&broker, &daemon, 30),
        tls_port,
        BrokerScheme::Mqtts,
        "",
        MqttTls::default(),
    );
    opts.timeout = Duration::from_secs(4);
    let err = spyglass::view::run(opts).await.unwrap_err().to_string();
    eprintln!("without the CA: {err}");
    assert!(
        err.contains("could not connect") || err.contains("root"),
        "{err}"
    );

    // Plain MQTT to the TLS port is not TLS: the scheme decides, not the port.
    let mut opts = view_options(&broker, &daemon, 30);
    opts.port = tls_port;
    opts.timeout = Duration::from_secs(4);
    assert!(spyglass::view::run(opts).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_requires_client_certificates_admits_only_holders() {
    let mtls_port = free_port();
    let mut pki = None;
    let broker = Broker::start_with(|dir, port| {
        let p = make_pki(dir);
        let conf = format!(
            "persistence false\nallow_anonymous true\nlistener {port} 127.0.0.1\n\
             listener {mtls_port} 127.0.0.1\n{}require_certificate true\n",
            tls_lines(&p)
        );
        pki = Some(p);
        conf
    });
    let pki = pki.unwrap();
    wait_port(mtls_port);
    let daemon = Daemon::start(
        &broker,
        &[
            "--mqtt",
            &format!("mqtts://127.0.0.1:{mtls_port}"),
            "--mqtt-ca",
            s(&pki.ca),
            "--mqtt-cert",
            s(&pki.client_cert),
            "--mqtt-key",
            s(&pki.client_key),
        ],
    );
    wait_online(&broker, &daemon).await;
    let log = daemon.log();
    assert!(!log.contains("PRIVATE KEY"), "the key must not be logged");

    let with_cert = MqttTls {
        ca: Some(pki.ca.clone()),
        cert: Some(pki.client_cert.clone()),
        key: Some(pki.client_key.clone()),
    };
    let opts = via(
        view_options(&broker, &daemon, 30),
        mtls_port,
        BrokerScheme::Mqtts,
        "",
        with_cert,
    );
    assert_streamed(&spyglass::view::run(opts).await.unwrap(), 30);

    // Without a certificate the broker ends the handshake.
    let mut opts = via(
        view_options(&broker, &daemon, 30),
        mtls_port,
        BrokerScheme::Mqtts,
        "",
        ca_only(&pki),
    );
    opts.timeout = Duration::from_secs(4);
    let err = spyglass::view::run(opts).await.unwrap_err().to_string();
    eprintln!("without a client certificate: {err}");
    assert!(err.contains("could not connect"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_websockets_plain_and_tls() {
    let (ws_port, wss_port) = (free_port(), free_port());
    let mut pki = None;
    let broker = Broker::start_with(|dir, port| {
        let p = make_pki(dir);
        // `socket_domain ipv4`: without it Mosquitto 2.0's websockets listeners ignore the
        // address and listen on every interface.
        let conf = format!(
            "persistence false\nallow_anonymous true\nlistener {port} 127.0.0.1\n\
             listener {ws_port} 127.0.0.1\nsocket_domain ipv4\nprotocol websockets\n\
             listener {wss_port} 127.0.0.1\nsocket_domain ipv4\nprotocol websockets\n{}",
            tls_lines(&p)
        );
        pki = Some(p);
        conf
    });
    let pki = pki.unwrap();
    wait_port(ws_port);
    wait_port(wss_port);
    assert!(
        listens_on_loopback_only(ws_port),
        "ws listener not on loopback only"
    );
    assert!(
        listens_on_loopback_only(wss_port),
        "wss listener not on loopback only"
    );

    // The daemon on ws:// with the default path (/mqtt) ...
    let daemon = Daemon::start(&broker, &["--mqtt", &format!("ws://127.0.0.1:{ws_port}")]);
    wait_online(&broker, &daemon).await;
    assert!(daemon.log().contains("/mqtt"), "{}", daemon.log());
    // ... a viewer on wss:// with a path of its own (Mosquitto serves MQTT on any path).
    let opts = via(
        view_options(&broker, &daemon, 30),
        wss_port,
        BrokerScheme::Wss,
        "/",
        ca_only(&pki),
    );
    assert_streamed(&spyglass::view::run(opts).await.unwrap(), 30);
    // And one on ws:// too.
    let opts = via(
        view_options(&broker, &daemon, 30),
        ws_port,
        BrokerScheme::Ws,
        "/mqtt",
        MqttTls::default(),
    );
    assert_streamed(&spyglass::view::run(opts).await.unwrap(), 30);
}

// ---------------------------------------------------------------------------------------------
// Session isolation with the ACL of docs/SECURITY.md

/// A raw MQTT 5 client for the ACL test, which sees every packet (acks included).
struct RawClient {
    client: AsyncClient,
    packets: mpsc::UnboundedReceiver<Packet>,
    /// Every message received, as (topic, payload), whoever consumed the packet.
    seen: Vec<(String, String)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connect, or return the broker's refusal.
async fn raw_connect(
    port: u16,
    client_id: &str,
    login: Option<(&str, &str)>,
) -> Result<RawClient, String> {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_max_packet_size(Some(1024 * 1024));
    if let Some((user, password)) = login {
        options.set_credentials(user, password);
    }
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => break,
            Ok(_) => {}
            Err(ConnectionError::ConnectionRefused(code)) => return Err(format!("{code:?}")),
            Err(e) => return Err(e.to_string()),
        }
    }
    let (tx, packets) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(packet) = event {
                let _ = tx.send(packet);
            }
        }
    });
    Ok(RawClient {
        client,
        packets,
        seen: Vec::new(),
        task,
    })
}

impl RawClient {
    async fn subscribe(&mut self, filter: &str) -> SubscribeReasonCode {
        self.client
            .subscribe_many([Filter {
                nolocal: true,
                ..Filter::new(filter, QoS::AtLeastOnce)
            }])
            .await
            .unwrap();
        loop {
            match self.next().await {
                Packet::SubAck(ack) => return ack.return_codes[0],
                _ => continue,
            }
        }
    }

    /// Publish at QoS 1 and return the broker's PUBACK reason.
    async fn publish(&mut self, topic: &str, payload: &str) -> PubAckReason {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
            .await
            .unwrap();
        loop {
            match self.next().await {
                Packet::PubAck(ack) => return ack.reason,
                _ => continue,
            }
        }
    }

    async fn next(&mut self) -> Packet {
        let packet = tokio::time::timeout(Duration::from_secs(20), self.packets.recv())
            .await
            .expect("no packet from the broker")
            .expect("connection ended");
        self.record(&packet);
        packet
    }

    fn record(&mut self, packet: &Packet) {
        if let Packet::Publish(p) = packet {
            self.seen.push((
                String::from_utf8_lossy(&p.topic).into_owned(),
                String::from_utf8_lossy(&p.payload).into_owned(),
            ));
        }
    }

    /// Every message received so far, as (topic, payload).
    fn drain(&mut self) -> Vec<(String, String)> {
        while let Ok(packet) = self.packets.try_recv() {
            self.record(&packet);
        }
        self.seen.clone()
    }
}

/// The ACL of docs/SECURITY.md for device `uid`, whose broker user is `device_user`.
fn acl_for(uid: &str, device_user: &str) -> String {
    let doc = include_str!("../docs/SECURITY.md");
    // The ACL is the first ```acl block of the document, written for uid garage/cam1 and the
    // user cam-garage-cam1.
    let block = doc
        .split("```acl\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/SECURITY.md has an ```acl block");
    block
        .replace("garage/cam1", uid)
        .replace("cam-garage-cam1", device_user)
}

/// A Mosquitto with `allow_anonymous false`, a password file (the device's user with password
/// `device-secret`, `viewer` with `viewer-secret`) and the ACL of docs/SECURITY.md for `uid`. The
/// device's password is also in the broker's directory, as `device-password`.
fn broker_with_acl(uid: &str, device_user: &str) -> Broker {
    broker_with_acl_and(uid, device_user, |_| String::new())
}

/// [`broker_with_acl`] with more listeners: `listeners` gets the broker's directory and returns
/// config lines appended after the plain listener.
fn broker_with_acl_and(
    uid: &str,
    device_user: &str,
    listeners: impl FnOnce(&Path) -> String,
) -> Broker {
    Broker::start_with(|dir, port| {
        let passwd = dir.join("passwd");
        for (i, (user, password)) in [(device_user, "device-secret"), ("viewer", "viewer-secret")]
            .into_iter()
            .enumerate()
        {
            let mut cmd = Command::new("mosquitto_passwd");
            if i == 0 {
                cmd.arg("-c");
            }
            let ok = cmd
                .arg("-b")
                .arg(&passwd)
                .args([user, password])
                .status()
                .expect("mosquitto_passwd")
                .success();
            assert!(ok, "mosquitto_passwd failed");
        }
        std::fs::write(dir.join("acl"), acl_for(uid, device_user)).unwrap();
        std::fs::write(dir.join("device-password"), "device-secret\n").unwrap();
        format!(
            "persistence false\nallow_anonymous false\npassword_file {}\nacl_file {}\n\
             listener {port} 127.0.0.1\n{}",
            passwd.display(),
            dir.join("acl").display(),
            listeners(dir)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acl_keeps_viewers_out_of_each_others_sessions_and_strangers_out() {
    let n = rand::random::<u32>();
    let uid = format!("acl/cam-{n}");
    let device_user = format!("cam-{n}");
    let broker = broker_with_acl(&uid, &device_user);
    let pw_file = broker.dir().join("device-password");
    // With a TURN REST secret, so that viewers who ask get TURN credentials of their own, which
    // the ACL must keep from the others.
    let secret_file = broker.dir().join("turn-secret");
    std::fs::write(&secret_file, format!("turn-secret-{n}\n")).unwrap();
    let daemon = Daemon::start(
        &broker,
        &[
            "--id",
            &uid,
            "--mqtt-username",
            &device_user,
            "--mqtt-password-file",
            s(&pw_file),
            "--turn-secret-file",
            s(&secret_file),
            "--viewer-turn",
            "turn:127.0.0.1:9?transport=tcp",
        ],
    );

    // Strangers: no credentials, or a wrong password, are refused at CONNECT.
    let anon = raw_connect(broker.port, &format!("anon-{n}"), None).await;
    assert!(anon.is_err(), "an anonymous client was let in");
    eprintln!("anonymous: {}", anon.err().unwrap());
    let wrong = raw_connect(
        broker.port,
        &format!("guess-{n}"),
        Some(("viewer", "guess")),
    )
    .await;
    assert!(wrong.is_err(), "a wrong password was let in");

    // An observer with the device's rights sees everything that reaches the device's topics.
    let mut observer = raw_connect(
        broker.port,
        &format!("observer-{n}"),
        Some((&device_user, "device-secret")),
    )
    .await
    .unwrap();
    assert!(matches!(
        observer.subscribe(&format!("{uid}/#")).await,
        SubscribeReasonCode::Success(_)
    ));
    let status_topic = format!("{uid}/status");
    loop {
        if let Packet::Publish(p) = observer.next().await
            && p.topic == status_topic.as_bytes()
            && p.payload.windows(13).any(|w| w == b"\"online\":true")
        {
            break;
        }
    }

    // The first viewer streams through the ACL: its client id is its CID.
    let victim = format!("viewer-{n}");
    let mut opts = view_options(&broker, &daemon, 150);
    opts.id = uid.clone();
    opts.cid = victim.clone();
    opts.username = Some("viewer".into());
    opts.password = Some("viewer-secret".into());
    opts.timeout = Duration::from_secs(60);
    let watching = tokio::spawn(spyglass::view::run(opts));
    let answer_topic = format!("{uid}/answer/{victim}");
    loop {
        if let Packet::Publish(p) = observer.next().await
            && p.topic == answer_topic.as_bytes()
        {
            break;
        }
    }

    // A second viewer, with the same viewer credentials, tries to take the session over.
    let intruder = format!("intruder-{n}");
    let mut other = raw_connect(broker.port, &intruder, Some(("viewer", "viewer-secret")))
        .await
        .unwrap();
    let sub = other.subscribe(&format!("{uid}/+/{victim}")).await;
    eprintln!("intruder subscribing to the victim's topics: {sub:?}");
    let marker = format!("injected-{n}");
    let offer = format!(
        r#"{{"type":"offer","sdp":"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns={marker}\r\nt=0 0\r\n"}}"#
    );
    let candidate = format!(
        r#"{{"candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host","sdpMid":"0","usernameFragment":"{marker}"}}"#
    );
    for (kind, payload) in [
        ("offer", &offer),
        ("ice", &candidate),
        ("ice-servers", &"{}".to_string()),
        ("offer", &offer),
    ] {
        let reason = other
            .publish(&format!("{uid}/{kind}/{victim}"), payload)
            .await;
        assert_eq!(
            reason,
            PubAckReason::NotAuthorized,
            "{kind} into the victim's session"
        );
    }
    // It may not speak as the device either.
    let reason = other.publish(&status_topic, r#"{"online":false}"#).await;
    assert_eq!(reason, PubAckReason::NotAuthorized, "status");
    // Its own session is allowed (so the refusals above are the ACL's, not a blanket denial):
    // the device answers it (here with an error, the offer being no real one).
    assert!(matches!(
        other.subscribe(&format!("{uid}/+/{intruder}")).await,
        SubscribeReasonCode::Success(_)
    ));
    let reason = other
        .publish(&format!("{uid}/offer/{intruder}"), &offer)
        .await;
    assert_eq!(reason, PubAckReason::Success);
    let error_topic = format!("{uid}/error/{intruder}");
    loop {
        if let Packet::Publish(p) = other.next().await {
            assert_ne!(
                String::from_utf8_lossy(&p.topic),
                format!("{uid}/answer/{victim}"),
                "the intruder read the victim's answer"
            );
            if p.topic == error_topic.as_bytes() {
                break;
            }
        }
    }

    // Reading: Mosquitto grants a subscription to another client id's replies but delivers
    // nothing on it; the client with that id gets them.
    let idle = format!("idle-{n}");
    let mut owner = raw_connect(broker.port, &idle, Some(("viewer", "viewer-secret")))
        .await
        .unwrap();
    assert!(matches!(
        owner.subscribe(&format!("{uid}/+/{idle}")).await,
        SubscribeReasonCode::Success(_)
    ));
    let sub = other.subscribe(&format!("{uid}/+/{idle}")).await;
    eprintln!("intruder subscribing to another client id's replies: {sub:?}");
    let reply_topic = format!("{uid}/answer/{idle}");
    let reason = observer
        .publish(&reply_topic, r#"{"type":"answer","sdp":"x"}"#)
        .await;
    assert_eq!(reason, PubAckReason::Success);
    loop {
        if let Packet::Publish(p) = owner.next().await
            && p.topic == reply_topic.as_bytes()
        {
            break;
        }
    }
    // The same for ICE servers: the owner asks on its own topic and gets TURN credentials made
    // for it; nobody else reads them.
    let servers_topic = format!("{uid}/ice-servers/{idle}");
    assert_eq!(
        owner.publish(&servers_topic, "{}").await,
        PubAckReason::Success
    );
    let granted = loop {
        if let Packet::Publish(p) = owner.next().await
            && p.topic == servers_topic.as_bytes()
        {
            break String::from_utf8_lossy(&p.payload).into_owned();
        }
    };
    assert!(
        granted.contains(&format!(":{idle}\"")) && granted.contains("credential"),
        "{granted}"
    );
    assert!(
        !granted.contains("turn-secret-"),
        "the secret itself went out: {granted}"
    );
    // A round trip behind it: anything the broker delivered to the intruder came before this ack.
    let reason = other
        .publish(&format!("{uid}/ice/{intruder}"), &candidate)
        .await;
    assert_eq!(reason, PubAckReason::Success);
    for (topic, _) in other.drain() {
        assert!(!topic.ends_with(&idle), "intruder received {topic}");
    }

    // The first viewer kept streaming to the end.
    let report = watching.await.unwrap().unwrap();
    assert_streamed(&report, 150);
    // Nothing injected reached the device's topics, and nothing of the victim's reached the
    // intruder.
    for (topic, payload) in observer.drain() {
        assert!(
            !(payload.contains(&marker) && topic.ends_with(&victim)),
            "injected message reached {topic}"
        );
    }
    for (topic, _) in other.drain() {
        assert!(!topic.ends_with(&victim), "intruder received {topic}");
    }
}

/// The device's MQTT client id as the daemon logged it last (`MQTT connected client_id=...`).
fn logged_client_id(log: &str) -> Option<String> {
    let plain: String = {
        let mut out = String::new();
        let mut chars = log.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    };
    plain
        .lines()
        .rev()
        .filter(|l| l.contains("MQTT connected"))
        .filter_map(|l| l.split("client_id=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .next()
}

/// Issue 12, item 5: a viewer with broker credentials connects with the device's client id —
/// first the one it could guess (`spyglass-{id}`, what spyglass used), then the real one (as if
/// it had learnt it) — under the ACL of docs/SECURITY.md. The device stays online (its retained
/// status says offline for no longer than one reconnect) and answers the next offer each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_that_takes_the_device_client_id_does_not_knock_it_off() {
    let n = rand::random::<u32>();
    let uid = format!("acl/cam-{n}");
    let device_user = format!("cam-{n}");
    let broker = broker_with_acl(&uid, &device_user);
    let pw_file = broker.dir().join("device-password");
    let daemon = Daemon::start(
        &broker,
        &[
            "--id",
            &uid,
            "--mqtt-username",
            &device_user,
            "--mqtt-password-file",
            s(&pw_file),
        ],
    );
    // An observer with the device's rights records every status, with its arrival time.
    let mut observer = raw_connect(
        broker.port,
        &format!("observer-{n}"),
        Some((&device_user, "device-secret")),
    )
    .await
    .unwrap();
    let status_topic = format!("{uid}/status");
    assert!(matches!(
        observer.subscribe(&status_topic).await,
        SubscribeReasonCode::Success(_)
    ));
    let (status_tx, mut statuses) = mpsc::unbounded_channel();
    let mut packets = std::mem::replace(&mut observer.packets, mpsc::unbounded_channel().1);
    let status_bytes = status_topic.clone().into_bytes();
    let recorder = tokio::spawn(async move {
        while let Some(packet) = packets.recv().await {
            if let Packet::Publish(p) = packet
                && p.topic == status_bytes
            {
                let online = p.payload.windows(13).any(|w| w == b"\"online\":true");
                let _ = status_tx.send((std::time::Instant::now(), online));
            }
        }
    });
    let first_online = loop {
        let (t, online) = tokio::time::timeout(Duration::from_secs(20), statuses.recv())
            .await
            .expect("the device comes online")
            .unwrap();
        if online {
            break t;
        }
    };
    let _ = first_online;
    let watch = |frames: u64| {
        let mut opts = view_options(&broker, &daemon, frames);
        opts.id = uid.clone();
        opts.username = Some("viewer".into());
        opts.password = Some("viewer-secret".into());
        opts.cid = format!("viewer-{}", rand::random::<u32>());
        spyglass::view::run(opts)
    };

    // 1. The client id a viewer could guess from the public device id.
    let guessed = format!("spyglass-{}", uid.replace('/', "-"));
    let intruder = raw_connect(broker.port, &guessed, Some(("viewer", "viewer-secret")))
        .await
        .expect("a viewer may connect with any client id");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut seen = Vec::new();
    while let Ok(status) = statuses.try_recv() {
        seen.push(status);
    }
    assert!(
        seen.iter().all(|(_, online)| *online),
        "the status went offline after a viewer connected as {guessed}"
    );
    let report = watch(20).await.unwrap();
    assert_streamed(&report, 20);
    eprintln!(
        "a viewer connected as {guessed:?}: the device stayed online and answered the next offer"
    );
    drop(intruder);

    // 2. The real client id, as if the viewer had learnt it (from the daemon's log here).
    let real = logged_client_id(&daemon.log()).expect("the daemon logs its client id");
    assert!(
        real.starts_with(&guessed) && real.len() == guessed.len() + 17,
        "{real}"
    );
    let took_over = std::time::Instant::now();
    let _intruder = raw_connect(broker.port, &real, Some(("viewer", "viewer-secret")))
        .await
        .unwrap();
    let mut offline_at = None;
    let back_online = loop {
        let (t, online) = tokio::time::timeout(Duration::from_secs(20), statuses.recv())
            .await
            .expect("the device's status after the takeover")
            .unwrap();
        match (online, offline_at) {
            (false, None) => offline_at = Some(t),
            (true, Some(_)) => break t,
            _ => {}
        }
    };
    let offline_ms = offline_at.map(|t| (back_online - t).as_millis());
    eprintln!(
        "a viewer connected as the device's real client id: the status said offline for {:?} ms; \
         online again {} ms after the takeover",
        offline_ms,
        (back_online - took_over).as_millis()
    );
    // One reconnect: no backoff, just the connection itself.
    assert!(offline_ms.is_some_and(|ms| ms < 2000), "{offline_ms:?}");
    let renewed = logged_client_id(&daemon.log()).unwrap();
    assert_ne!(renewed, real, "the device reconnects under a new client id");
    let report = watch(20).await.unwrap();
    assert_streamed(&report, 20);
    recorder.abort();
}

/// The first fenced block of `lang` after `heading` in `doc`.
fn fenced_after<'d>(doc: &'d str, heading: &str, lang: &str) -> &'d str {
    doc.split(heading)
        .nth(1)
        .and_then(|rest| rest.split(&format!("```{lang}\n")).nth(1))
        .and_then(|rest| rest.split("```").next())
        .unwrap_or_else(|| panic!("no ```{lang} block after {heading:?}"))
}

/// Issue 12, item 11: docs/SECURITY.md's device example works the way the packaged service runs
/// it: as a transient unprivileged user (`DynamicUser=yes`) that cannot read the root-only
/// password file, with the password handed over as `LoadCredential=` lays it out (a directory
/// of the service's own, the file readable by its user only). Taken from the document: the
/// TOML and the drop-in's `LoadCredential=` line. Here the user is `nobody` (65534) and the
/// credential directory a temporary one; the broker has the ACL and a TLS listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_security_md_device_example_runs_as_a_transient_user_with_its_credential() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    const NOBODY: u32 = 65534;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (to hand a file to another user, as systemd does)");
        return;
    }
    let n = rand::random::<u32>();
    let uid = format!("garage/cam-{n}");
    let device_user = format!("cam-garage-{n}");
    let tls_port = free_port();
    let mut pki = None;
    let broker = broker_with_acl_and(&uid, &device_user, |dir| {
        let p = make_pki(dir);
        let lines = format!("listener {tls_port} 127.0.0.1\n{}", tls_lines(&p));
        pki = Some(p);
        lines
    });
    let pki = pki.unwrap();
    wait_port(tls_port);

    let doc = include_str!("../docs/SECURITY.md");
    let toml = fenced_after(doc, "### The device\n", "toml");
    let dropin = fenced_after(doc, "### The device\n", "ini");
    let (name, source) = dropin
        .lines()
        .find_map(|l| l.strip_prefix("LoadCredential="))
        .and_then(|v| v.split_once(':'))
        .expect("the drop-in has LoadCredential=NAME:PATH");
    assert!(
        toml.contains(&format!("\"/run/credentials/spyglass.service/{name}\"")),
        "the config reads the credential {name}:\n{toml}"
    );

    // /etc/spyglass as packaged: the password root-only, the CA public.
    let root = temp_dir("dynamic-user");
    let mode = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    mode(&root, 0o755);
    let etc = root.join("etc-spyglass");
    std::fs::create_dir_all(&etc).unwrap();
    mode(&etc, 0o755);
    let source_file = etc.join(Path::new(source).file_name().unwrap());
    std::fs::write(&source_file, "device-secret\n").unwrap();
    mode(&source_file, 0o600);
    std::fs::copy(&pki.ca, etc.join("mqtt-ca.pem")).unwrap();
    mode(&etc.join("mqtt-ca.pem"), 0o644);
    // What LoadCredential= makes of it: a directory and a copy owned by the service's user.
    let creds = root.join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::copy(&source_file, creds.join(name)).unwrap();
    std::os::unix::fs::chown(creds.join(name), Some(NOBODY), Some(NOBODY)).unwrap();
    mode(&creds.join(name), 0o400);
    std::os::unix::fs::chown(&creds, Some(NOBODY), Some(NOBODY)).unwrap();
    mode(&creds, 0o500);
    // The binary where the unprivileged user can run it.
    let bin = root.join("spyglass");
    std::fs::copy(spyglass_bin(), &bin).unwrap();
    mode(&bin, 0o755);

    let config_for = |password_path: &str| {
        toml.replace(
            "mqtts://broker.lan:8883",
            &format!("mqtts://127.0.0.1:{tls_port}"),
        )
        .replace(
            &format!("/run/credentials/spyglass.service/{name}"),
            password_path,
        )
        .replace("/etc/spyglass/", &format!("{}/", etc.display()))
        .replace("garage/cam1", &uid)
        .replace("cam-garage-cam1", &device_user)
    };
    let run_as_nobody = |config: &str, tag: &str| {
        let file = root.join(format!("{tag}.toml"));
        std::fs::write(&file, config).unwrap();
        mode(&file, 0o644);
        let log = root.join(format!("{tag}.log"));
        let mut command = std::process::Command::new(&bin);
        command
            .arg("--config")
            .arg(&file)
            .args([
                "--video",
                "test",
                "--size",
                "320x240",
                "--rtc-bind",
                "127.0.0.1",
                "--rtc-allow-loopback",
                "on",
            ])
            .args(["--mdns", "off", "--http", "off", "--audio", "none"])
            .env("RUST_LOG", "spyglass=debug,info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        // SAFETY: setgroups/setgid/setuid are async-signal-safe; nothing else runs before exec.
        unsafe {
            command.pre_exec(|| {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(NOBODY) != 0
                    || libc::setuid(NOBODY) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        (command.spawn().expect("starting spyglass as nobody"), log)
    };

    // Pointed at the root-only file itself, the transient user cannot start.
    let (mut direct, log) = run_as_nobody(&config_for(source_file.to_str().unwrap()), "direct");
    let status = tokio::task::block_in_place(|| direct.wait()).unwrap();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    eprintln!(
        "as nobody, reading {}: {status:?}: {}",
        source_file.display(),
        text.trim()
    );
    assert!(
        !status.success() && text.contains("Permission denied"),
        "{text}"
    );

    // With the credential, as the document says, it comes online and serves a viewer.
    let credential = creds.join(name);
    let (mut child, log) = run_as_nobody(&config_for(credential.to_str().unwrap()), "credential");
    let status_topic = format!("{uid}/status");
    let mut observer = raw_connect(
        broker.port,
        &format!("observer-{n}"),
        Some((&device_user, "device-secret")),
    )
    .await
    .unwrap();
    observer.subscribe(&status_topic).await;
    let online = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Packet::Publish(p) = observer.next().await
                && p.payload.windows(13).any(|w| w == b"\"online\":true")
            {
                return;
            }
        }
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    if online.is_err() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the device did not come online:\n{text}");
    }
    let mut opts = ViewOptions {
        id: uid.clone(),
        username: Some("viewer".into()),
        password: Some("viewer-secret".into()),
        cid: format!("viewer-{n}"),
        frames: 20,
        timeout: Duration::from_secs(30),
        ..view_options_without_daemon(&broker)
    };
    opts = via(opts, tls_port, BrokerScheme::Mqtts, "", ca_only(&pki));
    let report = spyglass::view::run(opts).await;
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let report = report.unwrap_or_else(|e| panic!("{e}\n{text}"));
    eprintln!(
        "the SECURITY.md device example as uid {NOBODY} with its credential: online, a viewer got \
         {} frames over mqtts://",
        report.frames
    );
    assert_streamed(&report, 20);
    assert!(!text.contains("readable by every user"), "{text}");
    let _ = std::fs::remove_dir_all(&root);
}

fn view_options_without_daemon(broker: &Broker) -> ViewOptions {
    ViewOptions {
        host: "127.0.0.1".into(),
        port: broker.port,
        username: None,
        password: None,
        transport: Default::default(),
        id: String::new(),
        cid: String::new(),
        frames: 30,
        timeout: Duration::from_secs(30),
        bind: vec!["127.0.0.1".parse().unwrap()],
        mdns: false,
        own_servers: Default::default(),
        stop: None,
        data_channel: None,
    }
}
