"""`voicefleet-operator`: parse flags, build the dependencies, run kopf.

Exit codes: 0 stopped by SIGTERM/SIGINT, 1 could not start (no credentials,
port in use, mandatory peering missing) or crashed, 2 bad command line.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import Any, cast

from voicefleet_api.extras import OPERATOR_MODULES, missing_extra
from voicefleet_operator.settings import OperatorConfig, UsageError, build_parser, parse_args

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

log = logging.getLogger("voicefleet_operator")


def run(config: OperatorConfig) -> None:
    """Run the operator until a signal stops it (raises on startup failures)."""
    import kopf  # here, not at import: without the extra, main() names it instead

    from voicefleet_operator import handlers, wiring
    from voicefleet_operator.deps import Deps
    from voicefleet_operator.k8s import Kube, make_api_client
    from voicefleet_operator.metrics import OperatorMetrics

    api = make_api_client(config.kubeconfig, pool_size=config.workers + 4)
    kopf.configure(verbose=config.verbose, log_prefix=True)
    if not config.verbose:  # one line per liveness probe drowns the useful lines
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    metrics = OperatorMetrics.create()
    if config.metrics_port is not None:
        metrics.serve(config.metrics_port)
    deps = Deps.create(config=config, kube=Kube(api), metrics=metrics)
    registry = wiring.build_registry(config)
    settings = wiring.build_settings(config, deps.kopf_state)
    liveness = (
        f"http://0.0.0.0:{config.health_port}/healthz" if config.health_port is not None else None
    )
    log.info(
        "starting: %s, peering %s, priority %d, %d workers",
        "all namespaces" if config.clusterwide else "namespaces " + ",".join(config.namespaces),
        "off" if config.standalone else config.peering_name,
        config.priority,
        config.workers,
    )
    asyncio.run(
        kopf.operator(
            registry=registry,
            settings=settings,
            # The async event handlers send the refreshes that must write to kopf's own
            # pool (handlers.POOL), so --workers bounds every blocking handler call.
            memo=kopf.Memo(deps=deps, **{handlers.POOL: settings.execution.executor}),
            clusterwide=config.clusterwide,
            namespaces=list(config.namespaces),
            liveness_endpoint=liveness,
            identity=cast(Any, deps.identity),  # kopf's Identity: a NewType of str it keeps private
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        config = parse_args(args)
    except UsageError as exc:
        build_parser().print_usage(sys.stderr)
        print(f"voicefleet-operator: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if message := missing_extra("voicefleet-operator", "operator", OPERATOR_MODULES):
        print(message, file=sys.stderr)
        return EXIT_FAILED
    from voicefleet_operator.k8s import ConfigError

    try:
        run(config)
    except ConfigError as exc:
        print(f"voicefleet-operator: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        if exc.errno is None:  # not a system call's refusal (TimeoutError, ...): show where
            log.exception("operator crashed")
        else:  # e.g. a port already in use
            print(f"voicefleet-operator: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception:
        log.exception("operator crashed")
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
