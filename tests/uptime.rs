//! Long uptime, compressed (issue 12): the daemon's realtime clock is moved forward by days while
//! it runs, as months of uptime or an NTP step after a boot without a real-time clock would move
//! it. `tests/clockshift/clockshift.c` (an `LD_PRELOAD` library, built here with the host's C
//! compiler; `tests/qemu-user.sh` runs the same check on the ARM builds under qemu-user) shifts
//! CLOCK_REALTIME only: timers and monotonic time run on. The DTLS certificate is renewed when
//! due, new viewers are answered after every step, and a viewer connected before the first step
//! streams through all of them.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use support::*;

const DAY: u64 = 86400;

/// Build the clock-shifting library for this machine.
fn build_clockshift(dir: &Path) -> PathBuf {
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clockshift/clockshift.c");
    let out = dir.join("clockshift.so");
    let status = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&out)
        .arg(source)
        .arg("-ldl")
        .status()
        .expect("running cc (apt-get install build-essential)");
    assert!(status.success(), "building {source}");
    out
}

/// The date of the daemon's last log line (tracing stamps lines with the realtime clock), as
/// `YYYY-MM-DD`.
fn last_logged_date(daemon: &Daemon) -> Option<String> {
    let log = daemon.log();
    log.lines().rev().find_map(|line| {
        // The timestamp may sit inside ANSI colour codes: find `YYYY-MM-DDT`.
        let bytes = line.as_bytes();
        (0..bytes.len().saturating_sub(10)).find_map(|i| {
            let d = &bytes[i..i + 11];
            let digits = [0, 1, 2, 3, 5, 6, 8, 9]
                .iter()
                .all(|&k| d[k].is_ascii_digit());
            (digits && d[4] == b'-' && d[7] == b'-' && d[10] == b'T')
                .then(|| line[i..i + 10].to_string())
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn days_of_clock_steps_renew_the_certificate_and_viewers_keep_streaming() {
    let broker = Broker::start();
    let dir = temp_dir("uptime");
    let shim = build_clockshift(&dir);
    let offset = dir.join("offset");
    std::fs::write(&offset, "0").unwrap();
    let daemon = Daemon::start_with_env(
        &broker,
        &[],
        &[
            ("LD_PRELOAD", shim.to_str().unwrap()),
            ("CLOCKSHIFT_FILE", offset.to_str().unwrap()),
        ],
    );
    wait_online(&broker, &daemon).await;
    let date_before = last_logged_date(&daemon);

    // A viewer that stays connected through every step.
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut options = view_options(&broker, &daemon, u64::MAX);
    options.timeout = Duration::from_secs(300);
    options.stop = Some(Arc::clone(&stop));
    let long = tokio::spawn(spyglass::view::run(options));

    let first = spyglass::view::run(view_options(&broker, &daemon, 10))
        .await
        .unwrap();
    assert_eq!(first.frames, 10, "{:?}", first.error);
    // 3 days: past rtc's 48 h on 32-bit ARM. 25 days: within a week of our 30-day validity, so
    // renewed. 52 days: within a week of the renewed one's end, renewed again. 400 days: long
    // expired, renewed.
    let steps = [3, 25, 52, 400];
    let mut renewals = Vec::new();
    let mut last_step = std::time::Instant::now();
    for days in steps {
        std::fs::write(&offset, (days * DAY).to_string()).unwrap();
        last_step = std::time::Instant::now();
        // The library re-reads the file at most once a second; the daemon's timer ticks twice.
        tokio::time::sleep(Duration::from_millis(1600)).await;
        let fresh = spyglass::view::run(view_options(&broker, &daemon, 10))
            .await
            .unwrap();
        assert!(fresh.error.is_none(), "{days} days on: {:?}", fresh.error);
        assert_eq!(fresh.frames, 10, "{days} days on: {:?}", fresh.error);
        renewals.push(daemon.log().matches("DTLS certificate renewed").count());
    }
    let date_after = last_logged_date(&daemon);
    stop.notify_one();
    let report = long.await.unwrap().unwrap();
    eprintln!(
        "clock moved {steps:?} days ahead: daemon log date {date_before:?} -> {date_after:?}; certificate \
         renewals after each step {renewals:?}; a new viewer got 10 frames after every step; the \
         viewer connected throughout got {} frames, {} counter gaps, {} resets",
        report.frames, report.counter_gaps, report.counter_resets
    );
    assert!(
        date_before.is_some() && date_after > date_before,
        "the daemon's clock moved: {date_before:?} -> {date_after:?}"
    );
    assert_eq!(renewals, [0, 1, 2, 3]);
    assert!(report.error.is_none(), "{:?}", report.error);
    // It streamed through every step: frames arrived after the last one, and the source never
    // restarted. (Counter gaps, printed above, come from CPU load, not from the clock.)
    assert!(report.frames > 150, "{}", report.frames);
    assert!(
        report.luma.last().is_some_and(|(at, _)| *at > last_step),
        "no frame after the last clock step"
    );
    assert_eq!(report.counter_resets, 0);
    assert!(!daemon.log().contains("answering `internal`"));
    let _ = std::fs::remove_dir_all(dir);
}
