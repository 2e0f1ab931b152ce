"""How `wajah serve` runs uvicorn: TLS, trusted proxies, no banner, our own access log.

TLS: TLS 1.3 is preferred (OpenSSL picks the highest version both sides speak), TLS 1.2 is
still accepted with forward-secret AEAD ciphers only, and anything older is refused in the
handshake. Every response on a TLS 1.2 connection says so in `Wajah-TLS-Warning`
(`app.api.edge`), which needs to know the version each connection negotiated: uvicorn does
not put it in the ASGI scope, so its HTTP protocol is subclassed to add the ASGI TLS
extension (`scope["extensions"]["tls"]["tls_version"]`) to every request of a TLS connection.

Proxies: forwarded headers (`X-Forwarded-For`, `X-Forwarded-Proto`) are honoured only from
the addresses in `WAJAH_TRUSTED_PROXIES`; with none, from no one (uvicorn's default trusts
127.0.0.1, which would let anything on the host claim HTTPS). Production mode refuses plain
HTTP unless it sits behind such a proxy.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from app.settings import Mode, Settings

# Forward secrecy and AEAD only, for TLS 1.2 (TLS 1.3's suites are all of that kind and are
# configured apart by OpenSSL).
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


class ServingConfigError(ValueError):
    """The TLS or proxy configuration cannot be used; the message says what to fix."""


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The server's TLS context: 1.3 preferred, 1.2 accepted, nothing older."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(["http/1.1"])
    for label, path in (("certificate", cert), ("key", key)):
        if not path.is_file():
            raise ServingConfigError(f"TLS {label} file {str(path)!r} does not exist")
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise ServingConfigError(
            f"cannot use TLS certificate {str(cert)!r} with key {str(key)!r}: they are not a "
            f"PEM certificate chain and its matching private key ({exc.reason or 'unreadable'})"
        ) from exc
    except OSError as exc:
        raise ServingConfigError(f"cannot read the TLS certificate or key: {exc.strerror}") from exc
    return context


def check_proxies(value: str) -> list[str]:
    """The trusted proxy addresses and networks of `WAJAH_TRUSTED_PROXIES` (comma-separated)."""
    proxies = [p.strip() for p in value.split(",") if p.strip()]
    for proxy in proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError as exc:
            raise ServingConfigError(
                f"WAJAH_TRUSTED_PROXIES: {proxy!r} is not an IP address or network "
                "(a wildcard would let any client claim HTTPS)"
            ) from exc
    return proxies


def refuse_plain_http(settings: Settings) -> None:
    """Production serves TLS itself, or sits behind a TLS-terminating proxy it trusts."""
    if settings.mode is not Mode.PRODUCTION or settings.tls_cert is not None:
        return
    if not check_proxies(settings.trusted_proxies):
        raise ServingConfigError(
            "production mode does not serve plain HTTP: set WAJAH_TLS_CERT and WAJAH_TLS_KEY "
            "(or --tls-cert/--tls-key), or WAJAH_TRUSTED_PROXIES to the addresses of the "
            "TLS-terminating proxy in front of the service"
        )


class _TLSScope:
    """Adds the ASGI TLS extension to every request of one TLS connection."""

    def __init__(self, app: ASGIApp, tls: dict[str, Any]) -> None:
        self.app = app
        self.tls = tls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope.setdefault("extensions", {})["tls"] = self.tls
        await self.app(scope, receive, send)


TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def tls_aware(protocol: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
    """`protocol` (one of uvicorn's HTTP protocols) telling the app each TLS connection's
    negotiated version. The handshake is over when `connection_made` runs: asyncio's and
    uvloop's SSL transports call it only then."""

    class TLSAwareProtocol(protocol):  # type: ignore[valid-type,misc]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is not None:
                version = ssl_object.version()
                tls = {"tls_version": TLS_VERSIONS.get(version, 0), "version": version}
                inner: ASGIApp = self.app  # type: ignore[has-type]
                self.app = _TLSScope(inner, tls)

    TLSAwareProtocol.__name__ = f"TLSAware{protocol.__name__}"
    return TLSAwareProtocol


def http_protocol() -> type[asyncio.Protocol]:
    """uvicorn's own choice (httptools when installed, else h11), made TLS-aware."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return tls_aware(AutoHTTPProtocol)


def uvicorn_config(app: ASGIApp, settings: Settings, host: str, port: int, **extra: Any) -> Any:
    """The uvicorn `Config` that `wajah serve` runs (tests and benchmarks run the same)."""
    import uvicorn

    refuse_plain_http(settings)
    proxies = check_proxies(settings.trusted_proxies)
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "server_header": False,  # no banner: what runs here is nobody else's business
        "access_log": False,  # app.api.access_log writes one JSON line per request instead
        "proxy_headers": bool(proxies),
        "forwarded_allow_ips": proxies or None,
        "log_config": None,  # logging is set up by `app.logs.configure_logging`
    }
    if settings.tls_cert is not None and settings.tls_key is not None:
        context = tls_context(settings.tls_cert, settings.tls_key)
        options["ssl_context_factory"] = lambda _config, _default: context
        options["http"] = http_protocol()
    options.update(extra)
    return uvicorn.Config(app, **options)
