"""The pod's ``/load`` long-poll holder, without a server: who is held, who answers at once,
and a step from an engine thread waking the event loop (a real thread, a real loop)."""

from __future__ import annotations

import asyncio
import threading
import time

from voicefleet_inference.server.loadwait import LoadChanges


class Pod:
    """The pod's side the holder reads: its last report number and whether it drains."""

    def __init__(self) -> None:
        self.seq = 5
        self.draining = False

    def changes(self, max_held: int = 4) -> LoadChanges:
        return LoadChanges(lambda: self.seq, lambda: self.draining, max_held=max_held)


async def test_a_step_in_an_engine_thread_answers_a_held_ask_at_once() -> None:
    pod = Pod()
    changes = pod.changes()
    started = time.monotonic()
    held = asyncio.ensure_future(changes.wait(5, 10.0))
    await asyncio.sleep(0.1)
    assert not held.done()
    assert changes.held == 1
    threading.Thread(target=changes.changed).start()  # as the scheduler's workers call it
    assert await asyncio.wait_for(held, 2.0) is True
    assert time.monotonic() - started < 2.0
    assert changes.held == 0
    # Report 5 predates the step: asked again with after=5, the answer is at once.
    assert await asyncio.wait_for(changes.wait(5, 10.0), 0.5) is True


async def test_no_step_holds_for_wait_then_answers() -> None:
    changes = Pod().changes()
    started = time.monotonic()
    assert await changes.wait(5, 0.3) is True
    assert time.monotonic() - started >= 0.29


async def test_a_step_before_the_ask_and_foreign_or_zero_after_answer_at_once() -> None:
    pod = Pod()
    changes = pod.changes()
    changes.changed()  # no ask held yet (no loop known): remembered, not lost
    pod.seq = 6
    assert await asyncio.wait_for(changes.wait(5, 10.0), 0.5) is True
    assert await asyncio.wait_for(changes.wait(0, 10.0), 0.5) is True
    assert await asyncio.wait_for(changes.wait(99, 10.0), 0.5) is True  # another process's


async def test_holds_are_bounded_and_a_draining_pod_holds_nothing() -> None:
    pod = Pod()
    changes = pod.changes(max_held=2)
    held = [asyncio.ensure_future(changes.wait(5, 10.0)) for _ in range(2)]
    await asyncio.sleep(0.05)
    assert await asyncio.wait_for(changes.wait(5, 10.0), 0.5) is False  # over the bound
    pod.draining = True
    changes.changed()  # begin_drain is a step: everyone held is answered
    assert await asyncio.wait_for(asyncio.gather(*held), 1.0) == [True, True]
    assert await asyncio.wait_for(changes.wait(5, 10.0), 0.5) is False
