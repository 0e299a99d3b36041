"""``voicefleet-fetch``: download a url model and its config, checked by sha256, before the server.

A TTSVoice with ``spec.model.url`` gets this command as an init container (the server
image, same user, read-only root): it streams the ``.onnx`` and its ``.onnx.json`` to the
model volume, hashing while it writes, and moves each file into place only when its
digest is the one the voice names. So the server either starts on exactly the bytes the
user pinned or never starts: a file with another digest is deleted, never renamed into
place. Failures end the process with exit status 1 and one line in the container's
termination message (``ModelFetchFailed: ...`` / ``ModelDigestMismatch: ...``, see
:mod:`voicefleet_api.termination`), which the operator copies into the voice's
``Degraded`` condition. That line names the URL (which by the CRD's rules never carries
user info or a query) and the cause; credentials are never printed or logged.

With the operator's per-node cache the volume is a hostPath shared by every pod on the
node; a file already there whose digest matches is used as is (no request at all), and
concurrent fetchers write to private temporary files and rename, so they never see each
other's half-written bytes.

``s3://bucket/key`` urls are read from an S3-compatible endpoint (path-style) or from AWS
S3 (virtual-hosted), signed with AWS Signature V4 by ``aws-request-signer``: a 12 kB
dependency-free signer, chosen over botocore (32 MB, and it pins ``python-dateutil<3``,
which the ``kubernetes`` client of the other extras cannot share) and over
boto3/aiobotocore (botocore again, plus their own HTTP stacks). Transport, TLS and
streaming are httpx's for both schemes, so a CA bundle works the same for both.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import ssl
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final
from urllib.parse import quote

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from voicefleet_api import env as env_names
from voicefleet_api import termination
from voicefleet_inference.logsetup import log_to_stderr

if TYPE_CHECKING:
    import httpx

__all__ = [
    "FetchError",
    "FetchSettings",
    "Remote",
    "S3Target",
    "fetch_file",
    "fetch_model",
    "main",
]

log = logging.getLogger("voicefleet.fetch")

CHUNK_BYTES: Final = 1 << 20
"""Read size while streaming: memory stays flat whatever the model's size."""
_SHA256: Final = re.compile(r"^[0-9a-f]{64}$")
_S3_URL: Final = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(.+)$")
_S3_CODE: Final = re.compile(rb"<Code>([A-Za-z0-9.]{1,64})</Code>")
_MAX_REDIRECTS: Final = 5


class FetchError(Exception):
    """A download that cannot give the server its model; ``reason`` is a termination reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail

    def termination_line(self) -> str:
        return termination.format_message(self.reason, self.detail)


@dataclass(frozen=True, slots=True)
class Remote:
    """One file to fetch: where it is and the digest its bytes must have."""

    url: str
    sha256: str


@dataclass(frozen=True, slots=True)
class S3Target:
    """How ``s3://`` urls are reached and signed (``endpoint`` ``None``: AWS S3)."""

    region: str = "us-east-1"
    endpoint: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None

    def http_url(self, url: str) -> str:
        """``s3://bucket/key`` as the HTTP(S) URL of the object (key percent-encoded once)."""
        found = _S3_URL.match(url)
        if found is None:
            raise FetchError(termination.MODEL_FETCH_FAILED, f"{url}: not an s3://bucket/key url")
        bucket, key = found.group(1), quote(found.group(2), safe="/-_.~")
        if self.endpoint is not None:
            endpoint = self.endpoint.rstrip("/")
            # httpx leaves a default port out of Host; the signature must cover the same.
            for scheme, port in (("https://", ":443"), ("http://", ":80")):
                if endpoint.startswith(scheme) and endpoint.endswith(port):
                    endpoint = endpoint.removesuffix(port)
            return f"{endpoint}/{bucket}/{key}"
        return f"https://{bucket}.s3.{self.region}.amazonaws.com/{key}"

    def headers(self, http_url: str) -> dict[str, str]:
        """SigV4 headers for a GET of ``http_url``; none for anonymous access."""
        if self.access_key_id is None or self.secret_access_key is None:
            return {}
        from aws_request_signer import AwsRequestSigner  # deferred: only s3 needs it

        signer = AwsRequestSigner(
            region=self.region,
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
            service="s3",
            session_token=self.session_token,
        )
        signed: dict[str, str] = signer.sign_with_headers("GET", http_url)
        return signed


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _status_detail(url: str, status: int, phrase: str, head: bytes) -> str:
    """Why a response is not the file, in words a user acts on (never its headers)."""
    code = _S3_CODE.search(head)
    s3_code = f", {code.group(1).decode()}" if code else ""
    what = f"HTTP {status} {phrase}".strip() + s3_code
    if status == 404:
        return f"{url}: not found ({what})"
    if status in (401, 403):
        return f"{url}: the credential was refused ({what}); check spec.model.credentialsSecret"
    return f"{url}: the server answered {what}"


def fetch_file(
    client: httpx.Client,
    remote: Remote,
    dest: Path,
    *,
    s3: S3Target | None = None,
    token: str | None = None,
    timeout: float = 30.0,
) -> bool:
    """Make ``dest`` hold ``remote``'s bytes; True if downloaded, False if already there.

    Raises :class:`FetchError`; on any failure ``dest`` is untouched and no temporary
    file is left behind.
    """
    import httpx

    if dest.is_file():
        if sha256_of(dest) == remote.sha256:
            log.info("%s: already in %s with the expected sha256, not downloaded", remote.url, dest)
            return False
        log.warning("%s: %s has another sha256, downloading again", remote.url, dest)
    if remote.url.startswith("s3://"):
        target = s3 or S3Target()
        http_url = target.http_url(remote.url)
        headers = target.headers(http_url)
    else:
        http_url = remote.url
        headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as exc:
        raise FetchError(
            termination.MODEL_FETCH_FAILED,
            f"{remote.url}: cannot write to {dest.parent} ({exc.strerror}); the model volume "
            f"must be writable by uid {os.getuid()}",
        ) from None
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    size = 0
    started = time.monotonic()
    kept = False
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with client.stream("GET", http_url, headers=headers) as response:
                    if response.status_code != 200:
                        head = b""
                        for part in response.iter_bytes(1024):
                            head = part
                            break
                        raise FetchError(
                            termination.MODEL_FETCH_FAILED,
                            _status_detail(
                                remote.url, response.status_code, response.reason_phrase, head
                            ),
                        )
                    if remote.url.startswith("https://") and response.url.scheme != "https":
                        raise FetchError(
                            termination.MODEL_FETCH_FAILED,
                            f"{remote.url}: redirected to a plain-http address; refused",
                        )
                    for chunk in response.iter_bytes(CHUNK_BYTES):
                        digest.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
            except httpx.TimeoutException as exc:
                raise FetchError(
                    termination.MODEL_FETCH_FAILED,
                    f"{remote.url}: timed out ({type(exc).__name__}, {timeout:g} s without "
                    f"progress) after {size} bytes",
                ) from None
            except httpx.HTTPError as exc:
                raise FetchError(
                    termination.MODEL_FETCH_FAILED, f"{remote.url}: {type(exc).__name__}: {exc}"
                ) from None
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != remote.sha256:
            raise FetchError(
                termination.MODEL_DIGEST_MISMATCH,
                f"{remote.url}: sha256 {actual} of {size} bytes is not the expected "
                f"{remote.sha256}; the file was deleted",
            )
        tmp.chmod(0o444)
        os.replace(tmp, dest)
        kept = True
    finally:
        if not kept:
            tmp.unlink(missing_ok=True)
    seconds = time.monotonic() - started
    log.info(
        "%s: %d bytes in %.1f s, sha256 as expected, saved as %s", remote.url, size, seconds, dest
    )
    return True


def _ssl_context(ca_file: Path | None, ca_pem: str | None) -> ssl.SSLContext:
    """The system's CAs, or only the given ones (a private CA is pinned, not added)."""
    if ca_pem:
        return ssl.create_default_context(cadata=ca_pem)
    if ca_file is not None:
        return ssl.create_default_context(cafile=str(ca_file))
    return ssl.create_default_context()


class FetchSettings(BaseSettings):
    """What to fetch, from ``VOICEFLEET_FETCH_*`` (the operator) or flags (by hand).

    Credentials come only from the environment (a flag would show in ``ps``); they are
    :class:`~pydantic.SecretStr`, so a settings dump or error never prints them.
    """

    model_config = SettingsConfigDict(
        env_prefix=env_names.FETCH_PREFIX, extra="ignore", frozen=True, validate_by_name=True
    )

    url: str
    """The ``.onnx`` model: ``https://...`` or ``s3://bucket/key``."""
    sha256: str
    config_url: str | None = None
    """The ``.onnx.json``; ``None``: ``<url>.json``."""
    config_sha256: str
    dest: Path
    """Where the model lands; its config goes beside it as ``<dest>.json``."""
    ca_file: Path | None = None
    ca_pem: str | None = None
    s3_endpoint: str | None = None
    s3_region: str = "us-east-1"
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    token: SecretStr | None = None
    timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    """Longest wait for a connection or for the next bytes (not for the whole file)."""
    termination_message_path: str = Field(
        default="", validation_alias=env_names.TERMINATION_MESSAGE_PATH
    )

    @field_validator("url", "config_url")
    @classmethod
    def _scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "s3://")):
            raise ValueError(f"{value!r}: only https:// and s3:// urls are fetched")
        return value

    @field_validator("sha256", "config_sha256")
    @classmethod
    def _digest(cls, value: str) -> str:
        if not _SHA256.match(value):
            raise ValueError("must be 64 lowercase hex digits")
        return value

    @field_validator("dest")
    @classmethod
    def _dest(cls, value: Path) -> Path:
        if value.suffix != ".onnx":
            raise ValueError(f"{value} must end in .onnx (the server names the model after it)")
        return value

    def remotes(self) -> tuple[tuple[Remote, Path], tuple[Remote, Path]]:
        config_url = self.config_url or f"{self.url}.json"
        return (
            (Remote(self.url, self.sha256), self.dest),
            (Remote(config_url, self.config_sha256), self.dest.with_name(self.dest.name + ".json")),
        )

    def s3_target(self) -> S3Target:
        def plain(secret: SecretStr | None) -> str | None:
            return None if secret is None else secret.get_secret_value()

        return S3Target(
            region=self.s3_region,
            endpoint=self.s3_endpoint,
            access_key_id=plain(self.access_key_id),
            secret_access_key=plain(self.secret_access_key),
            session_token=plain(self.session_token),
        )


def fetch_model(settings: FetchSettings) -> list[Path]:
    """Fetch the model and its config; returns the files actually downloaded."""
    import httpx

    timeout = httpx.Timeout(settings.timeout_seconds)
    try:
        verify = _ssl_context(settings.ca_file, settings.ca_pem)
    except (OSError, ssl.SSLError) as exc:
        raise FetchError(
            termination.MODEL_FETCH_FAILED,
            f"the CA certificate(s) given for the download cannot be used: {exc}",
        ) from None
    token = None if settings.token is None else settings.token.get_secret_value()
    downloaded: list[Path] = []
    with httpx.Client(
        timeout=timeout,
        verify=verify,
        follow_redirects=True,
        max_redirects=_MAX_REDIRECTS,
        trust_env=False,  # no proxy or netrc credentials from the environment
        headers={"User-Agent": "voicefleet-fetch"},
    ) as client:
        for remote, dest in settings.remotes():
            if fetch_file(
                client,
                remote,
                dest,
                s3=settings.s3_target(),
                token=token,
                timeout=settings.timeout_seconds,
            ):
                downloaded.append(dest)
    return downloaded


def _parse_flags(argv: Sequence[str] | None) -> dict[str, object]:
    parser = argparse.ArgumentParser(
        prog="voicefleet-fetch",
        description="Download a Piper model and its config, checked by sha256 "
        f"(every flag also reads {env_names.FETCH_PREFIX}<NAME>; credentials only from "
        f"{env_names.FETCH_ACCESS_KEY_ID}, {env_names.FETCH_SECRET_ACCESS_KEY}, "
        f"{env_names.FETCH_SESSION_TOKEN} and {env_names.FETCH_TOKEN}).",
    )
    parser.add_argument("--url", help="the .onnx model: https://... or s3://bucket/key")
    parser.add_argument("--sha256", help="its sha256 (64 hex digits)")
    parser.add_argument("--config-url", help="the .onnx.json config (default <url>.json)")
    parser.add_argument("--config-sha256", help="the config's sha256")
    parser.add_argument("--dest", help="where the .onnx lands (config beside it as .json)")
    parser.add_argument("--ca-file", help="trust only the CA certificate(s) in this PEM file")
    parser.add_argument("--s3-endpoint", help="S3-compatible endpoint (default AWS S3)")
    parser.add_argument("--s3-region", help="region to sign for (default us-east-1)")
    parser.add_argument("--timeout-seconds", type=float, help="longest wait for bytes (30)")
    parser.add_argument("--termination-message-path", help="where to write the failure line")
    args = parser.parse_args(argv)
    return {k: v for k, v in vars(args).items() if v is not None}


def _leave_last_words(line: str, path: str) -> None:
    print(f"voicefleet-fetch: {line}", file=sys.stderr)
    if path:
        try:
            Path(path).write_text(line + "\n", encoding="utf-8")
        except OSError as exc:
            print(f"voicefleet-fetch: cannot write {path}: {exc}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0 when both files are in place, 1 when the fetch failed, 2 for bad input."""
    from voicefleet_api.extras import missing_extra

    if message := missing_extra("voicefleet-fetch", "server", ("httpx", "aws_request_signer")):
        print(message, file=sys.stderr)
        return 1
    log_to_stderr(logging.INFO)
    flags = _parse_flags(argv)
    try:
        settings = FetchSettings(**flags)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        line = termination.format_message(
            termination.MODEL_FETCH_FAILED, f"bad fetch settings: {problems}"
        )
        _leave_last_words(line, os.environ.get(env_names.TERMINATION_MESSAGE_PATH, ""))
        return 2
    try:
        fetch_model(settings)
    except FetchError as exc:
        _leave_last_words(exc.termination_line(), settings.termination_message_path)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
