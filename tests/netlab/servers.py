"""The servers of the internet namespace: Mosquitto (MQTT and WebSockets), coturn (STUN/TURN
over UDP, TCP and TLS with a certificate made here by openssl), and the probe server. Each is
started by its real PID and waited for until it answers.
"""

import base64
import hashlib
import os
import secrets
import subprocess
import socket
import sys
import time

import system
from spec import (
    BROKER_IP,
    BROKER_PORT,
    BROKER_WS_PORT,
    PROBE_IP,
    PROBE_TCP_PORT,
    TURN_IP,
    TURN_PORT,
    TURN_TLS_PORT,
)

HERE = os.path.dirname(os.path.abspath(__file__))
REALM = "netlab"


class ServerError(RuntimeError):
    pass


def wait_tcp(ns, ip, port, pid, start_time, what, log, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with system.in_netns(ns):
            s = socket.socket()
        s.settimeout(0.5)
        try:
            s.connect((ip, port))
            return
        except OSError:
            pass
        finally:
            s.close()
        if not system.alive(pid, start_time):
            break
        time.sleep(0.05)
    tail = ""
    try:
        with open(log) as f:
            tail = f.read()[-800:]
    except OSError:
        pass
    raise ServerError(f"{what} did not listen on {ip}:{port}: {tail.strip()}")


def make_certificates(state_dir):
    """A CA and a server certificate for the TURN server (IP 10.0.0.2, DNS turn.netlab)."""
    d = os.path.join(state_dir, "tls")
    os.makedirs(d, exist_ok=True)
    ca_key, ca, key, csr, cert = (os.path.join(d, n) for n in ("ca.key", "ca.pem", "turn.key", "turn.csr", "turn.pem"))
    ext = os.path.join(d, "turn.ext")
    with open(ext, "w") as f:
        f.write(
            f"subjectAltName=IP:{TURN_IP},DNS:turn.netlab\nbasicConstraints=CA:FALSE\n"
            "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    system.run(["openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "30", "-subj", "/CN=netlab test CA"])
    system.run(["openssl", "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=turn.netlab"])
    system.run(
        ["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", "30", "-extfile", ext]
    )
    # Chromium checks a turns: server's certificate against the system's roots; it accepts this
    # one when given its key's pin: --ignore-certificate-errors-spki-list=<base64 SHA-256 of SPKI>.
    pub = system.run(["openssl", "x509", "-in", cert, "-pubkey", "-noout"])
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=pub.encode(),
                         capture_output=True, check=True).stdout
    spki = base64.b64encode(hashlib.sha256(der).digest()).decode()
    return {"ca": ca, "cert": cert, "key": key, "spki_sha256": spki}


def start_broker(ns, state_dir):
    conf = os.path.join(state_dir, "mosquitto.conf")
    log = os.path.join(state_dir, "mosquitto.log")
    with open(conf, "w") as f:
        # socket_domain ipv4: Mosquitto 2.0.11's websockets listener ignores its bind address
        # without it.
        f.write(
            "persistence false\nallow_anonymous true\n"
            f"listener {BROKER_PORT} {BROKER_IP}\nprotocol mqtt\n"
            f"listener {BROKER_WS_PORT} {BROKER_IP}\nsocket_domain ipv4\nprotocol websockets\n"
        )
    pid, st = system.spawn(["mosquitto", "-c", conf], ns=ns, log=log)
    wait_tcp(ns, BROKER_IP, BROKER_PORT, pid, st, "mosquitto", log)
    wait_tcp(ns, BROKER_IP, BROKER_WS_PORT, pid, st, "mosquitto (websockets)", log)
    info = {
        "host": BROKER_IP,
        "port": BROKER_PORT,
        "ws_port": BROKER_WS_PORT,
        "url": f"mqtt://{BROKER_IP}:{BROKER_PORT}",
        "ws_url": f"ws://{BROKER_IP}:{BROKER_WS_PORT}",
        "config": conf,
        "log": log,
    }
    return info, {"name": "mosquitto", "pid": pid, "start_time": st, "node": "inet"}


def start_turn(ns, state_dir, turn_spec, lan_ranges):
    tls = make_certificates(state_dir)
    log = os.path.join(state_dir, "turnserver.log")
    args = [
        "turnserver", "-n",
        "--listening-ip", TURN_IP, "--relay-ip", TURN_IP,
        "--listening-port", TURN_PORT, "--tls-listening-port", TURN_TLS_PORT,
        "--cert", tls["cert"], "--pkey", tls["key"],
        "--realm", REALM, "--fingerprint",
        "--no-cli", "--no-multicast-peers", "--no-rfc5780",
        "--log-file", log, "--simple-log", "--no-stdout-log",
        "--pidfile", os.path.join(state_dir, "turnserver.pid"),
    ]
    info = {
        "host": TURN_IP,
        "port": TURN_PORT,
        "tls_port": TURN_TLS_PORT,
        "realm": REALM,
        "auth": turn_spec["auth"],
        "ca": tls["ca"],
        "tls_name": "turn.netlab",
        "spki_sha256": tls["spki_sha256"],
        "chromium_args": [f"--ignore-certificate-errors-spki-list={tls['spki_sha256']}"],
        "stun_url": f"stun:{TURN_IP}:{TURN_PORT}",
        "urls": {
            "udp": f"turn:{TURN_IP}:{TURN_PORT}?transport=udp",
            "tcp": f"turn:{TURN_IP}:{TURN_PORT}?transport=tcp",
            "tls": f"turns:{TURN_IP}:{TURN_TLS_PORT}?transport=tcp",
        },
        "log": log,
    }
    if turn_spec["auth"] == "secret":
        secret = secrets.token_hex(16)
        args += ["--use-auth-secret", "--static-auth-secret", secret]
        info["secret"] = secret
    else:
        user, password = "netlab", secrets.token_hex(8)
        args += ["--lt-cred-mech", "--user", f"{user}:{password}"]
        info["username"], info["password"] = user, password
    if turn_spec["deny_private"]:
        for lo, hi in lan_ranges:
            args += ["--denied-peer-ip", f"{lo}-{hi}"]
        info["denied_peers"] = [f"{lo}-{hi}" for lo, hi in lan_ranges]
    pid, st = system.spawn(args, ns=ns, log=log + ".out")
    wait_tcp(ns, TURN_IP, TURN_PORT, pid, st, "turnserver", log)
    wait_tcp(ns, TURN_IP, TURN_TLS_PORT, pid, st, "turnserver (TLS)", log)
    return info, {"name": "turnserver", "pid": pid, "start_time": st, "node": "inet"}


def start_probe(ns, state_dir):
    log = os.path.join(state_dir, "probe.log")
    pid, st = system.spawn([sys.executable, os.path.join(HERE, "probe.py"), "serve", PROBE_IP], ns=ns, log=log)
    wait_tcp(ns, PROBE_IP, PROBE_TCP_PORT, pid, st, "probe server", log)
    return {"name": "probe", "pid": pid, "start_time": st, "node": "inet"}
