"""The termination message: one line a dying server leaves for ``kubectl describe``.

Kubernetes copies the file at a container's ``terminationMessagePath`` into
``status.containerStatuses[].lastState.terminated.message`` when the container exits.
The inference server writes one line there before exiting non-zero; the operator reads
it back into the TTSVoice's ``Degraded`` condition. The line starts with a CamelCase
reason the operator knows (``ModelLoadFailed: unknown model 'x': use ...``), so the
condition's reason is precise without parsing free text. Both planes use this module,
so the format has one definition.
"""

from __future__ import annotations

import re
from typing import Final

PATH: Final = "/dev/termination-log"
"""The container's ``terminationMessagePath`` (Kubernetes' default); the operator also
hands it to the server in :data:`voicefleet_api.env.TERMINATION_MESSAGE_PATH`."""
POLICY: Final = "FallbackToLogsOnError"
"""Without a message, a failed container's log tail stands in (a crash before the
server could write, e.g. a Python import error)."""
MAX_BYTES: Final = 4096
"""The kubelet keeps at most 4096 bytes of the file."""

MODEL_LOAD_FAILED: Final = "ModelLoadFailed"
"""The server could not load its model (unknown name, missing file, broken weights)."""
MODEL_FETCH_FAILED: Final = "ModelFetchFailed"
"""The fetcher could not download a url model (HTTP status, refused credential, timeout)."""
MODEL_DIGEST_MISMATCH: Final = "ModelDigestMismatch"
"""A downloaded file's sha256 is not the one the TTSVoice names; it was deleted."""
KNOWN_REASONS: Final = frozenset({MODEL_LOAD_FAILED, MODEL_FETCH_FAILED, MODEL_DIGEST_MISMATCH})

_LINE: Final = re.compile(r"^([A-Z][A-Za-z0-9]*): (.+)$", re.DOTALL)


def format_message(reason: str, detail: str) -> str:
    """``"<Reason>: <detail>"`` on one line, cut to what the kubelet keeps."""
    if reason not in KNOWN_REASONS:
        raise ValueError(f"unknown termination reason {reason!r}")
    line = " ".join(f"{reason}: {detail}".split())
    return line.encode()[:MAX_BYTES].decode(errors="ignore")


def parse_message(message: str) -> tuple[str, str] | None:
    """``(reason, detail)`` for a message written by :func:`format_message`; else None."""
    found = _LINE.match(message.strip())
    if found is None or found.group(1) not in KNOWN_REASONS:
        return None
    return found.group(1), found.group(2).strip()
