"""One validation layer for both edges: the router refuses what the pod refuses, alike.

A real ``voicefleet-server`` (simulated engine: validation does not depend on it) and a
router in front of it. Each hostile body goes to both; the answers must be the same 400
(the router used to answer 500 with a traceback in its log and close the connection), and
no error may echo more than a short excerpt of the input.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from routerprocs import running_router
from serverprocs import ServerProc, launch, stop, wait_ready

from voicefleet_inference.router.settings import RouterSettings

pytestmark = [pytest.mark.timeout(120)]

SPEECH = "/v1/audio/speech"
MODEL = "en_US-joe-medium"


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    server = launch(tmp_path_factory.mktemp("pod") / "pod.log", "--engine", "simulated")
    try:
        yield wait_ready(server)
    finally:
        stop(server)


def _body(model: str, text: str = "Hello.") -> dict[str, object]:
    return {"model": model, "input": text, "voice": "default"}


HOSTILE = {
    "deep": lambda model: (
        b'{"model": "' + model.encode() + b'", "input": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    ),
    "long number": lambda model: (
        json.dumps(_body(model)).encode()[:-1] + b', "speed": ' + b"9" * 5_000 + b"}"
    ),
    "not utf-8": lambda model: json.dumps(_body(model)).encode().replace(b"Hello", b"H\xffllo"),
    "surrogate": lambda model: json.dumps(_body(model)).replace("Hello", "\\ud800").encode(),
    "control": lambda model: json.dumps(_body(model, "Hello\u0000world")).encode(),
    "not an object": lambda model: b"[1, 2, 3]",
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_router_and_pod_refuse_hostile_bodies_with_the_same_400(
    pod: ServerProc, case: str
) -> None:
    # The voice is named as the pod's model, so both get byte-for-byte the same body.
    settings = RouterSettings(static_upstreams=[f"{MODEL}={pod.base_url}"])
    async with (
        running_router(settings) as (_, url),
        httpx.AsyncClient(timeout=30) as client,
    ):
        direct = await client.post(
            pod.base_url + SPEECH,
            content=HOSTILE[case](MODEL),
            headers={"content-type": "application/json"},
        )
        routed = await client.post(
            url + SPEECH,
            content=HOSTILE[case](MODEL),
            headers={"content-type": "application/json"},
        )
        after = await client.get(url + "/healthz")  # the same keep-alive connection lives
    assert direct.status_code == 400, direct.text
    assert routed.status_code == 400, routed.text
    assert routed.json()["error"]["code"] == direct.json()["error"]["code"]
    assert routed.json()["error"]["message"] == direct.json()["error"]["message"]
    assert len(routed.content) < 1000
    assert routed.headers.get("connection") != "close"
    assert after.status_code == 200


async def test_a_404_quotes_an_excerpt_and_lists_a_few_voices(pod: ServerProc) -> None:
    voices = [f"voice{i}={pod.base_url}#en_US-joe-medium" for i in range(12)]
    async with (
        running_router(RouterSettings(static_upstreams=voices)) as (_, url),
        httpx.AsyncClient(timeout=30) as client,
    ):
        missing = await client.post(url + SPEECH, json=_body("x" * 1_000_000))
        tts = await client.get(url + "/voices/default/" + "y" * 2000 + "/tts")
    assert missing.status_code == 404
    assert len(missing.content) < 1000
    message = missing.json()["error"]["message"]
    assert "and 7 more" in message
    assert tts.status_code == 404
    assert len(tts.content) < 1000
