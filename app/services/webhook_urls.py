"""Where a webhook may point: the URL's shape, and the addresses its host resolves to.

`check_url` is the shape (absolute http(s), at most 2048 characters, no credentials, https in
production mode); `check_destination` resolves the host and refuses loopback, private,
link-local, multicast, reserved and cloud-metadata addresses, and IP literals, unless the
operator allows private destinations (`WAJAH_WEBHOOKS_ALLOW_PRIVATE=true`). Both run when an
endpoint is created or changed; the delivery worker calls `check_destination` again before
each delivery and connects only to the addresses it returns, so a name that resolved to a
public address at creation and to 127.0.0.1 later (DNS rebinding) is refused then too.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from urllib.parse import SplitResult, urlsplit

from app.errors import InvalidRequestError

MAX_URL_LENGTH = 2048
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Cloud metadata services (AWS, GCP, Azure, OpenStack on IPv4; AWS on IPv6). 169.254.169.254
# is link-local anyway; fd00:ec2::254 is unique-local: both are named so the intent is plain.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
Resolver = Callable[[str, int], Sequence[str]]


class InvalidWebhookUrlError(InvalidRequestError):
    """Not an absolute http(s) URL this service may call (shape, scheme, credentials)."""

    code = "invalid_webhook_url"


class WebhookDestinationForbiddenError(InvalidRequestError):
    """The host is an IP literal or resolves to an address webhooks may not reach, or does
    not resolve at all."""

    code = "webhook_destination_forbidden"


def check_url(url: str, *, require_https: bool) -> SplitResult:
    """The URL split, or `InvalidWebhookUrlError` saying what is wrong with it."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise InvalidWebhookUrlError(f"url must be 1..{MAX_URL_LENGTH} characters")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise InvalidWebhookUrlError("url may not hold spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidWebhookUrlError("url is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidWebhookUrlError("url must be an absolute http(s) URL with a host")
    if require_https and parts.scheme != "https":
        raise InvalidWebhookUrlError("url must be https in production mode")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidWebhookUrlError("url may not carry credentials (user:password@)")
    if parts.fragment:
        raise InvalidWebhookUrlError("url may not carry a fragment (#...)")
    if port == 0:
        raise InvalidWebhookUrlError("url has port 0")
    return parts


def _literal(host: str) -> IpAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def forbidden_reason(address: IpAddress) -> str | None:
    """Why webhooks may not reach this address, or None if they may."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return forbidden_reason(address.ipv4_mapped)
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    checks = (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("unspecified", address.is_unspecified),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("not globally routable", not address.is_global),
    )
    return next((f"a {name} address" for name, hit in checks if hit), None)


def _system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def check_destination(
    url: str, allow_private: bool, resolve: Resolver = _system_resolver
) -> list[IpAddress]:
    """The addresses `url`'s host resolves to, all of which webhooks may reach; else
    `WebhookDestinationForbiddenError` (nothing resolved, an IP literal, or any address
    loopback/private/link-local/multicast/metadata). With ``allow_private`` every address
    that resolves is allowed (the operator's choice: a receiver on the same network)."""
    parts = check_url(url, require_https=False)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    literal = _literal(host)
    if literal is not None and not allow_private:
        raise WebhookDestinationForbiddenError("url's host may not be an IP address: use a name")
    try:
        found = [literal] if literal is not None else [_literal(a) for a in resolve(host, port)]
    except (OSError, UnicodeError):
        raise WebhookDestinationForbiddenError("url's host does not resolve") from None
    addresses = [a for a in found if a is not None]
    if not addresses:
        raise WebhookDestinationForbiddenError("url's host does not resolve")
    if not allow_private:
        for address in addresses:
            reason = forbidden_reason(address)
            if reason is not None:
                raise WebhookDestinationForbiddenError(
                    f"url's host resolves to {reason}; webhooks may not reach it"
                )
    return addresses
