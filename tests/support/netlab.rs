//! The namespace test network for integration tests: a thin wrapper around
//! `tests/netlab/netlab.py` (see tests/netlab/README.md). `Netlab::up` builds a network from a
//! JSON spec and returns what the tool printed; dropping the `Netlab` (also while a test
//! panics) tears everything down, and the tool's own watchdog does it if this process dies
//! without unwinding (abort, SIGKILL).

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// A running test network.
pub struct Netlab {
    pub tag: String,
    /// The JSON that `netlab.py up` printed: namespaces, addresses, broker and TURN URLs...
    pub info: Value,
    torn_down: bool,
}

/// The tool's script.
pub fn tool_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/netlab/netlab.py")
}

/// `python3 tests/netlab/netlab.py ARGS...`
pub fn tool(args: &[&str]) -> Command {
    let mut c = Command::new("python3");
    c.arg(tool_path()).args(args);
    c
}

fn new_tag() -> String {
    const B36: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut n = (std::process::id() as u64)
        .wrapping_mul(1_000_003)
        .wrapping_add(rand::random::<u32>() as u64)
        % 36u64.pow(5);
    let mut tag = String::from("nl");
    for _ in 0..5 {
        tag.push(B36[(n % 36) as usize] as char);
        n /= 36;
    }
    tag
}

fn run_json(mut cmd: Command) -> Result<Value, String> {
    let out: Output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running netlab.py: {e} (python3 missing?)"))?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let value: Option<Value> = serde_json::from_slice(&out.stdout).ok();
    if !out.status.success() {
        let msg = value
            .as_ref()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(stderr);
        return Err(msg);
    }
    value.ok_or_else(|| format!("netlab.py printed no JSON; stderr: {stderr}"))
}

impl Netlab {
    /// Build the network described by `spec` (see the README) and run the tool's full
    /// self-check. `Err` carries the tool's message: "not valid: ..." when the network is not
    /// what was asked, anything else when it could not be built. Nothing is left behind either way.
    pub fn up(spec: Value) -> Result<Netlab, String> {
        Netlab::up_with(spec, "full")
    }

    /// Like [`Netlab::up`], with the self-check `full`, `basic` (no link measurements) or `none`.
    pub fn up_with(spec: Value, check: &str) -> Result<Netlab, String> {
        let tag = new_tag();
        let owner = std::process::id().to_string();
        let spec_text = spec.to_string();
        let cmd = tool(&[
            "up", "--tag", &tag, "--owner", &owner, "--check", check, "--spec", &spec_text,
        ]);
        match run_json(cmd) {
            Ok(info) => Ok(Netlab {
                tag,
                info,
                torn_down: false,
            }),
            Err(e) => {
                // The tool removes what it built on failure; make sure even if it was killed.
                let _ = tool(&["down", &tag]).output();
                Err(e)
            }
        }
    }

    /// The namespace of a node: a host name, "inet", "<site>-router" or "<site>-emu".
    pub fn ns(&self, node: &str) -> String {
        self.info["namespaces"][node]
            .as_str()
            .unwrap_or_else(|| panic!("netlab {} has no node {node}", self.tag))
            .to_string()
    }

    /// A host's entry (ns, ip, site, gateway, public_ip, nat, chromium...).
    pub fn host(&self, name: &str) -> &Value {
        let h = &self.info["hosts"][name];
        assert!(h.is_object(), "netlab {} has no host {name}", self.tag);
        h
    }

    /// A host's address on its LAN (or on the internet side for a host without NAT).
    pub fn ip(&self, host: &str) -> String {
        self.host(host)["ip"].as_str().unwrap().to_string()
    }

    /// `ip netns exec NS program`: a command that runs inside `node`'s namespace. `ip` execs the
    /// program in place, so the child's PID is the program's own. Everything still running in
    /// the network's namespaces is stopped at tear-down.
    pub fn command(&self, node: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(node), program]);
        c
    }

    /// Run a tool subcommand for this network and parse its JSON.
    pub fn call(&self, args: &[&str]) -> Result<Value, String> {
        let mut full = vec![args[0], self.tag.as_str()];
        full.extend_from_slice(&args[1..]);
        run_json(tool(&full))
    }

    fn must(&self, args: &[&str]) -> Value {
        self.call(args)
            .unwrap_or_else(|e| panic!("netlab {}: {e}", args.join(" ")))
    }

    /// Change a site's link now: `lab.link("v1", &["--delay", "50", "--loss", "0.02"])`.
    pub fn link(&self, site: &str, changes: &[&str]) -> Value {
        let mut args = vec!["link", site];
        args.extend_from_slice(changes);
        self.must(&args)
    }

    /// Cut a site's link completely (both directions) until [`Netlab::restore`].
    pub fn cut(&self, site: &str) {
        self.must(&["cut", site]);
    }

    pub fn restore(&self, site: &str) {
        self.must(&["restore", site]);
    }

    /// Move a host to another site's LAN; returns its new entry (ip, site, nat_observed...).
    pub fn move_host(&self, host: &str, site: &str) -> Value {
        self.must(&["move", host, site])
    }

    /// UDP hole punch between two hosts through their NATs: `{"ok": bool, ...}`.
    pub fn punch(&self, a: &str, b: &str) -> Value {
        self.must(&["punch", a, b])
    }

    /// A TURN allocation from `host` over `transport` (udp, tcp, tls) and a datagram relayed to an
    /// echo peer and back: Ok({relayed, mapped, echo_ms}) or Err(why).
    pub fn turn(
        &self,
        host: &str,
        transport: &str,
        credentials: Option<(&str, &str)>,
    ) -> Result<Value, String> {
        let mut args = vec!["turn", host, "--transport", transport];
        if let Some((u, p)) = credentials {
            args.extend_from_slice(&["--username", u, "--password", p]);
        }
        let mut full = vec![args[0], self.tag.as_str()];
        full.extend_from_slice(&args[1..]);
        let out = tool(&full)
            .output()
            .map_err(|e| format!("running netlab.py: {e}"))?;
        let v: Value = serde_json::from_slice(&out.stdout)
            .map_err(|_| String::from_utf8_lossy(&out.stderr).to_string())?;
        if v["ok"] == true {
            Ok(v)
        } else {
            Err(v["error"].as_str().unwrap_or("?").to_string())
        }
    }

    /// Run the self-check again (after changing the links): Ok(report) or Err("not valid: ...").
    pub fn check(&self) -> Result<Value, String> {
        self.call(&["check"]).map(|v| v["checks"].clone())
    }

    /// The link emulator's counters for a site.
    pub fn stats(&self, site: &str) -> Value {
        self.must(&["stats", site])
    }

    /// Tear everything down now (idempotent; Drop does it too).
    pub fn down(&mut self) {
        if !self.torn_down {
            self.torn_down = true;
            if let Err(e) = run_json(tool(&["down", &self.tag])) {
                eprintln!("netlab down {}: {e}", self.tag);
            }
        }
    }
}

impl Drop for Netlab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "netlab {}: tearing down after a panic (state: {})",
                self.tag, self.info["state_dir"]
            );
        }
        self.down();
    }
}
