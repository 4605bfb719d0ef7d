"""One test network's life: building it from a spec (namespaces, veths, bridges, routes, NAT,
shaping, servers), its state on disk, the changes a test makes while it runs (link shaping, cuts,
moving a host to another NAT), and tearing it down, including leftovers of runs whose owner died.

Everything lives in namespaces named `<tag>-...`; nothing is created in the caller's namespace,
whose routes are never touched. State: /run/netlab/<tag>/state.json.
"""

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import sys
import time

import nat
import servers
import system
from spec import BROKER_IP, PROBE_IP, TAG_RE, TURN_IP

ROOT = os.environ.get("NETLAB_ROOT", "/run/netlab")
HERE = os.path.dirname(os.path.abspath(__file__))
NS_RE = re.compile(r"^(nl[0-9a-z]{5})-(inet|[a-z][a-z0-9]{0,5}(-r|-e)?)$")
B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


class LabError(RuntimeError):
    pass


def new_tag():
    """'nl' + 5 base-36 characters from our PID and randomness: unique per run, short enough
    that every interface name stays within 15 characters."""
    n = (os.getpid() * 1_000_003 + secrets.randbelow(36**5)) % 36**5
    return "nl" + "".join(B36[(n // 36**i) % 36] for i in range(5))


def state_dir(tag):
    return os.path.join(ROOT, tag)


@contextlib.contextmanager
def global_lock():
    os.makedirs(ROOT, exist_ok=True)
    fd = os.open(os.path.join(ROOT, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def load(tag):
    try:
        with open(os.path.join(state_dir(tag), "state.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def save(state):
    d = state_dir(state["tag"])
    if not os.path.isdir(d):
        raise LabError(f"netlab {state['tag']} was torn down meanwhile")
    tmp = os.path.join(d, "state.json.tmp")
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1)
    os.replace(tmp, os.path.join(d, "state.json"))


# ------------------------------------------------------------------ names


def ifname(tag, name, role):
    n = f"{tag}{name}{role}"
    assert len(n) <= 15, n
    return n


def ns_of(state, node):
    """The namespace of a node: a host name, 'inet', '<site>-router' or '<site>-emu'."""
    ns = state["nodes"].get(node)
    if not ns:
        raise LabError(f"no node {node!r} in netlab {state['tag']} (nodes: {', '.join(sorted(state['nodes']))})")
    return ns


# ------------------------------------------------------------------ building


def build(spec, tag, owner_pid):
    """Create the network for a parsed spec. Returns the state. On any failure everything built
    so far is removed and the error raised."""
    sweep()
    owner_st = system.proc_start_time(owner_pid) if owner_pid else None
    if owner_pid and owner_st is None:
        raise LabError(f"owner pid {owner_pid} does not exist")
    with global_lock():
        d = state_dir(tag)
        if os.path.exists(d) or any(n.startswith(tag + "-") for n in system.netns_list()):
            raise LabError(f"tag {tag} is in use")
        os.makedirs(d)
        os.chmod(d, 0o755)
        state = {
            "tag": tag,
            "state_dir": d,
            "tool": os.path.join(HERE, "netlab.py"),
            "owner": {"pid": owner_pid, "start_time": owner_st},
            "created": time.time(),
            "spec": spec,
            "namespaces": [],
            "procs": [],
            "watchdog": None,
            "nodes": {},
            "sites": {},
            "hosts": {},
            "broker": None,
            "turn": None,
        }
        save(state)
    try:
        if owner_pid:
            pid, st = system.spawn(
                [sys.executable, os.path.join(HERE, "netlab.py"), "watch", tag],
                log=os.path.join(d, "watchdog.log"),
            )
            state["watchdog"] = {"pid": pid, "start_time": st}
            save(state)
        _build(state)
        save(state)
        return state
    except BaseException:
        teardown(tag)
        raise


def _new_ns(state, node, name):
    state["namespaces"].append(name)
    state["nodes"][node] = name
    save(state)  # recorded before it exists, so a teardown from elsewhere finds it
    system.run(["ip", "netns", "add", name])
    system.ip_batch(name, ["link set lo up"])
    settings = {
        "net/ipv6/conf/all/disable_ipv6": 1,
        "net/ipv6/conf/default/disable_ipv6": 1,
        "net/ipv4/conf/all/rp_filter": 0,
        "net/ipv4/conf/default/rp_filter": 0,
    }
    system.sysctl(name, settings)
    return name


def _veth(a_ns, a_if, b_ns, b_if):
    """A veth pair made directly inside its two namespaces (never in ours)."""
    system.run(["ip", "link", "add", a_if, "netns", a_ns, "type", "veth", "peer", "name", b_if, "netns", b_ns])


def _offloads_off(ns, dev):
    """The emulator reads frames with AF_PACKET: frames must be complete (checksums filled in,
    no GSO super-frames) when they reach it."""
    system.run(["ethtool", "-K", dev, "tx", "off", "tso", "off", "gso", "off", "gro", "off"], ns=ns)


def _build(state):
    tag, spec = state["tag"], state["spec"]
    inet = _new_ns(state, "inet", f"{tag}-inet")
    system.sysctl(inet, {"net/ipv4/ip_forward": 1})
    void, voidp = ifname(tag, "void", ""), ifname(tag, "void", "p")
    _veth(inet, void, inet, voidp)
    # The internet's default route leads into a veth whose other end drops everything: sends to
    # addresses nobody routes (a LAN candidate) vanish silently, as on the real internet,
    # instead of failing with "Network is unreachable" (which made coturn close allocations).
    system.ip_batch(
        inet,
        [
            f"addr add {BROKER_IP}/32 dev lo",
            f"addr add {TURN_IP}/32 dev lo",
            f"addr add {PROBE_IP}/32 dev lo",
            f"link set {void} arp off up",
            f"link set {voidp} arp off up",
            f"route add default dev {void}",
        ],
    )
    for site in spec["sites"]:
        _build_site(state, site)
    lan_ranges = []
    for site in spec["sites"]:
        if site["lan"]:
            net = ipaddress.ip_network(site["lan"])
            lan_ranges.append((str(net[0]), str(net[-1])))
    if spec["broker"]:
        state["broker"], proc = servers.start_broker(inet, state["state_dir"])
        state["procs"].append(proc)
        save(state)
    if spec["turn"]:
        state["turn"], proc = servers.start_turn(inet, state["state_dir"], spec["turn"], lan_ranges)
        state["procs"].append(proc)
        save(state)
    state["procs"].append(servers.start_probe(inet, state["state_dir"]))
    for host in state["hosts"].values():
        host["chromium"] = write_chromium_wrapper(state, host)


def _build_site(state, site):
    tag, name = state["tag"], site["name"]
    inet = state["nodes"]["inet"]
    wan = ipaddress.ip_network(site["wan"])
    routed = site["nat"] != "none"
    if routed:
        edge = _new_ns(state, f"{name}-router", f"{tag}-{name}-r")
        system.sysctl(edge, {"net/ipv4/ip_forward": 1, "?net/bridge/bridge-nf-call-iptables": 0})
    else:
        edge = _new_ns(state, name, f"{tag}-{name}")
    w, i = ifname(tag, name, "w"), ifname(tag, name, "i")
    link = site["link"]
    emu = None
    if link and link["emulator"]:
        emu_ns = _new_ns(state, f"{name}-emu", f"{tag}-{name}-e")
        a, z = ifname(tag, name, "a"), ifname(tag, name, "z")
        _veth(edge, w, emu_ns, a)
        _veth(emu_ns, z, inet, i)
        system.ip_batch(emu_ns, [f"link set {a} up", f"link set {z} up"])
        emu = {"ns": emu_ns, "a": a, "z": z}
    else:
        _veth(edge, w, inet, i)
    system.ip_batch(inet, [f"addr add {wan[1]}/{wan.prefixlen} dev {i}", f"link set {i} up"])
    system.ip_batch(
        edge,
        [f"addr add {wan[2]}/{wan.prefixlen} dev {w}", f"link set {w} up", f"route add default via {wan[1]}"],
    )
    st = {
        "name": name,
        "nat": site["nat"],
        "filter": site["filter"],
        "public_ip": site["public_ip"],
        "inet_ip": site["inet_ip"],
        "wan": site["wan"],
        "lan": site["lan"],
        "gateway": site["gateway"],
        "edge_ns": edge,
        "router_ns": edge if routed else None,
        "wan_if": w,
        "inet_if": i,
        "bridge": ifname(tag, name, "b") if routed else None,
        "members": [],
        "dmz": None,
        "link": None,
        "emulator": None,
        "cut": False,
    }
    state["sites"][name] = st
    if routed:
        lan = ipaddress.ip_network(site["lan"])
        system.ip_batch(
            edge,
            [
                f"link add {st['bridge']} type bridge",
                f"addr add {site['gateway']}/{lan.prefixlen} dev {st['bridge']}",
                f"link set {st['bridge']} up",
            ],
        )
        for h in site["hosts"]:
            host_ns = _new_ns(state, h, f"{tag}-{h}")
            hi, hp = ifname(tag, h, "h"), ifname(tag, h, "p")
            _veth(host_ns, hi, edge, hp)
            system.ip_batch(edge, [f"link set {hp} master {st['bridge']}", f"link set {hp} up"])
            ip = state["spec"]["hosts"][h]["ip"]
            system.ip_batch(
                host_ns,
                [f"addr add {ip}/{lan.prefixlen} dev {hi}", f"link set {hi} up", f"route add default via {site['gateway']}"],
            )
            state["hosts"][h] = {"name": h, "ns": host_ns, "site": name, "ip": ip, "iface": hi, "peer_if": hp}
            st["members"].append(h)
        st["dmz"] = st["members"][0] if st["members"] else None
        apply_nat(state, name)
    else:
        state["hosts"][name] = {"name": name, "ns": edge, "site": name, "ip": site["public_ip"], "iface": w, "peer_if": None}
        st["members"].append(name)
    if link:
        if emu:
            _offloads_off(edge, w)
            _offloads_off(inet, i)
            _offloads_off(emu["ns"], emu["a"])
            _offloads_off(emu["ns"], emu["z"])
        st["link"] = {"up": dict(link["up"]), "down": dict(link["down"]), "seed": link["seed"]}
        apply_rates(state, name)
        if emu:
            control = os.path.join(state["state_dir"], f"link-{name}.json")
            stats = os.path.join(state["state_dir"], f"link-{name}.stats.json")
            emu.update(control=control, stats=stats)
            st["emulator"] = emu
            write_control(state, name)
            args = [sys.executable, os.path.join(HERE, "linkemu.py"), emu["a"], emu["z"], control, stats]
            if link["seed"] is not None:
                args.append(str(link["seed"]))
            pid, pst = system.spawn(args, ns=emu["ns"], log=os.path.join(state["state_dir"], f"link-{name}.log"))
            state["procs"].append({"name": f"linkemu-{name}", "pid": pid, "start_time": pst, "node": f"{name}-emu"})
            emu.update(pid=pid)
            deadline = time.monotonic() + 5
            while not os.path.exists(stats):
                if time.monotonic() > deadline or not system.alive(pid, pst):
                    raise LabError(f"the link emulator of {name} did not start: see {state['state_dir']}/link-{name}.log")
                time.sleep(0.02)
    save(state)


def apply_nat(state, site_name):
    st = state["sites"][site_name]
    dmz_ip = state["hosts"][st["dmz"]]["ip"] if st["dmz"] else None
    rules = nat.router_ruleset(st["wan_if"], st["bridge"], st["nat"], st["filter"], dmz_ip)
    system.run(["nft", "-f", "-"], ns=st["router_ns"], input=rules)


def apply_rates(state, site_name):
    """Kernel rate limits: htb over a bfifo of `queue_ms` at that rate, on the site's WAN egress
    (up) and the internet's egress towards the site (down)."""
    st = state["sites"][site_name]
    for direction, ns, dev in (("up", st["edge_ns"], st["wan_if"]), ("down", state["nodes"]["inet"], st["inet_if"])):
        p = st["link"][direction]
        system.run(["tc", "qdisc", "del", "dev", dev, "root"], ns=ns, check=False)
        if not p["rate_kbit"]:
            continue
        rate = float(p["rate_kbit"])
        limit = max(3000, int(rate * 1000 / 8 * p["queue_ms"] / 1000))
        system.run(["tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "1"], ns=ns)
        system.run(
            ["tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb",
             "rate", f"{rate}kbit", "ceil", f"{rate}kbit"],
            ns=ns,
        )
        system.run(["tc", "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", "bfifo", "limit", str(limit)], ns=ns)


def write_control(state, site_name):
    st = state["sites"][site_name]
    emu = st["emulator"]
    ctl = {
        d: {k: st["link"][d][k] for k in ("delay_ms", "jitter_ms", "loss")} for d in ("up", "down")
    }
    ctl["cut"] = False
    tmp = emu["control"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(ctl, f)
    os.replace(tmp, emu["control"])


def write_chromium_wrapper(state, host):
    """An executable that playwright can launch as Chromium: the browser then lives in the
    host's namespace (its PID is the wrapper's: each step execs)."""
    path = os.path.join(state["state_dir"], f"chromium-{host['name']}")
    with open(path, "w") as f:
        f.write(f'#!/bin/sh\nexec ip netns exec {host["ns"]} "${{NETLAB_CHROMIUM:-/usr/bin/chromium}}" "$@"\n')
    os.chmod(path, 0o755)
    return path


# ------------------------------------------------------------------ changes while running


def change_link(state, site_name, direction, rate=None, delay=None, jitter=None, loss=None, queue=None):
    st = state["sites"].get(site_name)
    if not st:
        raise LabError(f"no site {site_name}")
    if st["link"] is None:
        st["link"] = {
            d: {"rate_kbit": None, "delay_ms": 0.0, "jitter_ms": 0.0, "loss": 0.0, "queue_ms": 100.0}
            for d in ("up", "down")
        }
        st["link"]["seed"] = None
    dirs = ("up", "down") if direction == "both" else (direction,)
    if (delay or jitter or loss) and not st["emulator"]:
        raise LabError(f"site {site_name} has no link emulator: ask for one at up (link.emulator: true)")
    for d in dirs:
        p = st["link"][d]
        if rate is not None:
            p["rate_kbit"] = rate or None
        if delay is not None:
            p["delay_ms"] = delay
        if jitter is not None:
            p["jitter_ms"] = jitter
        if loss is not None:
            p["loss"] = loss
        if queue is not None:
            p["queue_ms"] = queue
        if p["jitter_ms"] > p["delay_ms"]:
            raise LabError("jitter above delay")
    if rate is not None or queue is not None:
        apply_rates(state, site_name)
    if st["emulator"]:
        write_control(state, site_name)
    save(state)
    return st["link"]


def set_cut(state, site_name, cut):
    """Cut a site's WAN link completely (both directions, ARP included) or restore it. The
    routers keep their NAT state, as a real link outage would."""
    st = state["sites"].get(site_name)
    if not st:
        raise LabError(f"no site {site_name}")
    table = f"{nat.CUT_TABLE}_{site_name}"
    for ns, dev in ((st["edge_ns"], st["wan_if"]), (state["nodes"]["inet"], st["inet_if"])):
        system.run(["nft", "delete", "table", "netdev", table], ns=ns, check=False)
        if cut:
            system.run(["nft", "-f", "-"], ns=ns, input=nat.cut_ruleset(dev).replace(nat.CUT_TABLE, table))
    st["cut"] = bool(cut)
    save(state)


def move_host(state, host_name, site_name):
    """Move a host to another site's LAN (its veth's router end moves to the other router): the
    host gets a new address there and a new default route, as a phone going from Wi-Fi to LTE."""
    host = state["hosts"].get(host_name)
    if not host:
        raise LabError(f"no host {host_name}")
    dst = state["sites"].get(site_name)
    if not dst:
        raise LabError(f"no site {site_name}")
    if not dst["router_ns"] or not host["peer_if"]:
        raise LabError("only hosts behind a router move, and only to a site with a router")
    src = state["sites"][host["site"]]
    if src is dst:
        return host
    lan = ipaddress.ip_network(dst["lan"])
    used = {state["hosts"][m]["ip"] for m in dst["members"]}
    ip = next(str(lan[k]) for k in range(10, lan.num_addresses - 1) if str(lan[k]) not in used)
    hp, hi = host["peer_if"], host["iface"]
    system.ip_batch(src["router_ns"], [f"link set {hp} nomaster", f"link set {hp} netns {dst['router_ns']}"])
    system.ip_batch(dst["router_ns"], [f"link set {hp} master {dst['bridge']}", f"link set {hp} up"])
    system.ip_batch(
        host["ns"],
        [
            f"addr flush dev {hi}",
            f"addr add {ip}/{lan.prefixlen} dev {hi}",
            f"route replace default via {dst['gateway']}",
        ],
    )
    src["members"].remove(host_name)
    dst["members"].append(host_name)
    host.update(site=site_name, ip=ip)
    if src["dmz"] == host_name:
        src["dmz"] = src["members"][0] if src["members"] else None
        apply_nat(state, src["name"])
    if dst["dmz"] is None:
        dst["dmz"] = host_name
        apply_nat(state, site_name)
    save(state)
    return host


def track(state, pid, node, name):
    st = system.proc_start_time(pid)
    if st is None:
        raise LabError(f"no process {pid}")
    state["procs"].append({"name": name, "pid": pid, "start_time": st, "node": node})
    save(state)


# ------------------------------------------------------------------ tearing down


def teardown(tag, from_watchdog=False):
    """Remove everything of run `tag`: its processes (by PID), every process still inside its
    namespaces, the namespaces (with their veths, bridges, nftables tables and qdiscs) and the
    state directory. Idempotent."""
    if not TAG_RE.match(tag):
        raise LabError(f"{tag!r} is not a netlab tag")
    with global_lock():
        state = load(tag) or {}
        namespaces = set(state.get("namespaces", []))
        namespaces |= {n for n in system.netns_list() if NS_RE.match(n) and NS_RE.match(n).group(1) == tag}
        procs = [p for p in state.get("procs", []) if system.alive(p["pid"], p["start_time"])]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p["pid"], signal.SIGTERM)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and any(system.alive(p["pid"], p["start_time"]) for p in procs):
            system.reap()
            time.sleep(0.02)
        for p in procs:
            system.stop(p["pid"], p["start_time"], grace=0)
        existing = set(system.netns_list())
        for ns in sorted(namespaces & existing):
            for _ in range(3):
                pids = system.netns_pids(ns)
                if not pids:
                    break
                for pid in pids:
                    system.stop(pid, system.proc_start_time(pid), grace=1.0)
        problems = []
        for ns in sorted(namespaces & existing):
            try:
                system.run(["ip", "netns", "del", ns])
            except system.SystemError_ as e:
                problems.append(str(e))
        shutil.rmtree(state_dir(tag), ignore_errors=True)
        wd = state.get("watchdog")
        if wd and not from_watchdog:
            system.stop(wd["pid"], wd["start_time"], grace=1.0)
        if problems:
            raise LabError("; ".join(problems))


def stale_tags():
    tags = set()
    if os.path.isdir(ROOT):
        for t in os.listdir(ROOT):
            if not TAG_RE.match(t):
                continue
            s = load(t)
            owner = (s or {}).get("owner") or {}
            if s is None:
                # No state file: a directory being created (under the lock) or a broken one.
                if time.time() - os.path.getmtime(state_dir(t)) > 60:
                    tags.add(t)
            elif owner.get("pid") and not system.alive(owner["pid"], owner["start_time"]):
                tags.add(t)
    for n in system.netns_list():
        m = NS_RE.match(n)
        if m and not os.path.isdir(state_dir(m.group(1))):
            tags.add(m.group(1))
    return sorted(tags)


def sweep():
    """Tear down runs whose owner process is gone, and namespaces of ours without a state."""
    removed = []
    for tag in stale_tags():
        try:
            teardown(tag)
            removed.append(tag)
        except LabError as e:
            sys.stderr.write(f"netlab: sweeping {tag}: {e}\n")
    return removed


def watch(tag):
    """The watchdog: wait for the owner to exit, then tear the run down. Ends by itself when the
    run is torn down by its owner."""
    state = load(tag)
    if not state:
        return
    owner = state["owner"]
    while True:
        if not os.path.isdir(state_dir(tag)):
            return
        if system.pidfd_wait(owner["pid"], 1.0) or not system.alive(owner["pid"], owner["start_time"]):
            break
    if os.path.isdir(state_dir(tag)):
        teardown(tag, from_watchdog=True)
