"""The server's last words: one line in the termination-message file before a failed exit.

On Kubernetes this is what ``kubectl describe pod`` and the TTSVoice's ``Degraded``
condition show (see :mod:`voicefleet_api.termination`), instead of a bare exit code.
Only written when the operator named a file (``VOICEFLEET_TERMINATION_MESSAGE_PATH``):
on a laptop the log says the same and nothing is written outside the process.
"""

from __future__ import annotations

import logging
from pathlib import Path

from voicefleet_api.termination import format_message

__all__ = ["write_last_words"]

log = logging.getLogger("voicefleet.server")


def write_last_words(path: Path | None, reason: str, detail: str) -> None:
    """Write ``"<reason>: <detail>"`` to ``path``; a failure to write is logged, not raised.

    The process is about to exit with its own error; a read-only or missing file must
    not replace that error with another one.
    """
    if path is None:
        return
    try:
        path.write_text(format_message(reason, detail) + "\n", encoding="utf-8")
    except OSError as exc:
        log.warning("could not write the termination message to %s: %s", path, exc)
