"""What a test asks for: the sites (NAT routers or directly attached hosts), their link shaping,
the servers, and the address plan derived from that. Pure data: nothing here touches the system.

A spec is JSON:

    {"sites": [{"name": "dev", "nat": "cone"},
               {"name": "v1", "nat": "symmetric", "filter": "turn-tcp-only",
                "link": {"rate_kbit": 500, "delay_ms": 40, "jitter_ms": 5, "loss": 0.03}},
               {"name": "v2", "nat": "none"},
               {"name": "lte", "nat": "symmetric", "hosts": []}],
     "broker": true,
     "turn": {"auth": "lt"}}

or the command line's short form `--site NAME:NAT[,key=value...]` (see netlab.py --help).
"""

import ipaddress
import re

NAT_KINDS = ("cone", "port-restricted", "symmetric", "none")
FILTERS = (None, "turn-tcp-only")
TURN_AUTHS = ("lt", "secret")

# Servers in the internet namespace, each on its own address (on the namespace's loopback).
BROKER_IP = "10.0.0.1"
TURN_IP = "10.0.0.2"
PROBE_IP = "10.0.0.3"
BROKER_PORT = 1883
BROKER_WS_PORT = 9001
TURN_PORT = 3478
TURN_TLS_PORT = 5349
# The probe server's UDP ports: two reflectors (mapping), an unsolicited sender (filtering),
# an echo (RTT and loss), a rate endpoint (throughput both ways).
PROBE_PORTS = {"reflect_a": 7001, "reflect_b": 7002, "unsolicited": 7003, "echo": 7004, "rate": 7005}
# A TCP echo port on the probe address, for filter checks of TCP.
PROBE_TCP_PORT = 7006

NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,5}$")
TAG_RE = re.compile(r"^nl[0-9a-z]{5}$")
LINK_KEYS = ("rate_kbit", "delay_ms", "jitter_ms", "loss", "queue_ms")


class SpecError(ValueError):
    pass


def wan_subnet(index):
    """The point-to-point 'public' subnet of the index-th site (1-based): inet is .1, the site .2."""
    return ipaddress.ip_network(f"10.100.{index}.0/24")


def default_lan(index):
    return ipaddress.ip_network(f"10.200.{index}.0/24")


def _number(v, key, lo, hi):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise SpecError(f"link.{key}: a number, not {v!r}")
    if not lo <= v <= hi:
        raise SpecError(f"link.{key}: {v} is outside {lo}..{hi}")
    return v


def parse_link(raw, where):
    """A link spec: rate (kernel htb), delay/jitter/loss (the user-space emulator) for both
    directions, with `up` / `down` overriding per direction. Returns the normalised form."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise SpecError(f"{where}.link: an object")
    unknown = set(raw) - set(LINK_KEYS) - {"up", "down", "seed", "emulator"}
    if unknown:
        raise SpecError(f"{where}.link: unknown keys {sorted(unknown)}")
    base = {k: raw[k] for k in LINK_KEYS if k in raw}
    dirs = {}
    for d in ("up", "down"):
        over = raw.get(d, {})
        if not isinstance(over, dict) or set(over) - set(LINK_KEYS):
            raise SpecError(f"{where}.link.{d}: an object with keys from {LINK_KEYS}")
        dirs[d] = normalise_direction({**base, **over}, f"{where}.link.{d}")
    emulate = raw.get("emulator")
    if emulate is None:
        emulate = any(dirs[d][k] for d in dirs for k in ("delay_ms", "jitter_ms", "loss"))
    if not emulate and any(dirs[d][k] for d in dirs for k in ("delay_ms", "jitter_ms", "loss")):
        raise SpecError(f"{where}.link: delay, jitter and loss need the emulator")
    seed = raw.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise SpecError(f"{where}.link.seed: an integer")
    return {"up": dirs["up"], "down": dirs["down"], "emulator": bool(emulate), "seed": seed}


def normalise_direction(d, where):
    out = {
        "rate_kbit": None,
        "delay_ms": 0.0,
        "jitter_ms": 0.0,
        "loss": 0.0,
        "queue_ms": 100.0,
    }
    if d.get("rate_kbit") is not None:
        out["rate_kbit"] = _number(d["rate_kbit"], "rate_kbit", 8, 10_000_000)
    for key, hi in (("delay_ms", 10_000), ("jitter_ms", 5_000), ("queue_ms", 10_000)):
        if d.get(key) is not None:
            out[key] = float(_number(d[key], key, 0, hi))
    if d.get("loss") is not None:
        out["loss"] = float(_number(d["loss"], "loss", 0, 1))
    if out["jitter_ms"] > out["delay_ms"]:
        raise SpecError(f"{where}: jitter_ms ({out['jitter_ms']}) above delay_ms ({out['delay_ms']})")
    return out


def parse(raw):
    """Validate a spec (a dict) and derive the address plan. Returns the normalised spec."""
    if not isinstance(raw, dict):
        raise SpecError("the spec is a JSON object")
    unknown = set(raw) - {"sites", "broker", "turn"}
    if unknown:
        raise SpecError(f"unknown keys {sorted(unknown)}")
    sites_raw = raw.get("sites") or [{"name": "dev", "nat": "cone"}, {"name": "v1", "nat": "cone"}]
    if not isinstance(sites_raw, list) or not 1 <= len(sites_raw) <= 40:
        raise SpecError("sites: a list of 1 to 40 sites")
    sites, hosts, names = [], {}, set()
    for index, s in enumerate(sites_raw, start=1):
        if not isinstance(s, dict):
            raise SpecError(f"sites[{index - 1}]: an object")
        unknown = set(s) - {"name", "nat", "hosts", "lan", "filter", "link"}
        if unknown:
            raise SpecError(f"sites[{index - 1}]: unknown keys {sorted(unknown)}")
        name = s.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise SpecError(f"sites[{index - 1}].name: 1-6 of [a-z0-9], starting with a letter")
        nat = s.get("nat", "cone")
        if nat not in NAT_KINDS:
            raise SpecError(f"site {name}: nat is one of {NAT_KINDS}")
        host_names = s.get("hosts", [name])
        if not isinstance(host_names, list):
            raise SpecError(f"site {name}: hosts is a list of names")
        if nat == "none" and host_names != [name]:
            raise SpecError(f"site {name}: a site without NAT is one host of the same name")
        filt = s.get("filter")
        if filt not in FILTERS:
            raise SpecError(f"site {name}: filter is one of {FILTERS}")
        if filt and nat == "none":
            raise SpecError(f"site {name}: a filter needs a router (nat other than none)")
        lan = None
        if nat != "none":
            try:
                lan = ipaddress.ip_network(s.get("lan") or default_lan(index))
            except ValueError as e:
                raise SpecError(f"site {name}: lan: {e}") from None
            if lan.version != 4 or not lan.is_private or lan.prefixlen > 28:
                raise SpecError(f"site {name}: lan is a private IPv4 subnet of /28 or wider")
            if lan.overlaps(ipaddress.ip_network("10.0.0.0/16")) or lan.overlaps(
                ipaddress.ip_network("10.100.0.0/16")
            ):
                raise SpecError(f"site {name}: lan overlaps the internet side (10.0/16, 10.100/16)")
            if lan.overlaps(ipaddress.ip_network("192.0.2.0/24")):
                raise SpecError(f"site {name}: lan overlaps the machine's own network")
        for h in host_names:
            if not isinstance(h, str) or not NAME_RE.match(h):
                raise SpecError(f"site {name}: host name {h!r}: 1-6 of [a-z0-9], starting with a letter")
        for n in [name] + host_names:
            if n == "inet":
                raise SpecError("inet is the internet namespace's name; pick another")
        for n in [name] + [h for h in host_names if h != name]:
            if n in names:
                raise SpecError(f"name {n} used twice (site and host names share one space)")
            names.add(n)
        if len(host_names) > (lan.num_addresses - 12 if lan else 1):
            raise SpecError(f"site {name}: too many hosts for its lan")
        wan = wan_subnet(index)
        site = {
            "name": name,
            "index": index,
            "nat": nat,
            "filter": filt,
            "wan": str(wan),
            "inet_ip": str(wan[1]),
            "public_ip": str(wan[2]),
            "lan": str(lan) if lan else None,
            "gateway": str(lan[1]) if lan else None,
            "link": parse_link(s.get("link"), f"site {name}"),
            "hosts": list(host_names),
        }
        sites.append(site)
        for k, h in enumerate(host_names):
            hosts[h] = {
                "name": h,
                "site": name,
                "ip": str(lan[10 + k]) if lan else site["public_ip"],
            }
    turn = raw.get("turn", True)
    if turn is True:
        turn = {}
    if turn is not False:
        if not isinstance(turn, dict) or set(turn) - {"auth", "deny_private"}:
            raise SpecError("turn: true, false or {auth: lt|secret, deny_private: bool}")
        if turn.get("auth", "lt") not in TURN_AUTHS:
            raise SpecError(f"turn.auth is one of {TURN_AUTHS}")
        turn = {"auth": turn.get("auth", "lt"), "deny_private": bool(turn.get("deny_private", False))}
    broker = raw.get("broker", True)
    if not isinstance(broker, bool):
        raise SpecError("broker: true or false")
    return {"sites": sites, "hosts": hosts, "broker": broker, "turn": turn or None}


def parse_site_arg(text):
    """`NAME:NAT[,key=value...]` -> a raw site dict. Keys: hosts (a count 0/1 or names joined
    by '+'), lan, filter, rate, delay, jitter, loss, queue, seed, emulator (0/1)."""
    head, _, rest = text.partition(",")
    name, _, nat = head.partition(":")
    site = {"name": name, "nat": nat or "cone"}
    link = {}
    keys = {"rate": "rate_kbit", "delay": "delay_ms", "jitter": "jitter_ms", "loss": "loss", "queue": "queue_ms"}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SpecError(f"--site {text}: {item!r} is not key=value")
        if key == "hosts":
            if value.isdigit():
                site["hosts"] = [name] if value == "1" else []
                if value not in ("0", "1"):
                    raise SpecError("hosts=N takes 0 or 1; name several hosts with a+b+c")
            else:
                site["hosts"] = value.split("+")
        elif key in ("lan", "filter"):
            site[key] = value
        elif key in keys:
            try:
                link[keys[key]] = float(value)
            except ValueError:
                raise SpecError(f"--site {text}: {key}={value} is not a number") from None
        elif key == "seed":
            link["seed"] = int(value)
        elif key == "emulator":
            link["emulator"] = value in ("1", "true", "yes")
        else:
            raise SpecError(f"--site {text}: unknown key {key}")
    if link:
        site["link"] = link
    return site
