"""SSRF guard for webhook targets: private, loopback, link-local and other non-public
addresses are refused unless the config allows them (all, or an allowlist of CIDRs).

Checked twice: on the literal host at config time (so `check-config` refuses it) and on every
address a hostname resolves to at connect time (so DNS rebinding cannot get around it).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressGuard:
    __slots__ = ("_allow_private", "_networks")

    def __init__(self, allow_private: bool = False, allow_cidrs: Iterable[str] = ()) -> None:
        self._allow_private = allow_private
        self._networks = tuple(ipaddress.ip_network(c, strict=False) for c in allow_cidrs)

    def allows(self, address: str | IPAddress) -> bool:
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too
        if ip.is_multicast or ip.is_unspecified:
            return False
        if self._allow_private:
            return True
        if any(ip in network for network in self._networks):
            return True
        return ip.is_global


def literal_host(url: str) -> str | None:
    """The IP address a URL names literally ('localhost' counts as 127.0.0.1), else None."""
    try:
        host = URL(url).host
    except (ValueError, TypeError):
        return None
    if host is None:
        return None
    if host.lower() in ("localhost", "localhost.", "ip6-localhost"):
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def ip_literal(host: str | None) -> IPAddress | None:
    """The address `host` spells literally (brackets allowed for IPv6), else None.

    Unlike `literal_host` this does not map 'localhost': names go through the guarded resolver,
    while literals never reach a resolver and must be checked on their own."""
    if not host:
        return None
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class AddressRefused(OSError):
    """A webhook target resolved only to addresses the guard refuses.

    An OSError so that aiohttp's connector reports it like any resolver failure
    (`ClientConnectorDNSError.os_error`); the webhook sink turns it into a permanent failure."""

    def __init__(self, host: str, addresses: Iterable[str] = ()) -> None:
        shown = ", ".join(addresses)
        detail = f"{host} ({shown})" if shown and shown != host else host
        super().__init__(
            f"webhook target {detail} is a private or loopback address; set "
            "security.webhook_allow_private or list it in security.webhook_allow_cidrs"
        )
        self.host = host
