"""The router's decisions without a server: pod choice, hold/reject rules, the load view.

Everything here is a pure function or the event-loop-only Fleet driven with a fake clock
(our own seam), so the rules are checked exactly and fast.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from voicefleet_api.load import PodLoad
from voicefleet_inference.router.choice import Candidate, Hold, Reject, Route, choose, decide
from voicefleet_inference.router.fleet import Fleet, PodInfo, UnknownVoice, VoiceInfo, VoiceKey
from voicefleet_inference.router.settings import Policy

RNG = random.Random(1)


def pods(*work: float, **flags: bool) -> list[Candidate]:
    return [Candidate(key=f"ns/p{i}", work_s=w, in_flight=0, **flags) for i, w in enumerate(work)]


# -- choose -------------------------------------------------------------------------------


def test_jsq_picks_the_pod_with_the_least_estimated_work_not_the_fewest_requests() -> None:
    candidates = [
        Candidate("ns/a", work_s=3.6, in_flight=1),  # one paragraph
        Candidate("ns/b", work_s=0.9, in_flight=3),  # three short phrases
        Candidate("ns/c", work_s=2.0, in_flight=2),
    ]
    assert choose(Policy.JSQ_WORK, candidates, rng=RNG).key == "ns/b"
    assert choose(Policy.LEAST_REQUEST, candidates, rng=RNG).key == "ns/a"


@pytest.mark.parametrize("policy", list(Policy))
@pytest.mark.parametrize("flag", ["draining", "full", "unreachable"])
def test_a_draining_full_or_unreachable_pod_never_gets_a_request(policy: Policy, flag: str) -> None:
    candidates = [*pods(0.0, **{flag: True}), Candidate("ns/z", work_s=50.0, in_flight=9)]
    rng = random.Random(3)
    for turn in range(50):
        assert choose(policy, candidates, rng=rng, turn=turn).key == "ns/z"


@pytest.mark.parametrize("policy", list(Policy))
def test_no_eligible_pod_is_none(policy: Policy) -> None:
    assert choose(policy, [], rng=RNG) is None
    assert choose(policy, pods(0.0, ready=False), rng=RNG) is None


def test_ties_between_idle_pods_are_broken_at_random_then_by_count() -> None:
    rng = random.Random(5)
    chosen = Counter(choose(Policy.JSQ_WORK, pods(0, 0, 0, 0), rng=rng).key for _ in range(400))
    assert set(chosen) == {"ns/p0", "ns/p1", "ns/p2", "ns/p3"}
    assert min(chosen.values()) > 60
    busy_count = [Candidate("ns/a", 0.0, 2), Candidate("ns/b", 0.0, 0)]
    assert choose(Policy.JSQ_WORK, busy_count, rng=rng).key == "ns/b"


def test_round_robin_cycles_in_key_order_and_random_spreads() -> None:
    candidates = pods(5, 0, 9)
    assert [choose(Policy.ROUND_ROBIN, candidates, rng=RNG, turn=t).key for t in range(4)] == [
        "ns/p0",
        "ns/p1",
        "ns/p2",
        "ns/p0",
    ]
    rng = random.Random(2)
    seen = Counter(choose(Policy.RANDOM, candidates, rng=rng).key for _ in range(300))
    assert len(seen) == 3


def test_many_pods_use_power_of_two_choices() -> None:
    """Above the threshold JSQ compares two random pods: never the worst of the pair,
    rarely the global best, and it never scans them all (the best is not always picked)."""
    work = list(range(20))
    candidates = pods(*work)
    rng = random.Random(11)
    picks = [choose(Policy.JSQ_WORK, candidates, rng=rng, sample_above=8) for _ in range(2000)]
    ranks = Counter(int(p.key.removeprefix("ns/p")) for p in picks)
    assert 19 not in ranks  # the worst pod loses every pairing
    assert 0 < ranks[0] < 400  # the best wins only when sampled (~10 % of pairs)
    mean_rank = sum(r * n for r, n in ranks.items()) / len(picks)
    assert mean_rank < 7.5  # min of two uniform draws: about n/3
    # under the threshold the scan is exhaustive
    assert choose(Policy.JSQ_WORK, candidates[:8], rng=rng, sample_above=8).key == "ns/p0"


# -- decide -------------------------------------------------------------------------------


def test_decide_routes_skipping_pods_already_tried_for_this_request() -> None:
    verdict = decide(Policy.JSQ_WORK, pods(0.1, 5.0), tried={"ns/p0"}, rng=RNG)
    assert verdict == Route(pods(0.1, 5.0)[1])


def test_every_ready_pod_full_is_429_not_a_hold() -> None:
    candidates = pods(1.0, 2.0, full=True)
    assert decide(Policy.JSQ_WORK, candidates, rng=RNG) == Reject(
        429, "every ready pod of the voice is full"
    )


@pytest.mark.parametrize(
    "candidates",
    [
        [],  # scaled to zero
        pods(0.0, ready=False),  # starting
        pods(0.0, 0.0, draining=True),  # every pod going away
        pods(0.0, unreachable=True),  # killed, not yet gone from the watch
    ],
)
def test_no_ready_pod_holds_until_the_hold_queue_is_full(candidates: list[Candidate]) -> None:
    assert decide(Policy.JSQ_WORK, candidates, held=0, max_held=2, rng=RNG) == Hold()
    assert decide(Policy.JSQ_WORK, candidates, held=1, max_held=2, rng=RNG) == Hold()
    verdict = decide(Policy.JSQ_WORK, candidates, held=2, max_held=2, rng=RNG)
    assert isinstance(verdict, Reject)
    assert verdict.status == 503
    assert decide(Policy.JSQ_WORK, candidates, held=0, max_held=0, rng=RNG) == verdict


@pytest.mark.parametrize("policy", list(Policy))
def test_a_silent_pod_is_never_taken_for_idle_while_a_pod_that_reports_can_serve(
    policy: Policy,
) -> None:
    candidates = [Candidate("ns/a", 0.0, 0, silent=True), Candidate("ns/b", 30.0, 9)]
    for turn in range(6):
        chosen = choose(policy, candidates, rng=random.Random(turn), turn=turn)
        assert chosen is not None
        assert chosen.key == "ns/b"
    # Every pod silent (e.g. the router just started): the choice still routes.
    only_silent = [Candidate("ns/a", 0.0, 0, silent=True)]
    assert decide(policy, only_silent, rng=RNG) == Route(only_silent[0])


def test_tried_pods_that_failed_to_connect_lead_to_a_hold_not_an_error() -> None:
    candidates = [Candidate("ns/a", 0.0, 0, unreachable=True), Candidate("ns/b", 0.0, 0)]
    assert decide(Policy.JSQ_WORK, candidates, tried={"ns/b"}, rng=RNG) == Hold()


# -- the load view ------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


VOICE = VoiceKey("ns", "joe")


def fleet_with(*names: str, clock: Clock) -> Fleet:
    fleet = Fleet("ns", stale_after_s=1.0, clock=clock)
    fleet.upsert_voice(VoiceInfo(VOICE, "en_US-joe-medium", 30.0))
    for name in names:
        fleet.upsert_pod(PodInfo("ns", name, VOICE, f"http://127.0.0.9/{name}", ready=True))
    return fleet


def work(fleet: Fleet) -> dict[str, float]:
    return {c.key: round(c.work_s, 6) for c in fleet.candidates(VOICE)}


def test_load_view_counts_what_was_sent_corrects_with_scrapes_and_ages_out() -> None:
    clock = Clock()
    fleet = fleet_with("a", "b", clock=clock)
    first = fleet.begin("ns/a", 1.5)
    assert work(fleet) == {"ns/a": 1.5, "ns/b": 0.0}

    # The scrape (sent after `first`) already includes it, plus 2 s from someone else.
    clock.now += 0.05
    fleet.record_load("ns/a", clock.now, PodLoad(3.5, 1, 1))
    assert work(fleet)["ns/a"] == 3.5
    second = fleet.begin("ns/a", 0.5)  # sent after the scrape: added
    assert work(fleet)["ns/a"] == 4.0
    clock.now += 0.2  # the pod works off its queue at one engine-second per second
    assert work(fleet)["ns/a"] == 3.8
    fleet.end(first)  # already inside the scraped figure: nothing more to take off
    assert work(fleet)["ns/a"] == 3.8
    fleet.end(second)
    assert work(fleet)["ns/a"] == 3.3

    clock.now += 1.5  # no scrape for longer than stale_after_s: only our own requests
    assert work(fleet)["ns/a"] == 0.0
    fleet.begin("ns/a", 0.25)
    assert work(fleet)["ns/a"] == 0.25


def test_an_older_scrape_answering_late_never_overwrites_a_newer_one() -> None:
    clock = Clock()
    fleet = fleet_with("a", clock=clock)
    fleet.record_load("ns/a", 100.2, PodLoad(1.0, 0, 1))
    fleet.record_load("ns/a", 100.1, PodLoad(9.0, 5, 1))
    clock.now = 100.3
    assert work(fleet)["ns/a"] == 0.9  # the newer scrape, worked off for 0.1 s


def test_marks_expire_and_a_scrape_clears_unreachable() -> None:
    clock = Clock()
    fleet = fleet_with("a", clock=clock)
    fleet.mark("ns/a", full_s=0.5)
    assert fleet.candidates(VOICE)[0].full
    clock.now += 0.6
    assert not fleet.candidates(VOICE)[0].full
    fleet.mark("ns/a", down_s=1.0)
    assert fleet.candidates(VOICE)[0].unreachable
    fleet.record_load("ns/a", clock.now, PodLoad(0.0, 0, 0))
    assert not fleet.candidates(VOICE)[0].unreachable


def test_a_deleting_pod_is_draining_and_a_vanished_pod_is_gone() -> None:
    clock = Clock()
    fleet = fleet_with("a", "b", clock=clock)
    fleet.upsert_pod(PodInfo("ns", "a", VOICE, "http://127.0.0.9/a", ready=True, deleting=True))
    assert {c.key: c.draining for c in fleet.candidates(VOICE)} == {"ns/a": True, "ns/b": False}
    fleet.remove_pod("ns/b")
    assert [c.key for c in fleet.candidates(VOICE)] == ["ns/a"]


async def test_held_requests_wake_on_a_pod_change_for_their_voice_only() -> None:
    clock = Clock()
    fleet = fleet_with(clock=clock)
    other = VoiceKey("ns", "other")
    event, other_event = fleet.changed(VOICE), fleet.changed(other)
    fleet.upsert_pod(PodInfo("ns", "a", VOICE, None, ready=False))
    assert event.is_set()
    assert not other_event.is_set()


def test_names_resolve_in_the_routers_namespace_or_fully_qualified() -> None:
    fleet = fleet_with(clock=Clock())
    fleet.upsert_voice(VoiceInfo(VoiceKey("team-b", "joe"), "en_US-joe-medium", 30.0))
    assert fleet.resolve("joe").key == VOICE
    assert fleet.resolve("team-b/joe").key == VoiceKey("team-b", "joe")
    with pytest.raises(UnknownVoice) as caught:
        fleet.resolve("nobody")
    assert caught.value.known == ["ns/joe", "team-b/joe"]


def test_replace_drops_what_a_relist_no_longer_has_in_that_namespace_only() -> None:
    clock = Clock()
    fleet = fleet_with("a", "b", clock=clock)
    elsewhere = VoiceKey("other", "v")
    fleet.upsert_voice(VoiceInfo(elsewhere, "m", 1.0))
    fleet.upsert_pod(PodInfo("other", "x", elsewhere, "http://127.0.0.9/x", ready=True))
    fleet.replace(None, [PodInfo("ns", "b", VOICE, "http://127.0.0.9/b", ready=True)], "ns")
    assert sorted(fleet.pods) == ["ns/b", "other/x"]
    fleet.replace([], None, None)
    assert fleet.voices == {}


def test_a_voice_sees_its_own_pods_only_as_pods_come_go_and_change_voice() -> None:
    """Candidates come from an index by voice (a request never scans the whole fleet): it
    follows every upsert, relabel and removal."""
    clock = Clock()
    fleet = fleet_with("a", "b", clock=clock)
    other = VoiceKey("ns", "amy")
    fleet.upsert_voice(VoiceInfo(other, "en_US-amy-medium", 30.0))
    fleet.upsert_pod(PodInfo("ns", "c", other, "http://127.0.0.9/c", ready=True))
    assert [c.key for c in fleet.candidates(VOICE)] == ["ns/a", "ns/b"]
    assert [c.key for c in fleet.candidates(other)] == ["ns/c"]
    fleet.upsert_pod(PodInfo("ns", "b", other, "http://127.0.0.9/b", ready=True))  # relabelled
    assert [c.key for c in fleet.candidates(VOICE)] == ["ns/a"]
    assert [c.key for c in fleet.candidates(other)] == ["ns/c", "ns/b"]
    assert [s.info.key for s in fleet.ready_pods(other)] == ["ns/c", "ns/b"]
    fleet.remove_pod("ns/a")
    fleet.replace(None, [PodInfo("ns", "c", other, "http://127.0.0.9/c", ready=True)], "ns")
    assert fleet.candidates(VOICE) == []
    assert fleet.ready_pods(VOICE) == []
    assert [c.key for c in fleet.candidates(other)] == ["ns/c"]
    assert sorted(fleet.pods) == ["ns/c"]


def test_a_pod_goes_silent_without_reports_and_is_asked_before_it_does() -> None:
    clock = Clock()
    fleet = fleet_with("a", clock=clock)
    assert not fleet.candidates(VOICE)[0].silent  # just discovered: its grace
    assert fleet.to_poll(clock.now, 0.5) == [("ns/a", "http://127.0.0.9/a")]  # asked at once
    fleet.record_load("ns/a", clock.now, PodLoad(4.0, 2, 1, seq=7))
    assert fleet.to_poll(clock.now + 0.4, 0.5) == []  # heard from lately: no poll
    assert fleet.to_poll(clock.now + 0.6, 0.5) == [("ns/a", "http://127.0.0.9/a")]
    clock.now += 1.5  # nothing for longer than stale_after_s
    candidate = fleet.candidates(VOICE)[0]
    assert candidate.silent
    assert candidate.work_s == 0.0  # unknown, so only our own count; the choice avoids it
    fleet.record_load("ns/a", clock.now, PodLoad(0.5, 0, 1, seq=8))
    assert not fleet.candidates(VOICE)[0].silent


def test_a_held_poll_vouches_for_the_last_report_until_its_answer_is_due() -> None:
    """An idle pod holding the router's ``/load?wait=`` says nothing for seconds, and is
    still not silent; once the answer is overdue (or the ask failed) it is."""
    clock = Clock()
    fleet = fleet_with("a", clock=clock)
    fleet.record_load("ns/a", clock.now, PodLoad(2.0, 1, 1, seq=3), on_answer=False)
    assert fleet.pods["ns/a"].answered_at < clock.now  # a poll, not an answer's header
    fleet.watch("ns/a", clock.now + 11.0)  # held up to 10 s, plus stale_after_s
    clock.now += 5.0
    candidate = fleet.candidates(VOICE)[0]
    assert not candidate.silent
    assert candidate.work_s == 0.0  # its 2 s of work are done by now
    assert candidate.in_flight == 2  # reported and not changed since (it would have said)
    clock.now += 6.5  # the answer is overdue: the pod is hung or gone
    assert fleet.candidates(VOICE)[0].silent
    fleet.record_load("ns/a", clock.now, PodLoad(0.0, 0, 0, seq=4), on_answer=False)
    fleet.watch("ns/a", clock.now + 11.0)
    clock.now += 0.5
    fleet.watch("ns/a", clock.now)  # the ask failed (connection lost): no more vouching
    assert not fleet.candidates(VOICE)[0].silent  # the report's own age still counts
    clock.now += 0.6
    assert fleet.candidates(VOICE)[0].silent


def test_reports_are_ordered_by_the_pods_sequence_while_they_keep_coming() -> None:
    clock = Clock()
    fleet = fleet_with("a", clock=clock)
    fleet.record_load("ns/a", 100.20, PodLoad(1.0, 0, 1, seq=12))  # a header, on arrival
    fleet.record_load("ns/a", 100.25, PodLoad(9.0, 5, 1, seq=11))  # an older one, raced back
    clock.now = 100.3
    assert work(fleet)["ns/a"] == 0.9
    # A restarted pod counts from 1 again; after a silence that is longer than a restart.
    clock.now = 105.0
    fleet.record_load("ns/a", clock.now, PodLoad(2.0, 1, 1, seq=1))
    assert work(fleet)["ns/a"] == 2.0


def test_a_new_address_is_a_new_server_with_no_report() -> None:
    clock = Clock()
    fleet = fleet_with("a", clock=clock)
    fleet.record_load("ns/a", clock.now, PodLoad(5.0, 3, 1, seq=40))
    fleet.upsert_pod(PodInfo("ns", "a", VOICE, "http://127.0.0.10/a", ready=True))
    assert work(fleet)["ns/a"] == 0.0
    fleet.record_load("ns/a", clock.now, PodLoad(1.0, 0, 1, seq=1))
    assert work(fleet)["ns/a"] == 1.0


def test_free_slots_count_what_the_pod_may_not_have_seen() -> None:
    clock = Clock()
    fleet = fleet_with("a", clock=clock)
    state = fleet.pods["ns/a"]
    assert state.free_slots(clock.now, 1.0) == 0  # no report yet: wait for one
    first = fleet.begin("ns/a", 0.1)  # on its way when the pod reports
    clock.now += 0.01
    fleet.record_load("ns/a", clock.now, PodLoad(0.0, 0, 0, seq=1, free=2))
    assert state.free_slots(clock.now, 1.0) == 1  # room 2, one of ours already open
    fleet.begin("ns/a", 0.1)
    assert state.free_slots(clock.now, 1.0) == 0
    fleet.end(first)
    fleet.record_load("ns/a", clock.now, PodLoad(0.0, 0, 1, seq=2))  # an older server
    assert state.free_slots(clock.now, 1.0) is None
