"""TLS, trusted proxies and response headers on a real uvicorn server (`app.serving`).

The server runs the configuration `wajah serve` runs, on a free port in a thread of this
process, sharing the session's runtime; the clients are the ssl module and http.client
speaking real TLS 1.3, 1.2 and (refused) 1.1 over loopback, with `trustme` certificates.
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trustme

from app.main import create_app
from app.runtime import Runtime
from app.serving import ServingConfigError, tls_context, uvicorn_config
from app.settings import Settings
from tests.app.api.conftest import TEST_ROOT_KEY


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def cert_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    issued = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = directory / "cert.pem", directory / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    return cert, key


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(runtime: Runtime, **changes: Any) -> Iterator[int]:
    """The session runtime behind uvicorn as `wajah serve` configures it; yields the port."""
    import uvicorn

    settings = runtime.settings.model_copy(update=changes)
    port = free_port()
    config = uvicorn_config(create_app(settings, runtime), settings, "127.0.0.1", port)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def client_context(ca: trustme.CA, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1_1: that is the point
        context.minimum_version = context.maximum_version = version
    return context


def get(connection: http.client.HTTPConnection, path: str) -> tuple[int, dict[str, str]]:
    connection.request("GET", path)
    response = connection.getresponse()
    response.read()
    return response.status, {k.lower(): v for k, v in response.getheaders()}


def test_tls_13_is_served_with_hsts_and_no_warning(
    runtime: Runtime, ca: trustme.CA, cert_files: tuple[Path, Path]
) -> None:
    cert, key = cert_files
    with serving(runtime, tls_cert=cert, tls_key=key) as port:
        context = ssl.create_default_context()
        ca.configure_trust(context)  # a default client: offers 1.2 and 1.3, gets 1.3
        connection = http.client.HTTPSConnection("127.0.0.1", port, context=context)
        status, headers = get(connection, "/healthz")
        assert connection.sock.version() == "TLSv1.3"
        assert status == 200
        assert headers["strict-transport-security"] == (
            "max-age=63072000; includeSubDomains; preload"
        )
        assert headers["x-content-type-options"] == "nosniff"
        assert "server" not in headers
        assert "wajah-tls-warning" not in headers
        status, headers = get(connection, "/v1/subjects")  # no key: 401, still no-store
        assert (status, headers["cache-control"]) == (401, "no-store")
        connection.close()


def test_tls_12_is_served_and_flagged_on_every_response(
    runtime: Runtime, ca: trustme.CA, cert_files: tuple[Path, Path]
) -> None:
    cert, key = cert_files
    with serving(runtime, tls_cert=cert, tls_key=key) as port:
        context = client_context(ca, ssl.TLSVersion.TLSv1_2)
        connection = http.client.HTTPSConnection("127.0.0.1", port, context=context)
        for path in ("/healthz", "/readyz", "/v1/subjects"):  # one keep-alive connection
            _, headers = get(connection, path)
            assert headers["wajah-tls-warning"] == "tls1.2-deprecated", path
            assert "strict-transport-security" in headers
        assert connection.sock.version() == "TLSv1.2"
        assert connection.sock.cipher()[0].startswith("ECDHE-")  # forward secrecy
        connection.close()


def test_tls_11_and_plain_http_are_refused(
    runtime: Runtime, ca: trustme.CA, cert_files: tuple[Path, Path]
) -> None:
    cert, key = cert_files
    with serving(runtime, tls_cert=cert, tls_key=key) as port:
        context = client_context(ca, ssl.TLSVersion.TLSv1_1)
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer 1.1 at all
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            pytest.raises(ssl.SSLError) as refused,
        ):
            context.wrap_socket(raw, server_hostname="127.0.0.1")
        # The server answers a 1.1 hello with a protocol_version alert, or (uvloop) by
        # closing the connection mid-handshake; either way no session.
        assert any(w in str(refused.value).upper() for w in ("PROTOCOL_VERSION", "EOF")), str(
            refused.value
        )
        # The TLS port does not answer HTTP in the clear.
        plain = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            get(plain, "/healthz")
        # And a good client still gets in afterwards.
        good = http.client.HTTPSConnection(
            "127.0.0.1", port, context=client_context(ca, ssl.TLSVersion.TLSv1_3)
        )
        assert get(good, "/healthz")[0] == 200
        good.close()


def test_forwarded_proto_counts_only_from_a_trusted_proxy(runtime: Runtime) -> None:
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
    with serving(runtime, trusted_proxies="127.0.0.1") as port:
        connection = http.client.HTTPConnection("127.0.0.1", port)
        connection.request("GET", "/healthz", headers=forwarded)
        response = connection.getresponse()
        response.read()
        assert response.getheader("strict-transport-security") is not None
        assert get(connection, "/healthz")[1].get("strict-transport-security") is None
    with serving(runtime, trusted_proxies="10.1.2.0/24") as port:  # loopback is not the proxy
        connection = http.client.HTTPConnection("127.0.0.1", port)
        connection.request("GET", "/healthz", headers=forwarded)
        response = connection.getresponse()
        response.read()
        assert response.getheader("strict-transport-security") is None


def test_plain_http_has_the_other_headers_but_no_hsts(runtime: Runtime) -> None:
    with serving(runtime) as port:
        connection = http.client.HTTPConnection("127.0.0.1", port)
        status, headers = get(connection, "/v1/org/settings")
        assert (status, headers["cache-control"], headers["x-content-type-options"]) == (
            401,
            "no-store",
            "nosniff",
        )
        assert "strict-transport-security" not in headers
        assert "server" not in headers
        status, headers = get(connection, "/healthz")
        assert "cache-control" not in headers  # only /v1 carries data worth refusing to cache


def production(**changes: Any) -> Settings:
    return Settings(mode="production", root_key=TEST_ROOT_KEY, **changes)  # type: ignore[arg-type]


def test_production_refuses_plain_http_unless_behind_a_trusted_proxy(
    cert_files: tuple[Path, Path],
) -> None:
    with pytest.raises(ServingConfigError, match="does not serve plain HTTP"):
        uvicorn_config(None, production(), "127.0.0.1", 0)  # type: ignore[arg-type]
    cert, key = cert_files
    assert uvicorn_config(None, production(tls_cert=cert, tls_key=key), "127.0.0.1", 0)  # type: ignore[arg-type]
    proxied = uvicorn_config(None, production(trusted_proxies="10.0.0.7, 10.8.0.0/16"), "h", 0)  # type: ignore[arg-type]
    assert (proxied.proxy_headers, proxied.forwarded_allow_ips) == (
        True,
        ["10.0.0.7", "10.8.0.0/16"],
    )
    development = uvicorn_config(None, Settings(), "127.0.0.1", 0)  # type: ignore[arg-type]
    assert development.proxy_headers is False  # uvicorn's default would trust 127.0.0.1


@pytest.mark.parametrize("proxies", ["*", "proxy.internal", "10.0.0.1,nonsense", "300.1.1.1"])
def test_trusted_proxies_must_be_addresses(proxies: str) -> None:
    with pytest.raises(ServingConfigError, match="not an IP address or network"):
        uvicorn_config(None, production(trusted_proxies=proxies), "h", 0)  # type: ignore[arg-type]


def test_bad_certificate_files_get_a_clear_error(
    tmp_path: Path, ca: trustme.CA, cert_files: tuple[Path, Path]
) -> None:
    cert, key = cert_files
    with pytest.raises(ServingConfigError, match="does not exist"):
        tls_context(tmp_path / "missing.pem", key)
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n")
    with pytest.raises(ServingConfigError, match="not a PEM certificate chain"):
        tls_context(garbage, key)
    other_key = tmp_path / "other-key.pem"
    ca.issue_cert("other.example").private_key_pem.write_to_path(str(other_key))
    with pytest.raises(ServingConfigError, match="its matching private key"):
        tls_context(cert, other_key)
    with pytest.raises(ValueError, match="both WAJAH_TLS_CERT and WAJAH_TLS_KEY"):
        Settings(tls_cert=cert)


def test_wajah_serve_refuses_bad_tls_options_before_loading_anything(tmp_path: Path) -> None:
    env = {**os.environ, "WAJAH_HOME": str(tmp_path / "home"), "WAJAH_ROOT_KEY": TEST_ROOT_KEY}
    env.pop("WAJAH_TLS_CERT", None)

    def serve(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-c", "from app.cli import main; main()", "serve", *args],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=120,
        )
        done.stderr = " ".join(done.stderr.split())  # rich wraps long lines
        return done

    missing = serve("--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", str(tmp_path / "k"))
    assert missing.returncode == 2
    assert "TLS certificate file" in missing.stderr and "does not exist" in missing.stderr
    half = serve("--tls-cert", str(tmp_path / "nope.pem"))
    assert half.returncode == 2 and "both WAJAH_TLS_CERT and WAJAH_TLS_KEY" in half.stderr
    plain = serve(WAJAH_MODE="production")
    assert plain.returncode == 2 and "does not serve plain HTTP" in plain.stderr
    assert not (tmp_path / "home" / "models").exists()  # refused before preparing the pack
