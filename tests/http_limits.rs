//! The viewer page's HTTP server under a flood of idle connections (issue 12, item 4): the
//! daemon runs with `ulimit -n 1024` (systemd's default soft limit), the test opens 1,100 idle
//! TCP connections to the page's port; a new viewer still streams, the page still loads, and
//! every idle connection is closed within 30 s. Everything listens on 127.0.0.1.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const IDLE_CONNECTIONS: usize = 1100;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// `GET /` over a fresh connection: the status line and the body.
fn get_page(port: u16) -> std::io::Result<(String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let status = response.lines().next().unwrap_or_default().to_string();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_capped_and_closed_and_viewers_and_the_page_still_work() {
    // This process holds 1,100 sockets: raise its own soft limit to the hard one.
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max.min(65536);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        assert!(
            lim.rlim_cur as usize > IDLE_CONNECTIONS + 200,
            "hard NOFILE limit {} too low for the test",
            lim.rlim_cur
        );
    }
    let broker = Broker::start();
    let dir = temp_dir("http-limits");
    let root = dir.join("web");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(
        root.join("index.html"),
        "<!doctype html><title>spyglass</title>page\n",
    )
    .unwrap();
    let http_port = free_port();
    let id = format!("test/http-{}", rand::random::<u32>());
    let log_path = dir.join("spyglass.log");
    let mut command = Command::new(spyglass_bin());
    command
        .args(["--id", &id, "--mqtt", &broker.url(), "--video", "test"])
        .args(["--size", "320x240", "--bitrate", "600"])
        .args([
            "--rtc-bind",
            "127.0.0.1",
            "--rtc-allow-loopback",
            "on",
            "--mdns",
            "off",
            "--audio",
            "none",
        ])
        .args(["--http", &format!("127.0.0.1:{http_port}")])
        .arg("--web-root")
        .arg(&root)
        .env("RUST_LOG", "spyglass=debug,info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 1024,
                rlim_max: 1024,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().expect("starting spyglass");
    let pid = child.id();
    let _daemon = Stopped {
        child,
        log: log_path,
        dir,
    };
    {
        let topic = format!("{id}/status");
        let mut watcher = TestClient::connect(&broker, std::slice::from_ref(&topic)).await;
        watcher
            .wait_json(&topic, Duration::from_secs(20), |v| v["online"] == true)
            .await;
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let nofile = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap_or_default()
            .to_string();
        eprintln!("daemon: {nofile}");
        assert!(nofile.contains("1024"), "{nofile}");
        let fds_before = open_fds(pid);

        // 1,100 idle connections, opened as fast as the server takes them.
        let opened = Instant::now();
        let mut idle = Vec::with_capacity(IDLE_CONNECTIONS);
        for _ in 0..IDLE_CONNECTIONS {
            let s = TcpStream::connect(("127.0.0.1", http_port)).expect("connect");
            s.set_nonblocking(true).unwrap();
            idle.push(Some(s));
        }
        let fds_during = open_fds(pid);
        let threads = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("Threads:").map(|t| t.trim().to_string()))
            .unwrap_or_default();
        eprintln!(
            "{IDLE_CONNECTIONS} idle connections opened in {} ms; daemon descriptors {fds_before} -> \
             {fds_during}, threads {threads}",
            opened.elapsed().as_millis()
        );

        // A new viewer still streams...
        let report = spyglass::view::run(spyglass::view::ViewOptions {
            id: id.clone(),
            ..view_options_for(&broker)
        })
        .await
        .unwrap();
        assert_eq!(report.frames, 30, "{report:?}");
        // ...and the page still loads.
        let (status, body) = tokio::task::block_in_place(|| get_page(http_port)).expect("GET /");
        eprintln!("GET / during the flood: {status}");
        assert!(status.contains(" 200 "), "{status}");
        assert!(body.contains("spyglass"), "{body}");

        // Every idle connection is closed by the server within 30 s.
        let mut last_closed = Duration::ZERO;
        let deadline = opened + Duration::from_secs(30);
        while idle.iter().any(Option::is_some) && Instant::now() < deadline {
            for slot in idle.iter_mut() {
                let Some(s) = slot else { continue };
                let mut buf = [0u8; 64];
                match s.read(&mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    // EOF, an HTTP error response, or a reset: the server closed it.
                    _ => {
                        *slot = None;
                        last_closed = opened.elapsed();
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let still_open = idle.iter().filter(|s| s.is_some()).count();
        eprintln!(
            "idle connections: the last one closed {:.1} s after they were opened (limit 30 s); \
             {still_open} still open",
            last_closed.as_secs_f64()
        );
        assert_eq!(still_open, 0, "idle connections left open after 30 s");
        let (status, _) = tokio::task::block_in_place(|| get_page(http_port)).expect("GET /");
        assert!(status.contains(" 200 "), "{status}");
        let fds_after = open_fds(pid);
        eprintln!("daemon descriptors after: {fds_after}");
        assert!(fds_after <= fds_before + 10, "{fds_before} -> {fds_after}");
    }
}

/// The daemon process: killed by PID on drop, its log shown when the test failed.
struct Stopped {
    child: std::process::Child,
    log: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- spyglass log ---\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn view_options_for(broker: &Broker) -> spyglass::view::ViewOptions {
    spyglass::view::ViewOptions {
        host: "127.0.0.1".into(),
        port: broker.port,
        username: None,
        password: None,
        transport: Default::default(),
        id: String::new(),
        cid: format!("viewer-{}", rand::random::<u32>()),
        frames: 30,
        timeout: Duration::from_secs(30),
        bind: vec!["127.0.0.1".parse().unwrap()],
        mdns: false,
        own_servers: Default::default(),
        stop: None,
        data_channel: None,
    }
}
