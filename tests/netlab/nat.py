"""The NAT routers' nftables rulesets, and the netdev tables that cut a link.

NAT kinds (all masquerade on the router's WAN interface; the router's own input is closed, so an
unsolicited packet never creates a conntrack entry that would later force the router to pick
another port for the LAN host's own flow):

- cone: endpoint-independent mapping *and* filtering ("full cone"). Masquerade keeps the LAN
  host's source port when it is free, and every UDP packet that arrives on the WAN for a port
  that no flow owns is forwarded to the site's first host (its "dmz" host) on the same port.
- port-restricted: endpoint-independent mapping, address-and-port-dependent filtering (most
  home routers): masquerade keeps the port; only replies to flows the host opened come in.
- symmetric: masquerade fully-random: every new flow (each destination address and port) gets a
  random source port, so the port that a STUN server sees is useless to anyone else.

Filter "turn-tcp-only": the LAN may send no UDP at all; TCP only to the TURN server's TCP and TLS
ports and the broker's ports; ICMP passes (for the self-check).
"""

from spec import BROKER_IP, BROKER_PORT, BROKER_WS_PORT, TURN_IP, TURN_PORT, TURN_TLS_PORT

TABLE = "netlab"
CUT_TABLE = "netlab_cut"


def router_ruleset(wan, lan_bridge, nat, filt, dmz_ip):
    """The whole `ip netlab` table of one router, replacing any previous one atomically."""
    masquerade = "masquerade fully-random" if nat == "symmetric" else "masquerade"
    prerouting = ""
    forward_in = ""
    if nat == "cone" and dmz_ip:
        prerouting = f'iifname "{wan}" udp dport 1024-65535 dnat to {dmz_ip}'
        forward_in = f'iifname "{wan}" ct status dnat accept'
    if filt == "turn-tcp-only":
        lan_out = "\n".join(
            [
                f'iifname "{lan_bridge}" meta l4proto udp drop',
                f'iifname "{lan_bridge}" ip daddr {TURN_IP} tcp dport {{ {TURN_PORT}, {TURN_TLS_PORT} }} accept',
                f'iifname "{lan_bridge}" ip daddr {BROKER_IP} tcp dport {{ {BROKER_PORT}, {BROKER_WS_PORT} }} accept',
                f'iifname "{lan_bridge}" meta l4proto icmp accept',
                f'iifname "{lan_bridge}" drop',
            ]
        )
    else:
        lan_out = f'iifname "{lan_bridge}" accept'
    return f"""
table ip {TABLE}
delete table ip {TABLE}
table ip {TABLE} {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    {prerouting}
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "{wan}" {masquerade}
  }}
  chain input {{
    type filter hook input priority filter; policy drop;
    ct state established,related accept
    iifname "lo" accept
    iifname "{lan_bridge}" accept
    meta l4proto icmp accept
  }}
  chain forward {{
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    {forward_in}
    {lan_out}
  }}
}}
"""


def cut_ruleset(device):
    """A netdev table dropping everything that arrives on `device` (one end of a link)."""
    return f"""
table netdev {CUT_TABLE} {{
  chain ingress {{
    type filter hook ingress device "{device}" priority -500; policy drop;
  }}
}}
"""
