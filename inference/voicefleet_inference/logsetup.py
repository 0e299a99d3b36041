"""One log format for every data-plane process: the server, the router and the fetcher.

Each writes ``time level logger: message`` lines to stderr, which is what the kubelet
collects, so one ``kubectl logs`` reads alike whichever container it comes from.
"""

from __future__ import annotations

import logging
import sys
from typing import Final

__all__ = ["LOG_FORMAT", "log_to_stderr"]

LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_to_stderr(level: str | int) -> None:
    """Send the root logger's records at ``level`` (a name such as ``"info"``, or a
    number) and above to stderr in :data:`LOG_FORMAT`."""
    logging.basicConfig(
        level=level.upper() if isinstance(level, str) else level,
        format=LOG_FORMAT,
        stream=sys.stderr,
    )
