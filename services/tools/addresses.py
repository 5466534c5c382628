"""Which addresses a tool may connect to on a model's behalf: globally routable unicast ones only.

The rule is the ``ipaddress`` module's ``is_global`` made exact: Python's answer depends on its version
(3.11 calls 6to4, NAT64, multicast, site-local and IPv4-compatible addresses global), so every
special-purpose range of the IANA registries that is not reachable on the public internet is also listed
here and refused whatever the interpreter. An IPv4-mapped IPv6 address (``::ffff:127.0.0.1``) is judged
as the IPv4 address it reaches.
"""

from __future__ import annotations

import ipaddress

_NOT_GLOBAL = tuple(ipaddress.ip_network(network) for network in (
    # IPv4
    "0.0.0.0/8",          # "this network"
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",  # private
    "100.64.0.0/10",      # shared address space (carrier-grade NAT)
    "127.0.0.0/8",        # loopback
    "169.254.0.0/16",     # link-local (169.254.169.254: the cloud's metadata endpoint)
    "192.0.0.0/24",       # IETF protocol assignments
    "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24",  # documentation
    "192.88.99.0/24",     # 6to4 relay anycast (deprecated)
    "198.18.0.0/15",      # benchmarking
    "224.0.0.0/4",        # multicast
    "240.0.0.0/4",        # reserved, and the broadcast address 255.255.255.255
    # IPv6
    "::/8",               # reserved: unspecified, loopback, IPv4-compatible, NAT64 64:ff9b::/96
    "64:ff9b:1::/48",     # local-use IPv4/IPv6 translation
    "100::/64",           # discard-only
    "2001::/23",          # IETF protocol assignments: Teredo 2001::/32, benchmarking 2001:2::/48, ORCHID…
    "2001:db8::/32", "3fff::/20",  # documentation
    "2002::/16",          # 6to4: reaches whatever IPv4 address it embeds
    "5f00::/16",          # segment routing (SRv6) SIDs
    "fc00::/7",           # unique local
    "fe80::/10",          # link-local
    "fec0::/10",          # site-local (deprecated)
    "ff00::/8",           # multicast
))


def is_public(address: str) -> bool:
    """Whether ``address`` (an IPv4 or IPv6 address in text) is a globally routable unicast address, which
    a tool may connect to without an operator vouching for the host. Raises ValueError for text that is
    no address."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not any(ip in network for network in _NOT_GLOBAL)
