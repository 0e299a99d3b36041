"""Replicas for a first-audio latency target, from a queueing model (issue 22, item 2).

Pure: no clock, no I/O. Operators state "first audio within 1 s for 99 % of requests",
not "10 work-seconds per replica". This turns such a target into a replica count from
what can be measured: the arrival rate of requests, the mean and the variability of
their service time, and the service time until the first audio of a request.

The model is M/G/c where ``c`` counts requests served at once, not pods: a pod with
``servers_per_replica`` workers (``spec.server.workers``; the operator gives a GPU pod at
least one per GPU) serves that many requests side by side, each worker as fast as the
measured service time says (the measurement is taken under that concurrency, so workers
that share cores are already slower in it). ``replicas`` pods are ``c = replicas x
servers_per_replica`` servers fed from one queue: the router sends each request to the
pod with the least queued work, which is close to one shared queue while no pod sits
idle beside a queue. The probability that a request waits at all is Erlang C of ``c``
servers offered ``a = rate x mean service`` (erlangs); the wait beyond that is taken as
exponential with rate ``(c - a) / mean``, stretched by the Allen-Cunneen factor
``(1 + scv) / 2`` for service times more variable than exponential (``scv``: squared
coefficient of variation). First audio comes ``first_audio`` seconds after a request
starts, so the target holds when ``P(wait > target - first_audio) <= 1 - percentile``.

Batching (``maxBatchSize`` > 1) is not a server of its own here: a request that finds
every worker busy waits for a whole engine call to end, batch or not, and the measured
service time of a batched request is its batch's duration. Counting one server per
worker therefore errs on the side of more replicas when batches form (a batch of ``b``
serves ``b`` requests in about one service time); docs/autoscaler.md says so.

Known limits, measured in ``hack/voicefleet_bench/autoscaler_policies.py`` (the
"first audio" rows in docs/autoscaler.md): the model is stationary (a backlog left by a
step is added by the caller as its own term), and with very mixed requests (short
phrases and paragraphs) the exponential tail is optimistic at high percentiles.
"""

from __future__ import annotations

import math

__all__ = ["erlang_c", "replicas_for_first_audio", "share_within", "wait_exceeds"]


def erlang_c(servers: int, offered: float) -> float:
    """Probability that an arrival waits (Erlang C); 1 when the load cannot be served."""
    if offered <= 0:
        return 0.0
    if servers <= offered:
        return 1.0
    blocking = 1.0  # Erlang B by its recurrence: stable for thousands of servers
    for k in range(1, servers + 1):
        blocking = offered * blocking / (k + offered * blocking)
    return servers * blocking / (servers - offered * (1 - blocking))


def wait_exceeds(
    servers: int, rate: float, mean_service: float, scv: float, seconds: float
) -> float:
    """``P(queueing wait > seconds)`` in M/G/c (see the module docstring)."""
    if rate <= 0 or mean_service <= 0:
        return 0.0
    offered = rate * mean_service
    waits = erlang_c(servers, offered)
    if waits >= 1.0:
        return 1.0
    decay = (servers - offered) / mean_service * 2.0 / (1.0 + max(scv, 0.0))
    return waits * math.exp(-decay * max(seconds, 0.0))


def replicas_for_first_audio(
    *,
    rate: float,
    mean_service: float,
    scv: float,
    first_audio: float,
    target: float,
    percentile: float,
    max_replicas: int,
    servers_per_replica: int = 1,
) -> int:
    """Fewest replicas (at most ``max_replicas``) whose first audio meets the target.

    ``rate`` requests/s, ``mean_service`` and ``first_audio`` seconds, ``percentile`` in
    (0, 1) (0.99 for p99), ``servers_per_replica`` requests one replica serves at once
    (its workers). 0 when nothing arrives. When even ``max_replicas`` cannot meet it (a
    target below the first audio itself), ``max_replicas``.
    """
    if rate <= 0:
        return 0
    slack = target - first_audio
    if slack < 0:
        return max_replicas
    allowed = 1.0 - percentile
    per = max(1, servers_per_replica)
    offered = rate * mean_service
    for replicas in range(max(1, math.floor(offered / per) + 1), max_replicas + 1):
        if wait_exceeds(replicas * per, rate, mean_service, scv, slack) <= allowed:
            return replicas
    return max_replicas


def share_within(
    *,
    servers: int,
    rate: float,
    mean_service: float,
    scv: float,
    first_audio: float,
    target: float,
    servers_per_replica: int = 1,
) -> float:
    """Share of requests (0..1) whose first audio the model predicts within ``target``
    with ``servers`` replicas of ``servers_per_replica`` workers each."""
    slack = target - first_audio
    if slack < 0:
        return 0.0
    if servers <= 0:
        return 0.0 if rate > 0 else 1.0
    c = servers * max(1, servers_per_replica)
    return 1.0 - wait_exceeds(c, rate, mean_service, scv, slack)
