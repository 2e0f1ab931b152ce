"""A real webhook receiver on loopback: a threaded `http.server` that checks every request
with `standardwebhooks.Webhook(secret).verify(body, headers)`, exactly as a customer's
receiver would, and records what it got. Its answer is set per test (`mode`)."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    error: str | None
    at: float


@dataclass
class Receiver:
    """`mode`: "ok" (204), "fail" (500), "redirect" (302 elsewhere), "big" (200 with a
    `big_bytes` body), "stall" (wait `stall_s` before answering 200)."""

    secrets: list[str] = field(default_factory=list)
    mode: str = "ok"
    big_bytes: int = 64 * 1024 * 1024
    stall_s: float = 0.0
    received: list[Received] = field(default_factory=list)
    body_bytes_sent: int = 0
    body_write_failed: bool = False
    port: int = 0
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _arrived: threading.Condition = field(default_factory=threading.Condition)

    tls: ssl.SSLContext | None = None  # serve HTTPS (at https://localhost:<port>)

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"https://localhost:{self.port}/hooks/wajah"
        return f"http://127.0.0.1:{self.port}/hooks/wajah"

    def start(self, port: int = 0) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                receiver._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self.received) < count and time.monotonic() < deadline:
                self._arrived.wait(0.1)
        return list(self.received)

    def verify(self, body: bytes, headers: dict[str, str]) -> str | None:
        """None if any of the receiver's secrets verifies the request, else why not."""
        problem = "no secret"
        for secret in self.secrets:
            try:
                Webhook(secret).verify(body, headers)
                return None
            except WebhookVerificationError as exc:
                problem = str(exc)
        return problem

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("content-length", "0"))
        body = request.rfile.read(length)
        headers = {k.lower(): v for k, v in request.headers.items()}
        error = self.verify(body, headers)
        got = Received(request.path, headers, body, error is None, error, time.time())
        with self._arrived:  # noted on arrival: a stalled request counts as received
            self.received.append(got)
            self._arrived.notify_all()
        if self.mode == "stall":
            time.sleep(self.stall_s)
        self._answer(request)

    def _answer(self, request: BaseHTTPRequestHandler) -> None:
        if self.mode == "fail":
            request.send_response(500)
            request.send_header("content-length", "0")
            request.end_headers()
        elif self.mode == "redirect":
            request.send_response(302)
            request.send_header("location", f"http://127.0.0.1:{self.port}/elsewhere")
            request.send_header("content-length", "0")
            request.end_headers()
        elif self.mode == "big":
            request.send_response(200)
            request.send_header("content-length", str(self.big_bytes))
            request.end_headers()
            chunk = b"x" * 65536
            try:
                while self.body_bytes_sent < self.big_bytes:
                    request.wfile.write(chunk)
                    self.body_bytes_sent += len(chunk)
            except OSError:  # the sender stopped reading and closed the connection
                self.body_write_failed = True
        else:
            request.send_response(204 if self.mode == "ok" else 200)
            request.end_headers()


def self_signed_tls(directory: Path) -> ssl.SSLContext:
    """A server context with a fresh self-signed certificate for `localhost` (which no
    sender trusts)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "receiver.pem", directory / "receiver.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context


def free_port() -> int:
    """A loopback port nothing listens on (right now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
