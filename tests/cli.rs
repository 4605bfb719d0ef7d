//! The command line as a user meets it: help, version, config-file errors, and `spyglass view`
//! as a process against a real broker and daemon.

mod support;

use std::process::Command;

use support::*;

fn spyglass(args: &[&str]) -> std::process::Output {
    Command::new(spyglass_bin())
        .args(args)
        .output()
        .expect("running spyglass")
}

#[test]
fn help_documents_every_option_and_version_prints_the_version() {
    let out = spyglass(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for option in [
        "--config",
        "--id",
        "--mqtt",
        "--mqtt-username",
        "--mqtt-password-file",
        "--video",
        "--size",
        "--fps",
        "--bitrate",
        "--max-viewers",
        "--peer-timeout",
        "--stun",
        "--turn",
        "--turn-username",
        "--turn-password-file",
        "--rtc-bind",
        "--rtc-allow-loopback",
        "--mdns",
    ] {
        assert!(help.contains(option), "--help lacks {option}:\n{help}");
    }
    let out = spyglass(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn a_bad_config_key_or_value_names_the_key_and_the_file() {
    let dir = temp_dir("cli");
    let file = dir.join("spyglass.toml");
    std::fs::write(&file, "id = \"cam\"\nfsp = 30\n").unwrap();
    let out = spyglass(&["--config", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("fsp") && err.contains(file.to_str().unwrap()),
        "{err}"
    );

    std::fs::write(&file, "fps = \"fast\"\n").unwrap();
    let out = spyglass(&["--config", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("fps") && err.contains(file.to_str().unwrap()),
        "{err}"
    );

    let out = spyglass(&["--size", "1281x720"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--size"));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spyglass_view_reports_frames_size_and_latency_as_json() {
    let broker = Broker::start();
    let daemon = Daemon::start(&broker, &["--size", "320x240"]);
    wait_online(&broker, &daemon).await;
    let url = broker.url();
    let id = daemon.id.clone();
    let out = tokio::task::spawn_blocking(move || {
        spyglass(&[
            "view",
            "--mqtt",
            &url,
            "--id",
            &id,
            "--frames",
            "30",
            "--rtc-bind",
            "127.0.0.1",
            "--mdns",
            "off",
            "--json",
        ])
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["frames"], 30);
    assert_eq!(report["width"], 320);
    assert_eq!(report["height"], 240);
    assert!(report["first_frame_ms"].as_f64().unwrap() > 0.0);
    assert!(
        report["latency_ms"]["median"].as_f64().is_some(),
        "{report}"
    );
}
