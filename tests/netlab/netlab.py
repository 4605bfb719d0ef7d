#!/usr/bin/env python3
"""netlab: a real test network of Linux namespaces for spyglass's field tests (NAT, TURN, loss,
delay, narrow links). See tests/netlab/README.md. Needs root, iproute2, nftables, coturn,
mosquitto, ethtool, openssl; python3's standard library only.

  netlab.py up [--spec JSON|@FILE] [--site NAME:NAT[,k=v...]]... [--tag TAG] [--owner PID]
               [--check full|basic|none] [--keep-invalid]
  netlab.py down TAG                      remove everything of that run (idempotent)
  netlab.py status TAG                    the JSON of `up`, as it is now
  netlab.py check TAG [--basic]           run the self-check again
  netlab.py exec TAG NODE -- CMD...       run CMD in NODE's namespace (foreground, exit code kept)
  netlab.py spawn TAG NODE [--log FILE] [--name N] -- CMD...   start in the background, tracked
  netlab.py track TAG PID [--node N] [--name N]   have `down` stop a process you started
  netlab.py kill TAG PID                  stop a tracked process (SIGTERM, then SIGKILL)
  netlab.py link TAG SITE [--dir up|down|both] [--rate KBIT] [--delay MS] [--jitter MS]
                 [--loss P] [--queue MS]  change the site's link shaping now (--rate 0: no limit)
  netlab.py cut TAG SITE [--for SECONDS]  cut the site's link (and restore after SECONDS)
  netlab.py restore TAG SITE              restore a cut link
  netlab.py move TAG HOST SITE            move a host to another site's LAN (new address, new NAT)
  netlab.py punch TAG HOST_A HOST_B       UDP hole punch between two hosts: {"ok": ...}
  netlab.py turn TAG HOST --transport udp|tcp|tls [--username U --password P]
                                          allocate and relay through coturn from HOST
  netlab.py stats TAG SITE                the link emulator's counters
  netlab.py sweep                         remove runs whose owner process is gone

NODE: a host name, 'inet', '<site>-router' or '<site>-emu'. Output: JSON on stdout. Errors: a
message on stderr and exit status 1; `up` and `check` say "not valid: ..." and exit with 3 when
the network is not what was asked.
"""

import argparse
import json
import os
import select
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import lab  # noqa: E402
import probe  # noqa: E402
import selfcheck  # noqa: E402
import servers  # noqa: E402
import spec as specmod  # noqa: E402
import stun  # noqa: E402
import system  # noqa: E402
from spec import PROBE_IP, PROBE_PORTS, TURN_IP, TURN_PORT, TURN_TLS_PORT  # noqa: E402

EXIT_ERROR, EXIT_NOT_VALID = 1, 3


def public(state, checks=None):
    """What a test needs, from the state."""
    tool = [sys.executable, state["tool"]]
    sites = {}
    for name, s in state["sites"].items():
        emu = s["emulator"]
        sites[name] = {
            "nat": s["nat"],
            "filter": s["filter"],
            "public_ip": s["public_ip"],
            "lan": s["lan"],
            "gateway": s["gateway"],
            "router_ns": s["router_ns"],
            "hosts": list(s["members"]),
            "link": s["link"],
            "cut": s["cut"],
            "emulator": emu and {k: emu[k] for k in ("ns", "control", "stats", "pid")},
        }
    hosts = {}
    for name, h in state["hosts"].items():
        site = state["sites"][h["site"]]
        hosts[name] = {
            "ns": h["ns"],
            "ip": h["ip"],
            "site": h["site"],
            "iface": h["iface"],
            "gateway": site["gateway"] or site["inet_ip"],
            "public_ip": site["public_ip"],
            "nat": site["nat"],
            "exec": ["ip", "netns", "exec", h["ns"]],
            "chromium": h.get("chromium"),
        }
    return {
        "tag": state["tag"],
        "state_dir": state["state_dir"],
        "tool": tool,
        "namespaces": state["nodes"],
        "broker": state["broker"],
        "turn": state["turn"],
        "probe": {"ip": PROBE_IP, "ports": PROBE_PORTS},
        "sites": sites,
        "hosts": hosts,
        "checks": checks if checks is not None else state.get("checks"),
    }


def emit(obj):
    sys.stdout.write(json.dumps(obj, indent=1) + "\n")
    sys.stdout.flush()


def need(tag):
    state = lab.load(tag)
    if not state:
        raise lab.LabError(f"no netlab run {tag} (torn down, or never made)")
    return state


def cmd_up(a):
    raw = {}
    if a.spec:
        text = a.spec
        if text.startswith("@"):
            with open(text[1:]) as f:
                text = f.read()
        raw = json.loads(text)
    if a.site:
        raw.setdefault("sites", [])
        raw["sites"] = list(raw["sites"]) + [specmod.parse_site_arg(s) for s in a.site]
    spec = specmod.parse(raw)
    if os.geteuid() != 0:
        raise lab.LabError("netlab needs root (namespaces, nftables, tc)")
    tag = a.tag or lab.new_tag()
    if not specmod.TAG_RE.match(tag):
        raise lab.LabError(f"--tag {tag}: 'nl' and 5 of [0-9a-z]")
    owner = a.owner if a.owner is not None else os.getppid()
    state = lab.build(spec, tag, owner)
    try:
        checks = None if a.check == "none" else selfcheck.run(state, links=a.check == "full")
    except selfcheck.NotValid as e:
        state["checks"] = e.report
        lab.save(state)
        emit({**public(state), "valid": False, "error": str(e)})
        if not a.keep_invalid:
            lab.teardown(tag)
        sys.stderr.write(f"netlab: {e}\n")
        return EXIT_NOT_VALID
    state["checks"] = checks
    lab.save(state)
    emit({**public(state), "valid": True})
    return 0


def cmd_down(a):
    lab.teardown(a.tag)
    emit({"tag": a.tag, "down": True})
    return 0


def cmd_status(a):
    emit(public(need(a.tag)))
    return 0


def cmd_check(a):
    state = need(a.tag)
    try:
        checks = selfcheck.run(state, links=not a.basic)
    except selfcheck.NotValid as e:
        emit({"valid": False, "error": str(e), "checks": e.report})
        sys.stderr.write(f"netlab: {e}\n")
        return EXIT_NOT_VALID
    emit({"valid": True, "checks": checks})
    return 0


def cmd_exec(a):
    ns = lab.ns_of(need(a.tag), a.node)
    cmd = a.cmd
    if not cmd:
        raise lab.LabError("exec: no command")
    os.execvp("ip", ["ip", "netns", "exec", ns] + cmd)


def cmd_spawn(a):
    state = need(a.tag)
    ns = lab.ns_of(state, a.node)
    cmd = a.cmd
    if not cmd:
        raise lab.LabError("spawn: no command")
    log = a.log or os.path.join(state["state_dir"], f"spawn-{os.path.basename(cmd[0])}-{time.time_ns()}.log")
    pid, st = system.spawn(cmd, ns=ns, log=log)
    time.sleep(0.1)
    code = system.exit_code(pid)
    if code:
        with open(log, errors="replace") as f:
            raise lab.LabError(f"{' '.join(cmd)} exited at once with status {code}: {f.read()[-500:].strip()}")
    state["procs"].append({"name": a.name or os.path.basename(cmd[0]), "pid": pid, "start_time": st, "node": a.node})
    lab.save(state)
    emit({"pid": pid, "log": log, "ns": ns})
    return 0


def cmd_track(a):
    state = need(a.tag)
    lab.track(state, a.pid, a.node, a.name or str(a.pid))
    emit({"pid": a.pid, "tracked": True})
    return 0


def cmd_kill(a):
    state = need(a.tag)
    for p in state["procs"]:
        if p["pid"] == a.pid:
            system.stop(p["pid"], p["start_time"])
            emit({"pid": a.pid, "stopped": True})
            return 0
    raise lab.LabError(f"pid {a.pid} is not tracked by netlab {a.tag}")


def cmd_link(a):
    state = need(a.tag)
    link = lab.change_link(state, a.site, a.dir, rate=a.rate, delay=a.delay, jitter=a.jitter, loss=a.loss, queue=a.queue)
    emit({"site": a.site, "link": link})
    return 0


def cmd_cut(a):
    state = need(a.tag)
    lab.set_cut(state, a.site, True)
    if a.for_seconds is not None:
        time.sleep(a.for_seconds)
        lab.set_cut(need(a.tag), a.site, False)
    emit({"site": a.site, "cut": a.for_seconds is None})
    return 0


def cmd_restore(a):
    lab.set_cut(need(a.tag), a.site, False)
    emit({"site": a.site, "cut": False})
    return 0


def cmd_move(a):
    state = need(a.tag)
    host = lab.move_host(state, a.host, a.site)
    out = public(state)["hosts"][a.host]
    if not a.no_check:
        with system.in_netns(host["ns"]):
            sock = probe._udp()
            b = probe.nat_behaviour(sock, PROBE_IP)
            sock.close()
        out["nat_observed"] = probe.classify(b)
        out["mapped"] = b["mapped_a"]
    emit(out)
    return 0


def cmd_punch(a):
    """Hole punching as ICE does it: each side learns its mapping from a reflector, both send to
    the other's mapping at once, and each answers whatever reaches it at the address it came
    from. OK when both sides heard the other."""
    state = need(a.tag)
    sides = []
    for name in (a.host_a, a.host_b):
        ns = lab.ns_of(state, name)
        with system.in_netns(ns):
            s = probe._udp()
        s.setblocking(True)
        nonce = os.urandom(8)
        ans = probe._ask(s, (PROBE_IP, PROBE_PORTS["reflect_a"]), b"M" + nonce, b"M" + nonce)
        mapped = ans.decode() if ans else None
        sides.append({"name": name, "sock": s, "mapped": mapped, "heard": None, "answered_from": None})
    if not all(x["mapped"] for x in sides):
        emit({"ok": False, "error": "no mapping learned", **{x["name"]: {"mapped": x["mapped"]} for x in sides}})
        return 0
    for x, y in ((sides[0], sides[1]), (sides[1], sides[0])):
        ip, port = y["mapped"].rsplit(":", 1)
        x["target"] = (ip, int(port))
        x["sock"].setblocking(False)
    end = time.monotonic() + a.seconds
    next_send = 0.0
    while time.monotonic() < end and not all(x["heard"] for x in sides):
        now = time.monotonic()
        if now >= next_send:
            for x in sides:
                x["sock"].sendto(b"P" + x["name"].encode(), x["target"])
            next_send = now + 0.05
        r, _, _ = select.select([x["sock"] for x in sides], [], [], 0.05)
        for x in sides:
            if x["sock"] in r:
                while True:
                    try:
                        data, addr = x["sock"].recvfrom(2048)
                    except BlockingIOError:
                        break
                    other = [y for y in sides if y is not x][0]["name"].encode()
                    if data in (b"P" + other, b"A" + other):
                        x["heard"] = f"{addr[0]}:{addr[1]}"
                        if data[:1] == b"P":
                            x["sock"].sendto(b"A" + x["name"].encode(), addr)
    out = {"ok": all(x["heard"] for x in sides)}
    for x in sides:
        out[x["name"]] = {"mapped": x["mapped"], "sent_to": "%s:%d" % x["target"], "heard_from": x["heard"]}
        x["sock"].close()
    emit(out)
    return 0


def cmd_turn(a):
    state = need(a.tag)
    turn = state["turn"]
    if not turn:
        raise lab.LabError("this run has no TURN server")
    user, password = a.username, a.password
    if user is None:
        user, password = selfcheck.turn_credentials(turn)
    port = TURN_TLS_PORT if a.transport == "tls" else TURN_PORT
    with system.in_netns(lab.ns_of(state, a.host)):
        try:
            r = stun.allocate_and_relay(
                a.transport, (TURN_IP, port), user, password, (PROBE_IP, PROBE_PORTS["echo"]), ca_file=turn["ca"]
            )
            emit({"ok": True, "transport": a.transport, **r})
            return 0
        except (stun.StunError, OSError) as e:
            emit({"ok": False, "transport": a.transport, "error": str(e) or type(e).__name__})
            return EXIT_ERROR


def cmd_stats(a):
    state = need(a.tag)
    site = state["sites"].get(a.site)
    if not site or not site["emulator"]:
        raise lab.LabError(f"site {a.site} has no link emulator")
    emit(selfcheck.read_stats(site["emulator"]))
    return 0


def cmd_sweep(a):
    emit({"removed": lab.sweep()})
    return 0


def cmd_watch(a):
    lab.watch(a.tag)
    return 0


def parser():
    p = argparse.ArgumentParser(prog="netlab.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("up")
    s.add_argument("--spec")
    s.add_argument("--site", action="append")
    s.add_argument("--tag")
    s.add_argument("--owner", type=int, help="tear down when this PID exits (default: our parent; 0: never)")
    s.add_argument("--check", choices=("full", "basic", "none"), default="full")
    s.add_argument("--keep-invalid", action="store_true", help="leave an invalid network up for inspection")
    s.set_defaults(fn=cmd_up)
    for name, fn in (("down", cmd_down), ("status", cmd_status), ("watch", cmd_watch)):
        s = sub.add_parser(name)
        s.add_argument("tag")
        s.set_defaults(fn=fn)
    s = sub.add_parser("check")
    s.add_argument("tag")
    s.add_argument("--basic", action="store_true")
    s.set_defaults(fn=cmd_check)
    for name, fn in (("exec", cmd_exec), ("spawn", cmd_spawn)):
        s = sub.add_parser(name)
        s.add_argument("tag")
        s.add_argument("node")
        if name == "spawn":
            s.add_argument("--log")
            s.add_argument("--name")
        s.add_argument("cmd", nargs="*")
        s.set_defaults(fn=fn)
    s = sub.add_parser("track")
    s.add_argument("tag")
    s.add_argument("pid", type=int)
    s.add_argument("--node", default="?")
    s.add_argument("--name")
    s.set_defaults(fn=cmd_track)
    s = sub.add_parser("kill")
    s.add_argument("tag")
    s.add_argument("pid", type=int)
    s.set_defaults(fn=cmd_kill)
    s = sub.add_parser("link")
    s.add_argument("tag")
    s.add_argument("site")
    s.add_argument("--dir", choices=("up", "down", "both"), default="both")
    for opt in ("rate", "delay", "jitter", "loss", "queue"):
        s.add_argument(f"--{opt}", type=float)
    s.set_defaults(fn=cmd_link)
    s = sub.add_parser("cut")
    s.add_argument("tag")
    s.add_argument("site")
    s.add_argument("--for", dest="for_seconds", type=float)
    s.set_defaults(fn=cmd_cut)
    s = sub.add_parser("restore")
    s.add_argument("tag")
    s.add_argument("site")
    s.set_defaults(fn=cmd_restore)
    s = sub.add_parser("move")
    s.add_argument("tag")
    s.add_argument("host")
    s.add_argument("site")
    s.add_argument("--no-check", action="store_true")
    s.set_defaults(fn=cmd_move)
    s = sub.add_parser("punch")
    s.add_argument("tag")
    s.add_argument("host_a")
    s.add_argument("host_b")
    s.add_argument("--seconds", type=float, default=3.0)
    s.set_defaults(fn=cmd_punch)
    s = sub.add_parser("turn")
    s.add_argument("tag")
    s.add_argument("host")
    s.add_argument("--transport", choices=("udp", "tcp", "tls"), default="udp")
    s.add_argument("--username")
    s.add_argument("--password")
    s.set_defaults(fn=cmd_turn)
    s = sub.add_parser("stats")
    s.add_argument("tag")
    s.add_argument("site")
    s.set_defaults(fn=cmd_stats)
    s = sub.add_parser("sweep")
    s.set_defaults(fn=cmd_sweep)
    return p


def main(argv):
    # The command of exec/spawn follows `--` and keeps its own options.
    tail = None
    if "--" in argv:
        i = argv.index("--")
        argv, tail = argv[:i], argv[i + 1 :]
    a = parser().parse_args(argv)
    if tail is not None:
        if a.command not in ("exec", "spawn"):
            parser().error("`--` only comes before the command of exec or spawn")
        a.cmd = a.cmd + tail
    try:
        return a.fn(a)
    except (lab.LabError, servers.ServerError, specmod.SpecError, system.SystemError_, json.JSONDecodeError, OSError) as e:
        sys.stderr.write(f"netlab {a.command}: {e}\n")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
