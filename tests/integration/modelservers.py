"""Real servers that hold a url model, for the fetcher's tests and the cluster's.

- An HTTPS file server (Python's threaded HTTP server behind TLS) with a certificate for
  one IP address signed by a private CA made here with ``cryptography``, so a client must
  be told to trust it (as a pod is through ``spec.model.caConfigMap``). It keeps its own
  access log (path, status, peer), which is what shows that a fetch made no request.
  Paths under ``/private/`` need ``Authorization: Bearer <TOKEN>``; ``/stall/`` sends ten
  bytes of a promised million and then waits (a stalled download).
- SeaweedFS (``weed server -s3``: master, volume server, filer and S3 gateway in one
  process), built from its Go module on first use (``binaries.ensure_seaweedfs``). Its
  gateway checks SigV4 signatures against the identities in a JSON file written here
  (one access key with its secret): an unknown access key id is refused
  (``InvalidAccessKeyId``), and so is a right key signed with a wrong secret
  (``SignatureDoesNotMatch``).

Not a fixture module: plain functions and context managers, so each test module decides
where its servers listen (loopback, or the node's bridge address for pods).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from aws_request_signer import AwsRequestSigner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from voicefleet_bench.procs import spawned
from voicefleet_localcluster.binaries import ensure_seaweedfs
from voicefleet_localcluster.procs import free_port
from voicefleet_localcluster.testing import wait_for

TOKEN = "s3cr3t-bearer-7f1c"
"""The bearer token the HTTPS server wants under ``/private/``."""
SEAWEEDFS_KEY = "VFTESTACCESSKEY0001"
SEAWEEDFS_SECRET = "vf-test-secret-0e9c5a1b7d"
"""The one identity the SeaweedFS gateway knows (its JSON config), allowed everything."""


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca_and_server_cert(directory: Path, ip: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """(ca.crt, server.crt, server.key): a CA and a certificate for ``ip`` it signed."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("voicefleet test CA"))
        .issuer_name(_name("voicefleet test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(ip))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = (
        directory / "ca.crt",
        directory / "server.crt",
        directory / "server.key",
    )
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


@dataclass
class FileServer:
    """What the HTTPS server serves, and its own log of every request (path, status, peer)."""

    files: dict[str, bytes]
    ca: Path
    """The private CA that signed the server's certificate (PEM)."""
    base: str = ""
    log: list[tuple[str, int, str]] = field(default_factory=list)
    stall: threading.Event = field(default_factory=threading.Event)

    def gets(self, suffix: str = "") -> int:
        """Answered GETs (200) of paths ending in ``suffix``."""
        return sum(1 for path, status, _ in self.log if path.endswith(suffix) and status == 200)

    def requests(self) -> list[tuple[str, int]]:
        """(path, status) of every request so far, in order."""
        return [(path, status) for path, status, _ in self.log]


def _handler(state: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # the list is our log
            return

        def _note(self, status: int) -> None:
            state.log.append((self.path, status, self.client_address[0]))

        def _answer(self, status: int, body: bytes = b"") -> None:
            self._note(status)
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path.startswith("/private/"):
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self._answer(401, b"no")
                    return
                path = "/" + self.path.removeprefix("/private/")
            else:
                path = self.path
            if path.startswith("/stall/"):
                self._note(200)
                self.send_response(200)
                self.send_header("Content-Length", "1000000")
                self.end_headers()
                self.wfile.write(b"x" * 10)
                self.wfile.flush()
                state.stall.wait(30)
                return
            body = state.files.get(path)
            if body is None:
                self._answer(404, b"not here")
                return
            self._answer(200, body)

    return Handler


@contextmanager
def https_file_server(
    files: Mapping[str, bytes], pki: tuple[Path, Path, Path], host: str = "127.0.0.1"
) -> Iterator[FileServer]:
    """Serve ``files`` (path -> bytes) over TLS on ``host`` at a free port."""
    ca, cert, key = pki
    state = FileServer(files=dict(files), ca=ca)
    server = ThreadingHTTPServer((host, 0), _handler(state))
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    state.base = f"https://{host}:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.stall.set()
        server.shutdown()
        server.server_close()


def signed_put(url: str, body: bytes, credentials: tuple[str, str]) -> httpx.Response:
    """A PUT of ``body`` to an S3 ``url``, SigV4-signed with (access key id, secret)."""
    signer = AwsRequestSigner("us-east-1", *credentials, "s3")
    headers = signer.sign_with_headers("PUT", url, content_hash=sha(body))
    return httpx.put(url, content=body, headers=headers, timeout=30)


@contextmanager
def seaweedfs(
    data: Path, bucket: str, objects: Mapping[str, bytes], host: str = "127.0.0.1"
) -> Iterator[str]:
    """A SeaweedFS S3 gateway on ``host`` at a free port, with ``bucket`` holding
    ``objects``; its endpoint. Its master, volume server and filer run in the same
    process on free ports of ``host`` too, storing under ``data``; the gateway knows one
    identity, :data:`SEAWEEDFS_KEY` with :data:`SEAWEEDFS_SECRET`."""
    weed = ensure_seaweedfs()  # built on first use, with progress on stderr
    store = data / "seaweedfs"
    store.mkdir()
    identities = store / "s3.json"
    identities.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "voicefleet-tests",
                        "credentials": [
                            {"accessKey": SEAWEEDFS_KEY, "secretKey": SEAWEEDFS_SECRET}
                        ],
                        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                    }
                ]
            }
        )
    )
    ports = {name: free_port(host) for name in ("master", "volume", "filer", "s3")}
    grpc = {name: free_port(host) for name in ports}
    argv = [
        str(weed), "server", f"-dir={store}", f"-ip={host}", f"-ip.bind={host}",
        "-s3", f"-s3.config={identities}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-master.volumeSizeLimitMB=128", "-volume.max=8",
        *(f"-{name}.port={port}" for name, port in ports.items()),
        *(f"-{name}.port.grpc={port}" for name, port in grpc.items()),
    ]  # fmt: skip
    endpoint = f"http://{host}:{ports['s3']}"
    with spawned(argv, ports["s3"], "/healthz", store, "seaweedfs", host=host) as (proc, _):
        try:
            credentials = (SEAWEEDFS_KEY, SEAWEEDFS_SECRET)
            # The gateway answers before its filer has joined: make the bucket once it can.
            wait_for(
                lambda: _created(endpoint, bucket, credentials),
                timeout=90,
                interval=0.5,
                what=f"SeaweedFS to create the bucket {bucket}",
            )
            for key, body in objects.items():
                response = signed_put(f"{endpoint}/{bucket}/{key}", body, credentials)
                assert response.status_code == 200, response.text
            yield endpoint
        finally:
            # A store thrown away with the test: no graceful stop (its volume server and
            # filer take 25 s to flush and say goodbye on SIGTERM).
            proc.kill()


def _created(endpoint: str, bucket: str, credentials: tuple[str, str]) -> bool:
    """Whether the bucket exists now (made by this PUT, or by an earlier one)."""
    response = signed_put(f"{endpoint}/{bucket}", b"", credentials)
    if response.status_code not in (200, 409):
        raise AssertionError(f"HTTP {response.status_code}: {response.text[:300]}")
    return True
