"""``voicefleet-server``: one TTS voice over HTTP (see ``docs/server.md``).

Parses flags and environment into :class:`~voicefleet_inference.settings.Settings`,
configures logging and runs :func:`~voicefleet_inference.server.runner.serve`. Nothing
happens at import time.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from voicefleet_inference.logsetup import log_to_stderr

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 after a drain, 1 if the engine failed to load (or the ``server``
    extra is missing), 2 for bad settings."""
    from voicefleet_api.extras import SERVER_MODULES, missing_extra

    if message := missing_extra("voicefleet-server", "server", SERVER_MODULES):
        print(message, file=sys.stderr)
        return 1
    from voicefleet_inference.settings import SettingsError, load_settings

    try:
        settings = load_settings(argv)
    except SettingsError as exc:
        print(f"voicefleet-server: error: {exc}", file=sys.stderr)
        return 2
    log_to_stderr(settings.log_level)
    from voicefleet_inference.malloc_tuning import fix_malloc_thresholds
    from voicefleet_inference.server.runner import serve

    fix_malloc_thresholds()

    last_words = (
        Path(settings.termination_message_path) if settings.termination_message_path else None
    )
    return asyncio.run(serve(settings, last_words=last_words))


if __name__ == "__main__":
    sys.exit(main())
