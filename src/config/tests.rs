use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::CommandFactory;
use clap::error::ErrorKind;

use super::args::Cli;
use super::file::parse as parse_config_text;
use super::resolve::{Env, load_with};
use super::*;
use crate::mqtt::BrokerUrl;
use crate::signaling::protocol::validate_cid;
use crate::video::VideoSpec;

/// A scratch directory, removed on drop: its path, and the directory.
struct Scratch(
    PathBuf,
    #[expect(dead_code, reason = "held for its drop, which removes the directory")]
    tempfile::TempDir,
);

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("spyglass-config-")
            .tempdir()
            .unwrap();
        Scratch(dir.path().to_path_buf(), dir)
    }

    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

fn env() -> Env {
    Env {
        mqtt_password: None,
        hostname: "testhost".into(),
    }
}

fn daemon_with(args: &[&str], env: &Env) -> Result<DaemonConfig, ConfigError> {
    let argv = std::iter::once("spyglass").chain(args.iter().copied());
    match load_with(argv, env)? {
        Command::Daemon(config) => Ok(config),
        other => panic!("expected daemon, got {other:?}"),
    }
}

fn daemon(args: &[&str]) -> Result<DaemonConfig, ConfigError> {
    daemon_with(args, &env())
}

fn view_with(args: &[&str], env: &Env) -> Result<ViewConfig, ConfigError> {
    let argv = ["spyglass", "view"].into_iter().chain(args.iter().copied());
    match load_with(argv, env)? {
        Command::View(config) => Ok(config),
        other => panic!("expected view, got {other:?}"),
    }
}

fn usage_error(result: Result<impl fmt::Debug, ConfigError>) -> clap::Error {
    match result {
        Err(ConfigError::Usage(e)) => e,
        other => panic!("expected a clap error, got {other:?}"),
    }
}

fn with_file(
    contents: &str,
    args: &[&str],
) -> (Scratch, PathBuf, Result<DaemonConfig, ConfigError>) {
    let scratch = Scratch::new();
    let path = scratch.file("spyglass.toml", contents);
    let mut argv = vec!["--config", path.to_str().unwrap()];
    argv.extend_from_slice(args);
    let result = daemon(&argv);
    (scratch, path, result)
}

// --- the limits of issue 12

#[test]
fn limit_settings_from_flags_and_file_with_defaults_and_ranges() {
    let c = daemon(&[]).unwrap();
    assert_eq!(c.max_connecting, DEFAULT_MAX_CONNECTING);
    assert_eq!(c.http_max_connections, DEFAULT_HTTP_MAX_CONNECTIONS);
    assert_eq!(c.mqtt_client_id, None);
    let c = daemon(&[
        "--max-connecting",
        "3",
        "--http-max-connections",
        "16",
        "--mqtt-client-id",
        "thing-garage",
    ])
    .unwrap();
    assert_eq!((c.max_connecting, c.http_max_connections), (3, 16));
    assert_eq!(c.mqtt_client_id.as_deref(), Some("thing-garage"));
    let (_s, _p, c) = with_file(
        "max-connecting = 2\nhttp-max-connections = 8\nmqtt-client-id = \"cam\"\n",
        &["--max-connecting", "5"],
    );
    let c = c.unwrap();
    assert_eq!((c.max_connecting, c.http_max_connections), (5, 8));
    assert_eq!(c.mqtt_client_id.as_deref(), Some("cam"));
    for (args, want) in [
        (&["--max-connecting", "0"][..], "from 1 to 256"),
        (&["--http-max-connections", "2"][..], "from 4 to 4096"),
        (&["--mqtt-client-id", "has space"][..], "printable ASCII"),
    ] {
        let e = usage_error(daemon(args)).to_string();
        assert!(e.contains(want), "{args:?}: {e}");
    }
}

#[test]
fn secret_files_readable_by_others_are_named() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new();
    let password = scratch.file("password", "pw\n");
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o644)).unwrap();
    let c = daemon(&[
        "--mqtt-username",
        "u",
        "--mqtt-password-file",
        password.to_str().unwrap(),
    ])
    .unwrap();
    let warnings = c.exposed_secrets();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("MQTT password") && warnings[0].contains("644"));
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(c.exposed_secrets().is_empty());
}

// --- TURN REST API credentials (issue 14)

#[test]
fn a_turn_secret_replaces_the_turn_password_and_gives_viewers_turn_servers() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new();
    let secret = scratch.file("secret", "s3cret\n");
    let secret = secret.to_str().unwrap();
    let c = daemon(&["--turn", "turn:turn.lan:3478", "--turn-secret-file", secret]).unwrap();
    assert_eq!(c.turn_secret.as_deref(), Some("s3cret"));
    assert_eq!((&c.turn_username, &c.turn_password), (&None, &None));
    // Viewers get the device's TURN servers unless told others, for an hour by default.
    assert_eq!(c.viewer_turn, ["turn:turn.lan:3478"]);
    assert_eq!(c.turn_credential_lifetime, 3600);
    assert!(!format!("{c:?}").contains("s3cret"));
    // Readable by others: named at start, like the other secrets.
    std::fs::set_permissions(secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let warnings = c.exposed_secrets();
    assert!(
        warnings.len() == 1 && warnings[0].contains("TURN secret"),
        "{warnings:?}"
    );

    let c = daemon(&[
        "--turn-secret-file",
        secret,
        "--viewer-turn",
        "turn:t:3478?transport=tcp",
        "--viewer-turn",
        "turns:t:5349",
        "--turn-credential-lifetime",
        "600",
    ])
    .unwrap();
    assert!(c.turn.is_empty());
    assert_eq!(c.viewer_turn, ["turn:t:3478?transport=tcp", "turns:t:5349"]);
    assert_eq!(c.turn_credential_lifetime, 600);
    let (_s, _p, c) = with_file(
        &format!(
            "turn-secret-file = \"{secret}\"\nviewer-turn = [\"turns:t\"]\nturn-credential-lifetime = 120\n"
        ),
        &[],
    );
    let c = c.unwrap();
    assert_eq!(c.viewer_turn, ["turns:t"]);
    assert_eq!(c.turn_credential_lifetime, 120);

    // What does not go together.
    let password = scratch.file("pw", "pw");
    let password = password.to_str().unwrap();
    for (args, want) in [
        (
            vec![
                "--turn-secret-file",
                secret,
                "--turn-password-file",
                password,
                "--turn-username",
                "u",
            ],
            "replaces --turn-username",
        ),
        (vec!["--viewer-turn", "turn:t"], "needs --turn-secret-file"),
        (vec!["--turn", "turn:t"], "or --turn-secret-file"),
    ] {
        let e = daemon(&args).unwrap_err().to_string();
        assert!(e.contains(want), "{args:?}: {e}");
    }
    for (args, want) in [
        (
            &["--viewer-turn", "turn:t?transport=sctp"][..],
            "transport=udp|tcp",
        ),
        (
            &["--viewer-turn", "turns:t?transport=udp"],
            "transport=udp|tcp",
        ),
        (&["--turn-credential-lifetime", "10"], "from 60 to 604800"),
    ] {
        let e = usage_error(daemon(args)).to_string();
        assert!(e.contains(want), "{args:?}: {e}");
    }
}

#[test]
fn the_viewer_takes_stun_and_turn_over_udp() {
    let scratch = Scratch::new();
    let pw = scratch.file("pw", "tpw\n");
    let v = view_with(
        &[
            "--mqtt",
            "mqtt://b",
            "--id",
            "cam",
            "--stun",
            "stun:s:3478",
            "--turn",
            "turn:t:3478",
            "--turn-username",
            "u",
            "--turn-password-file",
            pw.to_str().unwrap(),
        ],
        &env(),
    )
    .unwrap();
    assert_eq!(v.stun, ["stun:s:3478"]);
    assert_eq!(v.turn, ["turn:t:3478"]);
    assert_eq!(v.turn_password.as_deref(), Some("tpw"));
    assert!(!format!("{v:?}").contains("tpw"));
    for url in ["turns:t:5349", "turn:t:3478?transport=tcp"] {
        let e = usage_error(view_with(
            &["--mqtt", "mqtt://b", "--id", "cam", "--turn", url],
            &env(),
        ))
        .to_string();
        assert!(e.contains("relays over UDP only"), "{url}: {e}");
    }
    let e = view_with(
        &["--mqtt", "mqtt://b", "--id", "cam", "--turn", "turn:t"],
        &env(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("--turn needs --turn-username"), "{e}");
}

// --- defaults and help

#[test]
fn defaults() {
    let c = daemon(&[]).unwrap();
    assert_eq!(c.id, "testhost");
    assert_eq!(c.mqtt, BrokerUrl::mqtt("127.0.0.1", 1883));
    // (Cloned: the rest of the options are read through `c`.)
    assert_eq!((c.username.clone(), c.password.clone()), (None, None));
    assert_eq!(
        c.video,
        VideoSpec {
            source: "/dev/video0".parse().unwrap(),
            width: 1280,
            height: 720,
            fps: 30,
            ..Default::default()
        }
    );
    assert_eq!(c.bitrate_kbps, 2000);
    assert_eq!(c.max_viewers, 4);
    assert_eq!(c.peer_timeout, Duration::from_secs(30));
    assert!(c.stun.is_empty() && c.turn.is_empty() && c.rtc_bind.is_empty());
    assert_eq!(
        (c.turn_username.clone(), c.turn_password.clone()),
        (None, None)
    );
    assert!(c.mdns);
    assert!(!c.rtc_allow_loopback);
    assert_eq!(c.log, None);
    assert_eq!(c.config_file, None);
}

#[test]
fn clap_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn help_documents_every_option_and_default() {
    let help = Cli::command().render_long_help().to_string();
    for key in file_keys().iter().chain(["config"].iter()) {
        assert!(
            help.contains(&format!("--{key}")),
            "--{key} missing from help"
        );
    }
    for default in [
        "[default: the host name]".to_owned(),
        "[default: mqtt://127.0.0.1:1883]".to_owned(),
        "[default: /dev/video0]".to_owned(),
        format!("[default: {DEFAULT_WIDTH}x{DEFAULT_HEIGHT}]"),
        format!("[default: {DEFAULT_FPS}]"),
        format!("[default: {DEFAULT_BITRATE_KBPS}]"),
        format!("[default: {DEFAULT_MAX_VIEWERS}]"),
        format!("[default: {DEFAULT_PEER_TIMEOUT_SECS}]"),
        "[default: on]".to_owned(),
        PASSWORD_ENV.to_owned(),
        "RUST_LOG".to_owned(),
    ] {
        assert!(
            help.contains(&default),
            "{default} missing from help:\n{help}"
        );
    }
    let mut cmd = Cli::command();
    let view = cmd
        .find_subcommand_mut("view")
        .unwrap()
        .render_long_help()
        .to_string();
    for needle in [
        "--mqtt",
        "--id",
        "--frames",
        "[default: 30]",
        "--timeout",
        "[default: 20]",
        "--cid",
        "view-",
    ] {
        assert!(
            view.contains(needle),
            "{needle} missing from view help:\n{view}"
        );
    }
}

#[test]
fn file_keys_are_the_daemon_flags() {
    let cmd = Cli::command();
    let mut flags: Vec<&str> = cmd
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| !["config", "help", "version"].contains(l))
        .collect();
    let mut keys = file_keys().to_vec();
    flags.sort();
    keys.sort();
    assert_eq!(flags, keys);
}

#[test]
fn help_and_version_are_clap_errors_that_exit_zero() {
    let e = usage_error(load_with(["spyglass", "--help"], &env()));
    assert_eq!(e.kind(), ErrorKind::DisplayHelp);
    assert_eq!(e.exit_code(), 0);
    let e = usage_error(load_with(["spyglass", "--version"], &env()));
    assert_eq!(e.kind(), ErrorKind::DisplayVersion);
    assert!(e.to_string().contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn unknown_flag_is_a_usage_error_with_exit_2() {
    let e = usage_error(daemon(&["--frobnicate"]));
    assert_eq!(e.kind(), ErrorKind::UnknownArgument);
    assert_eq!(e.exit_code(), 2);
    // Passwords are never flags.
    assert_eq!(
        usage_error(daemon(&["--mqtt-password", "x"])).kind(),
        ErrorKind::UnknownArgument
    );
}

// --- flags

#[test]
fn the_bitrate_range_defaults_to_the_bitrate_and_keeps_it_inside() {
    let range = |c: &DaemonConfig| (c.min_bitrate_kbps, c.bitrate_kbps, c.max_bitrate_kbps);
    assert_eq!(range(&daemon(&[]).unwrap()), (150, 2000, 2000));
    let c = daemon(&["--bitrate", "1500", "--max-bitrate", "2500"]).unwrap();
    assert_eq!(range(&c), (150, 1500, 2500));
    // The start is kept within the range.
    assert_eq!(
        range(&daemon(&["--max-bitrate", "800"]).unwrap()),
        (150, 800, 800)
    );
    // The default minimum is never above the maximum.
    let c = daemon(&["--bitrate", "100", "--max-bitrate", "120"]).unwrap();
    assert_eq!(range(&c), (120, 120, 120));
    let err = daemon(&["--min-bitrate", "900", "--max-bitrate", "800"]).unwrap_err();
    assert!(
        err.to_string()
            .contains("--min-bitrate 900 is above --max-bitrate 800"),
        "{err}"
    );
    assert!(daemon(&["--max-bitrate", "49"]).is_err());
}

#[test]
fn flags_set_every_option() {
    let scratch = Scratch::new();
    let turn_pw = scratch.file("turn.pw", "tpass\n");
    let c = daemon(&[
        "--id",
        "garage/cam1",
        "--mqtt",
        "mqtt://broker.lan:1884",
        "--mqtt-username",
        "cam",
        "--video",
        "test",
        "--size",
        "640x480",
        "--fps",
        "15",
        "--bitrate",
        "800",
        "--max-viewers",
        "2",
        "--peer-timeout",
        "10",
        "--stun",
        "stun:stun.lan:3478",
        "--stun",
        "stun:stun2.lan",
        "--turn",
        "turn:turn.lan:5349",
        "--turn-username",
        "t",
        "--turn-password-file",
        turn_pw.to_str().unwrap(),
        "--rtc-bind",
        "127.0.0.1",
        "--rtc-bind",
        "::1",
        "--rtc-allow-loopback",
        "on",
        "--mdns",
        "off",
        "--log",
        "spyglass=debug",
    ])
    .unwrap();
    assert_eq!(c.id, "garage/cam1");
    assert_eq!(c.mqtt, BrokerUrl::mqtt("broker.lan", 1884));
    assert_eq!(c.username.as_deref(), Some("cam"));
    assert_eq!(
        c.video,
        VideoSpec {
            source: "test".parse().unwrap(),
            width: 640,
            height: 480,
            fps: 15,
            ..Default::default()
        }
    );
    assert_eq!((c.bitrate_kbps, c.max_viewers), (800, 2));
    assert_eq!(c.peer_timeout, Duration::from_secs(10));
    assert_eq!(c.stun, ["stun:stun.lan:3478", "stun:stun2.lan"]);
    assert_eq!(c.turn, ["turn:turn.lan:5349"]);
    assert_eq!(c.turn_username.as_deref(), Some("t"));
    assert_eq!(c.turn_password.as_deref(), Some("tpass"));
    assert_eq!(
        c.rtc_bind,
        [
            "127.0.0.1".parse::<IpAddr>().unwrap(),
            "::1".parse().unwrap()
        ]
    );
    assert!(c.rtc_allow_loopback);
    assert!(!c.mdns);
    assert_eq!(c.log.as_deref(), Some("spyglass=debug"));
}

#[test]
fn bad_flag_values_are_rejected() {
    let cases: &[(&[&str], &str)] = &[
        (&["--size", "12x"], "WIDTHxHEIGHT"),
        (&["--size", "1280"], "WIDTHxHEIGHT"),
        (&["--size", "1281x720"], "even"),
        (&["--size", "8x8"], "16 to 4096"),
        (&["--size", "4098x720"], "16 to 4096"),
        (&["--size=-16x16"], "WIDTHxHEIGHT"),
        (&["--size", "+16x16"], "WIDTHxHEIGHT"),
        (&["--fps", "0"], "from 1 to 120, got 0"),
        (&["--fps", "121"], "from 1 to 120, got 121"),
        (&["--fps", "abc"], "from 1 to 120, got \"abc\""),
        (&["--bitrate", "49"], "from 50 to 50000"),
        (&["--max-viewers", "0"], "at least 1"),
        (&["--peer-timeout", "0"], "at least 1"),
        (&["--id", "cam+1"], "wildcard"),
        (&["--id", "cam/#"], "wildcard"),
        (&["--id", ""], "empty"),
        (&["--id", "/cam"], "start or end"),
        (&["--id", "a//b"], "empty level"),
        (&["--mqtt", "http://h"], "unknown scheme"),
        (&["--mqtt", "ssl://h"], "mqtts://"),
        (&["--mqtt", "mqtts://h/x"], "no path"),
        (&["--mqtt", "ws://h:8080/mqtt?x=1"], "no query"),
        (&["--mqtt", "wss://u:p@h"], "--mqtt-username"),
        (&["--mqtt", "127.0.0.1:1883"], "mqtt://HOST[:PORT]"),
        (&["--mqtt", "mqtt://"], "host"),
        (&["--mqtt", "mqtt://h:0"], "port"),
        (&["--mqtt", "mqtt://h:99999"], "port"),
        (&["--mqtt", "mqtt://u:p@h"], "--mqtt-username"),
        (&["--mqtt", "mqtt://h/topic"], "no path"),
        (&["--mqtt", "mqtt://::1"], "brackets"),
        (&["--video", "video0"], "/dev/video0"),
        (&["--stun", "stun.lan"], "stun:HOST"),
        (&["--stun", "turn:t.lan"], "stun:HOST"),
        (&["--turn", "stun:t.lan"], "turn:HOST[:PORT]"),
        (&["--turn", "turns:t.lan"], "TURN over UDP only"),
        (
            &["--turn", "turn:t.lan?transport=tcp"],
            "TURN over UDP only",
        ),
        (&["--rtc-bind", "eth0"], "IP address"),
        (&["--mdns", "maybe"], "on or off"),
        (&["--rtc-allow-loopback", "yes"], "on or off"),
        (&["--mqtt-username", ""], "non-empty"),
    ];
    for (args, want) in cases {
        let e = usage_error(daemon(args));
        assert_eq!(e.kind(), ErrorKind::ValueValidation, "{args:?}");
        let msg = e.to_string();
        assert!(msg.contains(want), "{args:?}: {msg}");
        assert!(
            msg.contains(args[0].split('=').next().unwrap()),
            "{args:?}: {msg}"
        );
    }
}

/// A self-signed certificate and its key, made with the openssl command.
fn pem_pair(scratch: &Scratch) -> (PathBuf, PathBuf) {
    let cert = scratch.0.join("c.pem");
    let key = scratch.0.join("k.pem");
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=t", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl")
        .success();
    assert!(ok, "openssl req failed");
    (cert, key)
}

#[test]
fn tls_files_from_flags_and_file_are_checked() {
    let scratch = Scratch::new();
    let (cert, key) = pem_pair(&scratch);
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let c = daemon(&[
        "--mqtt",
        "mqtts://b.lan",
        "--mqtt-ca",
        cert,
        "--mqtt-cert",
        cert,
        "--mqtt-key",
        key,
    ])
    .unwrap();
    assert_eq!(c.mqtt.port, 8883);
    assert_eq!(c.tls.ca.as_deref(), Some(Path::new(cert)));
    assert_eq!(c.tls.cert.as_deref(), Some(Path::new(cert)));
    assert_eq!(c.tls.key.as_deref(), Some(Path::new(key)));
    let text = format!("mqtt = \"wss://b.lan/mqtt\"\nmqtt-ca = \"{cert}\"\n");
    let path = scratch.file("c.toml", &text);
    let c = daemon(&["--config", path.to_str().unwrap()]).unwrap();
    assert_eq!(c.tls.ca.as_deref(), Some(Path::new(cert)));
    assert_eq!(c.tls.cert, None);
    let v = view_with(
        &["--mqtt", "mqtts://b.lan", "--id", "cam", "--mqtt-ca", cert],
        &env(),
    )
    .unwrap();
    assert_eq!(v.tls.ca.as_deref(), Some(Path::new(cert)));

    let junk = scratch.file("junk.pem", "hello\n");
    let junk = junk.to_str().unwrap();
    let missing = scratch.0.join("nope.pem");
    let missing = missing.to_str().unwrap();
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--mqtt-ca", cert],
            &["--mqtt-ca", cert, "mqtts:// or wss://", "mqtt://"],
        ),
        (
            &["--mqtt", "ws://b", "--mqtt-ca", cert],
            &["--mqtt-ca", "ws://b:80/mqtt"],
        ),
        (
            &["--mqtt", "mqtts://b", "--mqtt-ca", missing],
            &["--mqtt-ca", missing],
        ),
        (
            &["--mqtt", "mqtts://b", "--mqtt-ca", junk],
            &["--mqtt-ca", junk, "no PEM certificate"],
        ),
        (
            &["--mqtt", "mqtts://b", "--mqtt-ca", key],
            &["--mqtt-ca", "no PEM certificate"],
        ),
        (
            &[
                "--mqtt",
                "mqtts://b",
                "--mqtt-cert",
                cert,
                "--mqtt-key",
                cert,
            ],
            &["--mqtt-key", cert, "no PEM private key"],
        ),
        (
            &["--mqtt", "mqtts://b", "--mqtt-cert", cert],
            &["--mqtt-cert", "--mqtt-key"],
        ),
        (
            &["--mqtt", "mqtts://b", "--mqtt-key", key],
            &["--mqtt-key", "--mqtt-cert"],
        ),
    ];
    for (args, wants) in cases {
        let msg = daemon(args).unwrap_err().to_string();
        for want in *wants {
            assert!(msg.contains(want), "{args:?}: {msg}");
        }
        // The key's contents never appear in an error.
        assert!(!msg.contains("-----"), "{msg}");
    }
    let text = format!("mqtt = \"mqtts://b\"\nmqtt-ca = \"{junk}\"\n");
    let path = scratch.file("bad.toml", &text);
    let msg = daemon(&["--config", path.to_str().unwrap()])
        .unwrap_err()
        .to_string();
    for want in [path.to_str().unwrap(), "key \"mqtt-ca\"", junk] {
        assert!(msg.contains(want), "{msg}");
    }
}

#[test]
fn bad_host_name_needs_explicit_id() {
    let env = Env {
        mqtt_password: None,
        hostname: "bad+host".into(),
    };
    let err = daemon_with(&[], &env).unwrap_err().to_string();
    assert!(err.contains("--id"), "{err}");
    assert_eq!(daemon_with(&["--id", "cam"], &env).unwrap().id, "cam");
}

#[test]
fn turn_needs_credentials() {
    let err = daemon(&["--turn", "turn:t.lan"]).unwrap_err();
    assert!(err.to_string().contains("--turn-username"), "{err}");
    assert!(daemon(&["--turn", "turn:t.lan", "--turn-username", "u"]).is_err());
}

// --- passwords

#[test]
fn password_from_file_drops_one_trailing_newline() {
    let scratch = Scratch::new();
    for (contents, want) in [
        ("s3cret\n", "s3cret"),
        ("s3cret", "s3cret"),
        ("s3cret\r\n", "s3cret"),
        ("a b\n\n", "a b\n"),
    ] {
        let path = scratch.file("pw", contents);
        let c = daemon(&[
            "--mqtt-username",
            "u",
            "--mqtt-password-file",
            path.to_str().unwrap(),
        ])
        .unwrap();
        assert_eq!(c.password.as_deref(), Some(want), "{contents:?}");
    }
}

#[test]
fn password_from_env_and_file_wins() {
    let env = Env {
        mqtt_password: Some("fromenv".into()),
        hostname: "h".into(),
    };
    let c = daemon_with(&["--mqtt-username", "u"], &env).unwrap();
    assert_eq!(c.password.as_deref(), Some("fromenv"));
    let scratch = Scratch::new();
    let path = scratch.file("pw", "fromfile\n");
    let c = daemon_with(
        &[
            "--mqtt-username",
            "u",
            "--mqtt-password-file",
            path.to_str().unwrap(),
        ],
        &env,
    )
    .unwrap();
    assert_eq!(c.password.as_deref(), Some("fromfile"));
    // Empty counts as unset.
    let empty = Env {
        mqtt_password: Some("".into()),
        hostname: "h".into(),
    };
    assert_eq!(daemon_with(&[], &empty).unwrap().password, None);
}

#[test]
fn password_needs_user_name() {
    let env = Env {
        mqtt_password: Some("pw".into()),
        hostname: "h".into(),
    };
    let err = daemon_with(&[], &env).unwrap_err().to_string();
    assert!(
        err.contains(PASSWORD_ENV) && err.contains("--mqtt-username"),
        "{err}"
    );
}

#[test]
fn unreadable_or_empty_password_file_is_named() {
    let scratch = Scratch::new();
    let missing = scratch.0.join("nope.pw");
    let err = daemon(&[
        "--mqtt-username",
        "u",
        "--mqtt-password-file",
        missing.to_str().unwrap(),
    ])
    .unwrap_err();
    assert!(matches!(err, ConfigError::SecretFile { .. }), "{err:?}");
    assert!(err.to_string().contains("nope.pw"), "{err}");
    let empty = scratch.file("empty.pw", "\n");
    let err = daemon(&[
        "--mqtt-username",
        "u",
        "--mqtt-password-file",
        empty.to_str().unwrap(),
    ])
    .unwrap_err();
    assert!(
        err.to_string().contains("empty.pw") && err.to_string().contains("empty"),
        "{err}"
    );
    let err = daemon(&["--turn-password-file", missing.to_str().unwrap()]).unwrap_err();
    assert!(
        err.to_string().contains("TURN password") && err.to_string().contains("nope.pw"),
        "{err}"
    );
}

#[test]
fn debug_redacts_passwords() {
    let scratch = Scratch::new();
    let pw = scratch.file("pw", "hunter2-mqtt");
    let tpw = scratch.file("tpw", "hunter2-turn");
    let c = daemon(&[
        "--mqtt-username",
        "u",
        "--mqtt-password-file",
        pw.to_str().unwrap(),
        "--turn",
        "turn:t",
        "--turn-username",
        "t",
        "--turn-password-file",
        tpw.to_str().unwrap(),
    ])
    .unwrap();
    assert_eq!(c.password.as_deref(), Some("hunter2-mqtt"));
    let debug = format!("{c:?} {c:#?} {:?}", Command::Daemon(c.clone()));
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(debug.contains("<redacted>"));

    let env = Env {
        mqtt_password: Some("hunter2-view".into()),
        hostname: "h".into(),
    };
    let v = view_with(
        &["--mqtt", "mqtt://h", "--id", "cam", "--mqtt-username", "u"],
        &env,
    )
    .unwrap();
    assert_eq!(v.password.as_deref(), Some("hunter2-view"));
    let debug = format!("{v:?}");
    assert!(
        !debug.contains("hunter2") && debug.contains("<redacted>"),
        "{debug}"
    );
}

// --- config file

#[test]
fn file_sets_every_key() {
    let scratch = Scratch::new();
    let pw = scratch.file("pw", "p\n");
    let tpw = scratch.file("tpw", "tp\n");
    let text = format!(
        r#"
        id = "garage/cam1"
        mqtt = "mqtt://broker.lan"
        mqtt-username = "cam"
        mqtt-password-file = "{pw}"
        video = "test"
        size = "640x360"
        fps = 25
        bitrate = "900"
        max-viewers = 8
        peer-timeout = 5
        stun = ["stun:a.lan", "stun:b.lan:3478"]
        turn = "turn:t.lan"
        turn-username = "tu"
        turn-password-file = "{tpw}"
        rtc-bind = ["127.0.0.1"]
        rtc-allow-loopback = true
        mdns = "off"
        log = "debug"
        "#,
        pw = pw.display(),
        tpw = tpw.display()
    );
    let path = scratch.file("c.toml", &text);
    let c = daemon(&["--config", path.to_str().unwrap()]).unwrap();
    assert_eq!(c.id, "garage/cam1");
    assert_eq!(c.mqtt, BrokerUrl::mqtt("broker.lan", 1883));
    assert_eq!(
        (c.username.as_deref(), c.password.as_deref()),
        (Some("cam"), Some("p"))
    );
    assert_eq!(
        c.video,
        VideoSpec {
            source: "test".parse().unwrap(),
            width: 640,
            height: 360,
            fps: 25,
            ..Default::default()
        }
    );
    assert_eq!((c.bitrate_kbps, c.max_viewers), (900, 8));
    assert_eq!(c.peer_timeout, Duration::from_secs(5));
    assert_eq!(c.stun, ["stun:a.lan", "stun:b.lan:3478"]);
    assert_eq!(c.turn, ["turn:t.lan"]);
    assert_eq!(
        (c.turn_username.as_deref(), c.turn_password.as_deref()),
        (Some("tu"), Some("tp"))
    );
    assert_eq!(c.rtc_bind, ["127.0.0.1".parse::<IpAddr>().unwrap()]);
    assert!(c.rtc_allow_loopback);
    assert!(!c.mdns);
    assert_eq!(c.log.as_deref(), Some("debug"));
    assert_eq!(c.config_file.as_deref(), Some(path.as_path()));
}

#[test]
fn flags_override_file() {
    let (_s, _p, c) = with_file(
        "fps = 10\nsize = \"320x240\"\nid = \"from-file\"\nstun = [\"stun:file\"]\nmdns = false\nbitrate = 100\n",
        &[
            "--fps",
            "20",
            "--id",
            "from-flag",
            "--stun",
            "stun:flag",
            "--mdns",
            "on",
        ],
    );
    let c = c.unwrap();
    assert_eq!(c.video.fps, 20);
    assert_eq!(c.id, "from-flag");
    assert_eq!(c.stun, ["stun:flag"]);
    assert!(c.mdns);
    // Keys without a flag still come from the file.
    assert_eq!(
        (c.video.width, c.video.height, c.bitrate_kbps),
        (320, 240, 100)
    );
}

#[test]
fn empty_file_gives_defaults() {
    let (_s, _p, c) = with_file("# nothing here\n", &[]);
    let mut c = c.unwrap();
    assert!(c.config_file.take().is_some());
    assert_eq!(c, daemon(&[]).unwrap());
}

#[test]
fn each_bad_file_value_names_key_and_file() {
    let cases = [
        (
            "fps = \"abc\"",
            "fps",
            "expected an integer from 1 to 120, got \"abc\"",
        ),
        ("fps = 0", "fps", "expected an integer from 1 to 120, got 0"),
        ("fps = 2.5", "fps", "got 2.5"),
        ("fps = -1", "fps", "got -1"),
        ("bitrate = 10", "bitrate", "from 50 to 50000, got 10"),
        ("max-viewers = 0", "max-viewers", "at least 1"),
        ("peer-timeout = true", "peer-timeout", "got true"),
        ("size = \"12x\"", "size", "WIDTHxHEIGHT"),
        ("size = \"15x720\"", "size", "even"),
        (
            "size = 1280",
            "size",
            "expected a string WIDTHxHEIGHT, got 1280",
        ),
        ("id = \"a+b\"", "id", "wildcard"),
        ("id = \"a/#\"", "id", "wildcard"),
        ("id = 5", "id", "expected a device id, got 5"),
        ("mqtt = \"tls://h\"", "mqtt", "mqtts://"),
        ("mqtt-ca = 1", "mqtt-ca", "expected a file path"),
        ("mqtt-key = \"\"", "mqtt-key", "non-empty"),
        ("mqtt = \"h:1883\"", "mqtt", "mqtt://HOST[:PORT]"),
        ("mqtt-username = \"\"", "mqtt-username", "non-empty"),
        (
            "mqtt-password-file = 1",
            "mqtt-password-file",
            "expected a file path",
        ),
        ("video = \"cam\"", "video", "/dev/video0"),
        ("stun = [\"stun:a\", \"b\"]", "stun", "got \"b\""),
        ("stun = [1]", "stun", "got 1"),
        ("turn = [\"stun:a\"]", "turn", "turn:HOST"),
        ("turn = [\"turns:a\"]", "turn", "over TCP or TLS"),
        ("turn-username = []", "turn-username", "got an array"),
        (
            "turn-password-file = \"\"",
            "turn-password-file",
            "non-empty",
        ),
        ("rtc-bind = [\"localhost\"]", "rtc-bind", "IP address"),
        ("rtc-bind = \"1.2.3\"", "rtc-bind", "IP address"),
        ("mdns = \"maybe\"", "mdns", "on or off"),
        ("mdns = 1", "mdns", "got 1"),
        ("log = \"[\"", "log", "log filter"),
        ("[mqtt]\nhost = \"h\"", "mqtt", "got a table"),
    ];
    for (text, key, want) in cases {
        let (_s, path, result) = with_file(text, &[]);
        let err = result.unwrap_err();
        assert!(
            matches!(&err, ConfigError::FileValue { key: k, .. } if k == key),
            "{text}: {err:?}"
        );
        let msg = err.to_string();
        let prefix = format!("config file {}: key \"{key}\": ", path.display());
        assert!(msg.starts_with(&prefix), "{text}: {msg}");
        assert!(msg.contains(want), "{text}: {msg}");
    }
}

#[test]
fn every_file_key_is_known() {
    // A value of the wrong type is a value error, never "unknown key".
    for key in file_keys() {
        let (_s, _p, result) = with_file(&format!("{key} = {{}}"), &[]);
        assert!(
            matches!(result, Err(ConfigError::FileValue { .. })),
            "{key}: {result:?}"
        );
    }
}

#[test]
fn unknown_key_names_file_and_lists_valid_keys() {
    for key in ["foo", "mqtt-password", "config", "Fps"] {
        let (_s, path, result) = with_file(&format!("{key} = 1"), &[]);
        let msg = result.unwrap_err().to_string();
        assert!(
            msg.starts_with(&format!(
                "config file {}: unknown key \"{key}\"",
                path.display()
            )),
            "{msg}"
        );
        assert!(msg.contains("valid keys: id, mqtt, mqtt-username"), "{msg}");
    }
}

#[test]
fn syntax_error_names_file_and_line() {
    let (_s, path, result) = with_file("fps = 30\nsize = 1280x720\n", &[]);
    let err = result.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, ConfigError::FileSyntax { line: 2, .. }),
        "{msg}"
    );
    assert!(
        msg.starts_with(&format!("config file {}: line 2, column", path.display())),
        "{msg}"
    );
}

#[test]
fn missing_config_file_is_named() {
    let scratch = Scratch::new();
    let path = scratch.0.join("absent.toml");
    let err = daemon(&["--config", path.to_str().unwrap()]).unwrap_err();
    assert!(matches!(err, ConfigError::FileRead { .. }));
    assert!(
        err.to_string()
            .starts_with(&format!("config file {}: ", path.display())),
        "{err}"
    );
}

// --- the viewer page's options

#[test]
fn web_options_defaults_flags_and_file() {
    let c = daemon(&[]).unwrap();
    assert_eq!(c.http, Some("0.0.0.0:8080".parse().unwrap()));
    assert_eq!(c.web_broker_url, None);
    assert_eq!(c.web_root, PathBuf::from(DEFAULT_WEB_ROOT));

    let root = Scratch::new();
    let root_arg = root.0.to_str().unwrap();
    let c = daemon(&[
        "--http",
        "127.0.0.1:18080",
        "--web-broker-url",
        "wss://broker.lan:8884/mqtt",
        "--web-root",
        root_arg,
    ])
    .unwrap();
    assert_eq!(c.http, Some("127.0.0.1:18080".parse().unwrap()));
    assert_eq!(
        c.web_broker_url.as_deref(),
        Some("wss://broker.lan:8884/mqtt")
    );
    assert_eq!(c.web_root, root.0);
    assert_eq!(daemon(&["--http", "off"]).unwrap().http, None);
    assert_eq!(
        daemon(&["--http", "[::]:80"]).unwrap().http,
        Some("[::]:80".parse().unwrap())
    );

    let text = format!(
        "http = \"off\"\nweb-broker-url = \"ws://10.0.0.2:9001\"\nweb-root = \"{root_arg}\"\n"
    );
    let (_s, _p, c) = with_file(&text, &[]);
    let c = c.unwrap();
    assert_eq!(c.http, None);
    assert_eq!(c.web_broker_url.as_deref(), Some("ws://10.0.0.2:9001"));
    assert_eq!(c.web_root, root.0);
    // The flag wins over the file.
    let (_s, _p, c) = with_file(&text, &["--http", "127.0.0.1:9"]);
    assert_eq!(c.unwrap().http, Some("127.0.0.1:9".parse().unwrap()));
}

#[test]
fn bad_web_options_are_refused_with_the_reason() {
    let cases: &[(&[&str], &str)] = &[
        (&["--http", "8080"], "IP:PORT"),
        (&["--http", "localhost:8080"], "IP:PORT"),
        (&["--http", "0.0.0.0:0"], "IP:PORT"),
        (&["--http", "on"], "expected off or"),
        (&["--web-broker-url", "mqtt://h:1883"], "WebSockets only"),
        (&["--web-broker-url", "ws://"], "host"),
        (&["--web-broker-url", "ws://u:p@h:9001"], "asks for them"),
        (&["--web-broker-url", "ws://h:99999"], "port"),
        (&["--web-broker-url", "ws://h:9001/?x=1"], "query"),
        (&["--web-broker-url", "ws://h /m"], "spaces"),
        (&["--web-root", ""], "non-empty"),
    ];
    for (args, want) in cases {
        let e = usage_error(daemon(args));
        assert_eq!(e.kind(), ErrorKind::ValueValidation, "{args:?}");
        let msg = e.to_string();
        assert!(msg.contains(want), "{args:?}: {msg}");
        assert!(msg.contains(args[0]), "{args:?}: {msg}");
    }
    let scratch = Scratch::new();
    let missing = scratch.0.join("no-such-dir");
    let err = daemon(&["--web-root", missing.to_str().unwrap()]).unwrap_err();
    assert!(
        err.to_string().contains("no-such-dir") && err.to_string().contains("not a directory"),
        "{err}"
    );
    for (text, key, want) in [
        ("http = 8080", "http", "got 8080"),
        ("http = \"nowhere\"", "http", "IP:PORT"),
        ("web-broker-url = \"http://h\"", "web-broker-url", "ws://"),
        ("web-root = []", "web-root", "got an array"),
    ] {
        let (_s, path, result) = with_file(text, &[]);
        let msg = result.unwrap_err().to_string();
        let prefix = format!("config file {}: key \"{key}\": ", path.display());
        assert!(
            msg.starts_with(&prefix) && msg.contains(want),
            "{text}: {msg}"
        );
    }
}

#[test]
fn help_gives_the_web_defaults() {
    let help = Cli::command().render_long_help().to_string();
    for needle in [
        "[default: 0.0.0.0:8080]",
        "ws://<host>:9001",
        "/usr/share/spyglass/web",
        "web/dist",
    ] {
        assert!(help.contains(needle), "{needle} missing from help:\n{help}");
    }
    assert_eq!(crate::web::DEFAULT_BROKER_WS_PORT, 9001);
}

// --- subcommands

#[test]
fn devices_subcommand() {
    assert_eq!(
        load_with(["spyglass", "devices"], &env()).unwrap(),
        Command::Devices
    );
    // Daemon options do not mix with subcommands.
    assert!(
        load_with(["spyglass", "--fps", "5", "devices"], &env())
            .unwrap_err()
            .is_usage()
    );
}

#[test]
fn view_args_parse_with_defaults() {
    let v = view_with(
        &["--mqtt", "mqtt://127.0.0.1:18830", "--id", "garage/cam1"],
        &env(),
    )
    .unwrap();
    assert_eq!(v.mqtt, BrokerUrl::mqtt("127.0.0.1", 18830));
    assert_eq!(v.id, "garage/cam1");
    assert_eq!((v.username, v.password), (None, None));
    assert_eq!(v.frames, DEFAULT_VIEW_FRAMES);
    assert_eq!(v.timeout, Duration::from_secs(20));
    assert!(v.cid.starts_with("view-"), "{}", v.cid);
    assert_eq!(validate_cid(&v.cid), Ok(()));
    let other = view_with(&["--mqtt", "mqtt://h", "--id", "c"], &env()).unwrap();
    assert_ne!(v.cid, other.cid);
}

#[test]
fn view_args_parse_explicit() {
    let scratch = Scratch::new();
    let pw = scratch.file("pw", "vp\n");
    let v = view_with(
        &[
            "--mqtt",
            "mqtt://h",
            "--id",
            "cam",
            "--frames",
            "5",
            "--timeout",
            "3",
            "--cid",
            "viewer1",
            "--mqtt-username",
            "u",
            "--mqtt-password-file",
            pw.to_str().unwrap(),
        ],
        &env(),
    )
    .unwrap();
    assert_eq!(
        (v.frames, v.timeout, v.cid.as_str()),
        (5, Duration::from_secs(3), "viewer1")
    );
    assert_eq!(
        (v.username.as_deref(), v.password.as_deref()),
        (Some("u"), Some("vp"))
    );
}

#[test]
fn view_args_are_validated() {
    let cases: &[(&[&str], ErrorKind)] = &[
        (&["--id", "cam"], ErrorKind::MissingRequiredArgument),
        (&["--mqtt", "mqtt://h"], ErrorKind::MissingRequiredArgument),
        (
            &["--mqtt", "mqtt://h", "--id", "c", "--cid", "a/b"],
            ErrorKind::ValueValidation,
        ),
        (
            &["--mqtt", "mqtt://h", "--id", "c", "--cid", &"a".repeat(65)],
            ErrorKind::ValueValidation,
        ),
        (
            &["--mqtt", "mqtt://h", "--id", "c", "--frames", "0"],
            ErrorKind::ValueValidation,
        ),
        (
            &["--mqtt", "mqtt://h", "--id", "c", "--timeout", "0"],
            ErrorKind::ValueValidation,
        ),
        (
            &["--mqtt", "mqtt://h", "--id", "c+"],
            ErrorKind::ValueValidation,
        ),
        (
            &["--mqtt", "http://h", "--id", "c"],
            ErrorKind::ValueValidation,
        ),
        (
            &["--mqtt", "mqtt://h", "--id", "c", "--fps", "3"],
            ErrorKind::UnknownArgument,
        ),
    ];
    for (args, kind) in cases {
        assert_eq!(
            usage_error(view_with(args, &env())).kind(),
            *kind,
            "{args:?}"
        );
    }
    let cid64 = "a".repeat(64);
    assert!(
        view_with(
            &["--mqtt", "mqtt://h", "--id", "c", "--cid", &cid64],
            &env()
        )
        .is_ok()
    );
}

#[test]
fn audio_comes_from_the_flag_or_the_file_and_defaults_to_auto() {
    assert_eq!(daemon(&[]).unwrap().audio, "auto");
    assert_eq!(daemon(&["--audio", "hw:1,0"]).unwrap().audio, "hw:1,0");
    let (_s, _p, c) = with_file("audio = \"tone\"", &[]);
    assert_eq!(c.unwrap().audio, "tone");
    let (_s, _p, c) = with_file("audio = \"tone\"", &["--audio", "none"]);
    assert_eq!(c.unwrap().audio, "none");
    let (_s, path, c) = with_file("audio = \"\"", &[]);
    let msg = c.unwrap_err().to_string();
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("audio"),
        "{msg}"
    );
    usage_error(daemon(&["--audio", "two words"]));
}

// --- selftest

fn selftest(args: &[&str]) -> Result<SelftestConfig, ConfigError> {
    let argv = ["spyglass", "selftest"]
        .into_iter()
        .chain(args.iter().copied());
    match load_with(argv, &env())? {
        Command::Selftest(config) => Ok(config),
        other => panic!("expected selftest, got {other:?}"),
    }
}

#[test]
fn selftest_args_parse() {
    let c = selftest(&[]).unwrap();
    assert_eq!(c.video.source, DEFAULT_VIDEO);
    assert_eq!(
        (c.video.width, c.video.height, c.video.fps),
        (1280, 720, 30)
    );
    assert_eq!(
        (c.audio.as_str(), c.seconds, c.pixel_format),
        ("none", 3, None)
    );
    let c = selftest(&[
        "--video",
        "/dev/video2",
        "--size",
        "320x240",
        "--fps",
        "15",
        "--seconds",
        "2",
        "--pixel-format",
        "nv12",
        "--json",
    ])
    .unwrap();
    assert_eq!((c.video.width, c.video.height, c.video.fps), (320, 240, 15));
    assert_eq!(c.pixel_format, Some(crate::video::negotiate::FourCc::Nv12));
    assert!(c.json && c.seconds == 2 && c.video.source == "/dev/video2");
    let c = selftest(&["--audio", "tone"]).unwrap();
    assert_eq!((c.audio.as_str(), c.expect_tone_hz), ("tone", Some(1000)));
    let c = selftest(&["--audio", "hw:Loopback,1,0", "--expect-tone", "440"]).unwrap();
    assert_eq!(
        (c.audio.as_str(), c.expect_tone_hz),
        ("hw:Loopback,1,0", Some(440))
    );
    assert_eq!(
        selftest(&["--audio", "default"]).unwrap().expect_tone_hz,
        None
    );
    for bad in [
        &["--audio", "auto"][..],
        &["--audio", "two words"],
        &["--expect-tone", "5"],
        &["--pixel-format", "RGB3"],
        &["--seconds", "0"],
        &["--video", "cam"],
        &["--exec-format", "yuv"],
        &["--encoder", "x264"],
    ] {
        assert_eq!(
            usage_error(selftest(bad)).kind(),
            ErrorKind::ValueValidation,
            "{bad:?}"
        );
    }
}

// --- every error text, as the user reads it (pinned before the module was reshaped)

/// What each bad command line or config file says, whole: flags (clap's rendering), config
/// file keys (wrong type and bad value), and the checks across options. `<DIR>` stands for
/// the scratch directory, `<KEYS>` for the list of valid keys.
#[test]
fn error_texts_are_pinned() {
    let scratch = Scratch::new();
    let dir = scratch.0.to_str().unwrap().to_owned();
    let (cert, key) = pem_pair(&scratch);
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let empty = scratch.file("empty.pw", "\n");
    let empty = empty.to_str().unwrap();
    let missing = format!("{dir}/nope");
    let mut out = String::new();
    let mut record = |what: String, result: Result<Command, ConfigError>| {
        let text = match result {
            Ok(command) => format!("accepted: {command:?}"),
            Err(e) => e.to_string(),
        };
        let text = format!("{what}\n=> {}\n", text.trim_end());
        // The list of keys grows with every option; other tests check it.
        out += &text
            .replace(&dir, "<DIR>")
            .replace(&file_keys().join(", "), "<KEYS>");
    };
    fn argv(args: &[&str]) -> Vec<String> {
        std::iter::once("spyglass")
            .chain(args.iter().copied())
            .map(str::to_owned)
            .collect()
    }
    let flags: &[&[&str]] = &[
        &["--id", "cam+1"],
        &["--id", ""],
        &["--mqtt", "http://h"],
        &["--mqtt", "ssl://h"],
        &["--mqtt", "mqtts://h/x"],
        &["--mqtt", "ws://h:8080/mqtt?x=1"],
        &["--mqtt", "mqtt://h#f"],
        &["--mqtt", "wss://u:p@h"],
        &["--mqtt", "127.0.0.1:1883"],
        &["--mqtt", "h:1883"],
        &["--mqtt", "mqtt://"],
        &["--mqtt", "mqtt://h:0"],
        &["--mqtt", "mqtt://h:99999"],
        &["--mqtt", "mqtt://h:x"],
        &["--mqtt", "mqtt://h/topic"],
        &["--mqtt", "mqtt://::1"],
        &["--mqtt", "mqtt://[::1"],
        &["--mqtt", "mqtt://[1.2.3.4]"],
        &["--mqtt", "mqtt://[::1]x"],
        &["--mqtt", "mqtt://h x"],
        &["--mqtt", "mqtt://h!"],
        &["--mqtt", "mqtt://bücher.de"],
        &["--mqtt-username", ""],
        &["--mqtt-password-file", ""],
        &["--mqtt-ca", ""],
        &["--mqtt-client-id", "has space"],
        &["--mqtt-client-id", ""],
        &["--video", "video0"],
        &["--video", ""],
        &["--size", "12x"],
        &["--size", "1281x720"],
        &["--size", "8x8"],
        &["--fps", "0"],
        &["--fps", "121"],
        &["--fps", "abc"],
        &["--fps", "-1"],
        &["--bitrate", "49"],
        &["--max-viewers", "0"],
        &["--peer-timeout", "0"],
        &["--max-connecting", "257"],
        &["--http-max-connections", "2"],
        &["--stun", "stun.lan"],
        &["--stun", "stun:"],
        &["--turn", "stun:t.lan"],
        &["--rtc-bind", "eth0"],
        &["--mdns", "maybe"],
        &["--mdns", "true"],
        &["--http", "8080"],
        &["--http", "on"],
        &["--http", "0.0.0.0:0"],
        &["--web-broker-url", "mqtt://h:1883"],
        &["--web-broker-url", "h:9001"],
        &["--web-broker-url", "ws://"],
        &["--web-broker-url", "ws://u:p@h:9001"],
        &["--web-broker-url", "ws://h:99999"],
        &["--web-broker-url", "ws://h:9001/?x=1"],
        &["--web-broker-url", "ws://h /m"],
        &["--web-broker-url", "ws://::1"],
        &["--web-root", ""],
        &["--log", "["],
        &["--log", ""],
        &["--audio", "two words"],
        &["--audio", ""],
        &["--frobnicate"],
        &["--fps"],
        &["--fps", "5", "devices"],
        &["--turn", "turn:t.lan"],
        &["--turn", "turn:t.lan", "--turn-username", "u"],
        &["--web-root", &missing],
        &["--mqtt-ca", cert],
        &["--mqtt", "ws://b", "--mqtt-ca", cert],
        &["--mqtt", "mqtts://b", "--mqtt-ca", &missing],
        &["--mqtt", "mqtts://b", "--mqtt-ca", key],
        &[
            "--mqtt",
            "mqtts://b",
            "--mqtt-cert",
            cert,
            "--mqtt-key",
            cert,
        ],
        &["--mqtt", "mqtts://b", "--mqtt-cert", cert],
        &["--mqtt", "mqtts://b", "--mqtt-key", key],
        &["--mqtt-username", "u", "--mqtt-password-file", &missing],
        &["--mqtt-username", "u", "--mqtt-password-file", empty],
        &["--mqtt-password-file", empty],
        &["--turn-password-file", &missing],
        &["view", "--id", "cam"],
        &["view", "--mqtt", "mqtt://h"],
        &["view", "--mqtt", "mqtt://h", "--id", "c", "--cid", "a/b"],
        &["view", "--mqtt", "mqtt://h", "--id", "c", "--frames", "0"],
        &["view", "--mqtt", "mqtt://h", "--id", "c", "--timeout", "0"],
        &["view", "--mqtt", "mqtt://h", "--id", "c", "--mdns", "no"],
        &["view", "--mqtt", "mqtt://h", "--id", "c", "--mqtt-ca", cert],
        &["selftest", "--audio", "auto"],
        &["selftest", "--expect-tone", "5"],
        &["selftest", "--pixel-format", "RGB3"],
        &["selftest", "--seconds", "0"],
        &["selftest", "--video", "cam"],
        &["selftest", "--size", "1x1"],
    ];
    for args in flags {
        record(args.join(" "), load_with(argv(args), &env()));
    }
    for (hostname, password) in [("bad+host", None), ("h", Some("pw")), ("h", Some("\u{0}"))] {
        let env = Env {
            mqtt_password: password.map(Into::into),
            hostname: hostname.into(),
        };
        record(
            format!("(host name {hostname:?}, password from the environment {password:?})"),
            load_with(argv(&[]), &env),
        );
    }
    let file_cases = [
        "foo = 1",
        "config = \"x\"",
        "fps = 30\nsize = 1280x720\n",
        "fps = \"abc\"",
        "fps = 0",
        "fps = 2.5",
        "fps = -1",
        "fps = 1979-05-27",
        "fps = [30]",
        "bitrate = 10",
        "max-viewers = 0",
        "peer-timeout = true",
        "max-connecting = {}",
        "http-max-connections = \"x\"",
        "size = \"12x\"",
        "size = 1280",
        "id = \"a+b\"",
        "id = 5",
        "mqtt = \"tls://h\"",
        "mqtt = \"h:1883\"",
        "[mqtt]\nhost = \"h\"",
        "mqtt-username = \"\"",
        "mqtt-username = 1",
        "mqtt-password-file = 1",
        "mqtt-ca = 1",
        "mqtt-cert = \"\"",
        "mqtt-key = []",
        "mqtt-client-id = \"a b\"",
        "mqtt-client-id = 7",
        "video = \"cam\"",
        "video = 0",
        "exec-format = \"nv12\"",
        "encoder = 1",
        "stun = [\"stun:a\", \"b\"]",
        "stun = [1]",
        "stun = 1",
        "turn = [\"stun:a\"]",
        "turn-username = []",
        "turn-password-file = \"\"",
        "rtc-bind = [\"localhost\"]",
        "rtc-bind = \"1.2.3\"",
        "rtc-bind = 5",
        "mdns = \"maybe\"",
        "mdns = 1",
        "http = 8080",
        "http = \"nowhere\"",
        "web-broker-url = \"http://h\"",
        "web-broker-url = 1",
        "web-root = []",
        "log = \"[\"",
        "log = 1",
        "audio = \"\"",
        "audio = 1",
        "mqtt = \"mqtt://b\"\nmqtt-ca = \"CERT\"",
        "mqtt = \"mqtts://b\"\nmqtt-ca = \"KEY\"",
        "mqtt = \"mqtts://b\"\nmqtt-cert = \"CERT\"",
        "turn = \"turn:t\"",
    ];
    for (n, text) in file_cases.iter().enumerate() {
        let text = text.replace("CERT", cert).replace("KEY", key);
        let path = scratch.file(&format!("{n}.toml"), &text);
        record(
            format!("file: {}", text.replace(&dir, "<DIR>").replace('\n', "\\n")),
            load_with(argv(&["--config", path.to_str().unwrap()]), &env()),
        );
    }
    record(
        "--config <DIR>/nope".into(),
        load_with(argv(&["--config", &missing]), &env()),
    );
    let want = include_str!("../../tests/data/config-errors.txt");
    if out != want {
        let actual = std::env::temp_dir().join(format!("config-errors.{}.txt", std::process::id()));
        std::fs::write(&actual, &out).unwrap();
        panic!(
            "error texts changed: compare tests/data/config-errors.txt with {}",
            actual.display()
        );
    }
}

// --- the packaged default config file

#[test]
fn packaged_config_file_parses_with_every_key_uncommented() {
    let text = include_str!("../../debian/spyglass.toml");
    let path = Path::new("debian/spyglass.toml");
    parse_config_text(path, text).unwrap();
    let uncommented: String = text
        .lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest) if rest.contains(" = ") && !rest.starts_with(' ') => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let values = parse_config_text(path, &uncommented).unwrap();
    assert!(values.keys.iter().any(|key| key == "fps"));
    assert_eq!(values.options.fps, DEFAULT_FPS);
    // Every key the daemon knows is documented in the file.
    for key in file_keys() {
        assert!(
            text.contains(&format!("#{key} = ")),
            "{key} is missing from debian/spyglass.toml"
        );
    }
}

#[test]
fn the_standards_options_and_their_checks() {
    let scratch = Scratch::new();
    let token = scratch.file("whep-token", "0123456789abcdef0123\n");
    let short = scratch.file("short", "abc\n");
    let c = daemon(&["--whep-token-file", token.to_str().unwrap()]).unwrap();
    assert_eq!(c.whep_token.as_deref(), Some("0123456789abcdef0123"));
    assert!(format!("{c:?}").contains("<redacted>"));
    assert!(c.secret_files.iter().any(|(what, _)| *what == "WHEP token"));
    let err = daemon(&["--whep-token-file", short.to_str().unwrap()]).unwrap_err();
    assert!(err.to_string().contains("at least 16 characters"), "{err}");
    let err = daemon(&["--whip-token-file", token.to_str().unwrap()]).unwrap_err();
    assert!(err.to_string().contains("needs --whip"), "{err}");
    let c = daemon(&[
        "--whip",
        "https://sfu.example.org/whip/cam",
        "--whip-token-file",
        token.to_str().unwrap(),
    ])
    .unwrap();
    assert_eq!(c.whip.as_deref(), Some("https://sfu.example.org/whip/cam"));
    assert!(daemon(&["--whip", "ftp://x"]).is_err());
    // Home Assistant: off by default; interval 0 or 10..=86400; a prefix is a topic prefix.
    let c = daemon(&[]).unwrap();
    assert!(!c.homeassistant);
    assert_eq!(
        (c.homeassistant_prefix.as_str(), c.homeassistant_interval),
        ("homeassistant", 60)
    );
    for bad in ["5", "86401", "x"] {
        let e = usage_error(daemon(&["--homeassistant-interval", bad]));
        assert!(
            e.to_string().contains("0 or an integer from 10 to 86400"),
            "{e}"
        );
    }
    assert!(daemon(&["--homeassistant-prefix", "home/+"]).is_err());
    let (_s, _p, c) = with_file(
        "homeassistant = true\nhomeassistant-interval = 0\nhomeassistant-prefix = \"ha\"\n",
        &[],
    );
    let c = c.unwrap();
    assert_eq!(
        (
            c.homeassistant,
            c.homeassistant_interval,
            c.homeassistant_prefix.as_str()
        ),
        (true, 0, "ha")
    );
}

#[test]
fn homeassistant_remove_takes_the_daemons_options_and_its_config_file() {
    let scratch = Scratch::new();
    let path = scratch.file(
        "spyglass.toml",
        "id = \"garage/cam1\"\nhomeassistant-prefix = \"ha\"\n",
    );
    let argv = [
        "spyglass",
        "homeassistant",
        "--remove",
        "--config",
        path.to_str().unwrap(),
    ];
    match load_with(argv, &env()).unwrap() {
        Command::HomeAssistantRemove(c) => {
            assert_eq!(c.id, "garage/cam1");
            assert_eq!(c.homeassistant_prefix, "ha");
        }
        other => panic!("expected homeassistant --remove, got {other:?}"),
    }
    assert!(load_with(["spyglass", "homeassistant"], &env()).is_err());
}
