"""``voicefleet-router``: one endpoint for every TTSVoice (see ``docs/router.md``).

Nothing happens at import time. Exit status: 0 after SIGTERM/SIGINT, 1 if it could not
start (port taken, no Kubernetes configuration), 2 for bad settings.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from voicefleet_inference.logsetup import log_to_stderr

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    from voicefleet_api.extras import ROUTER_MODULES, missing_extra

    if message := missing_extra("voicefleet-router", "router", ROUTER_MODULES):
        print(message, file=sys.stderr)
        return 1
    from voicefleet_inference.router.settings import SettingsError, load_settings

    try:
        settings = load_settings(argv)
        token = settings.token()
        metrics_token = settings.scrape_token()
    except SettingsError as exc:
        print(f"voicefleet-router: error: {exc}", file=sys.stderr)
        return 2
    log_to_stderr(settings.log_level)
    import uvloop

    from voicefleet_inference.router.service import serve

    try:
        # libuv's event loop: socket reads and writes, timers and callbacks in C (measured
        # in docs/router.md, "Overhead").
        return uvloop.run(serve(settings, token, metrics_token))
    except ValueError as exc:  # a bad static upstream entry
        print(f"voicefleet-router: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # e.g. no kubeconfig and not in a cluster
        logging.getLogger("voicefleet.router").error("cannot start: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
