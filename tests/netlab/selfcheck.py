"""The self-check: after `up` (and on `check`), real traffic verifies that the network is what
the spec asked for, and reports the figures it measured.

- reachability: every host pings the probe server, every directly attached host and every
  router's public address; the broker's TCP port answers;
- NAT: from each host, one UDP socket asks two reflector ports what they see and asks for an
  unsolicited packet from a third port: the mapping (same port for both destinations or not),
  the filtering (did the unsolicited packet get in) and port preservation give the NAT kind,
  which must be the one asked for;
- filter turn-tcp-only: no UDP gets out (STUN to the TURN server goes unanswered), TCP reaches
  the TURN ports and the broker but not the probe server's TCP port;
- TURN: from each host an allocation over UDP (unless filtered), TCP and TLS, and a datagram
  relayed to an echo peer and back;
- shaped links: RTT (median and spread) from UDP echoes spaced so that jitter cannot reorder
  them, loss per direction from a stream of small packets (which also shows the emulator keeping
  up: the kernel must not drop frames before it reads them), rate per direction from a UDP
  stream at 1.3x the asked rate.

Anything off raises NotValid("not valid: ...").
"""

import json
import math
import threading
import time

import probe
import stun
import system
from spec import BROKER_IP, BROKER_PORT, PROBE_IP, PROBE_PORTS, PROBE_TCP_PORT, TURN_IP, TURN_PORT, TURN_TLS_PORT


class NotValid(RuntimeError):
    pass


def turn_credentials(turn):
    if turn["auth"] == "secret":
        return stun.rest_credentials(turn["secret"], "selfcheck")
    return turn["username"], turn["password"]


def check_host(state, host, problems):
    site = state["sites"][host["site"]]
    out = {"ip": host["ip"], "site": site["name"]}
    filtered = site["filter"] == "turn-tcp-only"
    with system.in_netns(host["ns"]):
        rtts = probe.icmp_ping(PROBE_IP, count=2)
        out["ping_probe_ms"] = rtts
        if not rtts:
            problems.append(f"{host['name']}: no ping answer from {PROBE_IP}")
        peers = {}
        for other in state["sites"].values():
            if other is site:
                continue
            peers[other["name"]] = probe.icmp_ping(other["public_ip"], count=1)
            if not peers[other["name"]]:
                problems.append(f"{host['name']}: no ping answer from site {other['name']} ({other['public_ip']})")
        out["ping_sites_ms"] = peers
        if state["broker"]:
            out["broker_tcp"] = probe.tcp_reachable(BROKER_IP, BROKER_PORT)
            if not out["broker_tcp"]:
                problems.append(f"{host['name']}: the broker's port {BROKER_IP}:{BROKER_PORT} does not answer")
        if filtered:
            out["filter"] = f = {
                "udp_stun_answered": probe.udp_answers(TURN_IP, TURN_PORT, timeout=1.0),
                "tcp_turn": probe.tcp_reachable(TURN_IP, TURN_PORT),
                "tcp_turn_tls": probe.tcp_reachable(TURN_IP, TURN_TLS_PORT),
                "tcp_other": probe.tcp_reachable(PROBE_IP, PROBE_TCP_PORT, timeout=0.5),
            }
            if f["udp_stun_answered"] or f["tcp_other"]:
                problems.append(f"{host['name']}: filter turn-tcp-only lets through what it must block: {f}")
            if state["turn"] and not (f["tcp_turn"] and f["tcp_turn_tls"]):
                problems.append(f"{host['name']}: filter turn-tcp-only blocks the TURN server's TCP/TLS ports: {f}")
        else:
            sock = probe._udp()
            b = probe.nat_behaviour(sock, PROBE_IP)
            sock.close()
            kind = probe.classify(b)
            out["nat"] = {**b, "observed": kind}
            mapped_ip = b["mapped_a"].split(":")[0] if b["mapped_a"] else None
            if site["nat"] == "none":
                expect_ip, expect_kind = host["ip"], "cone"
            else:
                expect_ip = site["public_ip"]
                expect_kind = site["nat"]
                if site["nat"] == "cone" and site["dmz"] != host["name"]:
                    # Unsolicited packets go to the site's first host only.
                    expect_kind = "port-restricted"
            if mapped_ip != expect_ip:
                problems.append(f"{host['name']}: seen from the internet as {mapped_ip}, expected {expect_ip}")
            if kind != expect_kind:
                problems.append(f"{host['name']}: NAT behaves as {kind} ({b}), expected {expect_kind}")
            if site["nat"] in ("cone", "port-restricted", "none") and b["mapped_a"]:
                preserved = int(b["mapped_a"].split(":")[1]) == b["local_port"]
                out["nat"]["port_preserved"] = preserved
                if not preserved:
                    problems.append(f"{host['name']}: the NAT did not keep the source port ({b})")
        if state["turn"]:
            out["turn"] = {}
            user, password = turn_credentials(state["turn"])
            peer = (PROBE_IP, PROBE_PORTS["echo"])
            kinds = (("tcp", TURN_PORT), ("tls", TURN_TLS_PORT)) if filtered else (
                ("udp", TURN_PORT), ("tcp", TURN_PORT), ("tls", TURN_TLS_PORT))
            for kind, port in kinds:
                try:
                    out["turn"][kind] = stun.allocate_and_relay(
                        kind, (TURN_IP, port), user, password, peer, ca_file=state["turn"]["ca"]
                    )
                except (stun.StunError, OSError) as e:
                    out["turn"][kind] = {"error": str(e)}
                    problems.append(f"{host['name']}: TURN over {kind}: {e}")
    return out


def _loss_tolerance(p, n):
    return 4 * math.sqrt(max(p * (1 - p), 0.0) / max(n, 1)) + 0.005


def check_link(state, site, problems):
    """Measure a shaped link from its first host (or the router when it has none)."""
    link = site["link"]
    name = site["name"]
    ns = state["hosts"][site["members"][0]]["ns"] if site["members"] else site["edge_ns"]
    up, down = link["up"], link["down"]
    out = {"asked": {"up": up, "down": down}}
    if site["filter"] == "turn-tcp-only":
        out["skipped"] = "UDP is filtered on this site: no UDP measurement possible"
        return out
    emu = site["emulator"]
    before = read_stats(emu) if emu else None
    # RTT: echoes spaced more than twice the jitter apart, so that the emulator's in-order
    # release never holds one behind the other.
    jit = max(up["jitter_ms"], down["jitter_ms"]) / 1000
    spacing = max(0.02, 2 * jit + 0.005)
    count = 60 if jit else 40
    with system.in_netns(ns):
        e = probe.echo_rtt(PROBE_IP, count, spacing)
    out["echo"] = e
    expect_rtt = up["delay_ms"] + down["delay_ms"]
    # The spread as an interquartile range (robust to a rare scheduling hiccup); for the sum of
    # two uniform jitters, close to that of a normal law with the same variance.
    expect_sd = math.sqrt((up["jitter_ms"] ** 2 + down["jitter_ms"] ** 2) / 3)
    expect_iqr = 1.349 * expect_sd
    if "rtt_median_ms" not in e:
        problems.append(f"link {name}: no echo came back")
        return out
    tol = 3 + 0.05 * expect_rtt
    out["rtt_expected_ms"] = round(expect_rtt, 2)
    if abs(e["rtt_median_ms"] - expect_rtt) > tol:
        problems.append(f"link {name}: RTT median {e['rtt_median_ms']} ms, asked {expect_rtt} ms (tolerance {tol:.1f} ms)")
    iqr = round(e["rtt_p75_ms"] - e["rtt_p25_ms"], 2)
    out["rtt_iqr_ms"], out["rtt_iqr_expected_ms"] = iqr, round(expect_iqr, 2)
    if not 0.5 * expect_iqr - 1 <= iqr <= 1.6 * expect_iqr + 1.5:
        problems.append(f"link {name}: RTT interquartile range {iqr} ms, expected about {expect_iqr:.1f} ms")

    # Loss per direction (and the emulator keeping up) from streams of small packets, both
    # directions at once.
    def stream(d, p):
        rate = p["rate_kbit"]
        kbit = min(4000.0, 0.6 * rate) if rate else 4000.0
        size = 200
        pps = kbit * 1000 / 8 / (size + probe.WIRE_OVERHEAD)
        secs = min(4.0, max(1.5, 1000 / pps))
        r = probe.rate_up(PROBE_IP, kbit, size, secs) if d == "up" else probe.rate_down(PROBE_IP, kbit, size, secs)
        return {**r, "kbit_offered": kbit}

    for d, r in both(ns, lambda: stream("up", up), lambda: stream("down", down)).items():
        p = link[d]
        measured = 1 - r["unique"] / r["sent"] if r.get("unique") is not None else None
        out[f"stream_{d}"] = {**r, "loss": None if measured is None else round(measured, 4)}
        if measured is None:
            problems.append(f"link {name}: the {d} stream got no report")
            continue
        tol = _loss_tolerance(p["loss"], r["sent"])
        if abs(measured - p["loss"]) > tol:
            problems.append(
                f"link {name}: {d} loss {measured:.4f} over {r['sent']} packets at {r['kbit_offered']:.0f} kbit/s, "
                f"asked {p['loss']} (tolerance {tol:.4f})"
            )

    # Rate per direction, at 1.3x the asked rate, both directions at once.
    def blast(d, p):
        if not p["rate_kbit"]:
            return None
        rate = float(p["rate_kbit"])
        size = 1000 if rate >= 200 else 200
        fn = probe.rate_up if d == "up" else probe.rate_down
        return {**fn(PROBE_IP, 1.3 * rate, size, 2.0), "kbit_expected": round(rate * (1 - p["loss"]), 1)}

    if up["rate_kbit"] or down["rate_kbit"]:
        for d, r in both(ns, lambda: blast("up", up), lambda: blast("down", down)).items():
            if r is None:
                continue
            out[f"rate_{d}"] = r
            expect = r["kbit_expected"]
            if not r.get("kbit") or abs(r["kbit"] - expect) > 0.12 * expect:
                problems.append(
                    f"link {name}: {d} rate {r.get('kbit')} kbit/s, asked {link[d]['rate_kbit']} "
                    f"(expected {expect:.0f} after loss)"
                )
    if emu:
        time.sleep(0.6)  # one stats period
        after = read_stats(emu)
        if before and after:
            delta = {
                d: {k: after[d][k] - before[d][k] for k in ("kernel_drops", "send_errors", "dropped_overflow")}
                for d in ("up", "down")
            }
            frames = {d: after[d]["frames_out"] - before[d]["frames_out"] for d in ("up", "down")}
            late = {d: after[d]["late_over_2ms"] - before[d]["late_over_2ms"] for d in ("up", "down")}
            out["emulator"] = {
                "priority": after.get("priority"),
                "own_loss": delta,
                "frames_out": frames,
                "late_over_2ms": late,
                "late_max_ms": {d: after[d]["late_max_ms"] for d in ("up", "down")},
            }
            for d in ("up", "down"):
                if any(delta[d].values()):
                    problems.append(f"link {name}: the emulator lost frames itself ({d}: {delta[d]})")
                if late[d] > 0.01 * max(frames[d], 1):
                    problems.append(
                        f"link {name}: the emulator sent {late[d]} of {frames[d]} frames ({d}) more than 2 ms late "
                        "(the machine is too busy for the asked link)"
                    )
    return out


def both(ns, fn_up, fn_down):
    """Run the up and down measurements at once, each in its own thread inside `ns`."""
    results = {}

    def runner(d, fn):
        with system.in_netns(ns):
            results[d] = fn()

    threads = [threading.Thread(target=runner, args=(d, fn)) for d, fn in (("up", fn_up), ("down", fn_down))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def read_stats(emu):
    try:
        with open(emu["stats"]) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def run(state, links=True):
    """All checks. Returns the report; raises NotValid listing every problem."""
    problems = []
    start = time.monotonic()
    system.realtime(20)
    report = {"hosts": {}, "links": {}}
    for host in state["hosts"].values():
        report["hosts"][host["name"]] = check_host(state, host, problems)
    if links:
        for site in state["sites"].values():
            if site["link"]:
                report["links"][site["name"]] = check_link(state, site, problems)
    system.normal_priority()
    report["seconds"] = round(time.monotonic() - start, 2)
    if problems:
        err = NotValid("not valid: " + "; ".join(problems))
        err.report = report
        raise err
    return report
