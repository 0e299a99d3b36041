"""Pod-side auth: a real ``voicefleet-server`` with its voice's token, called directly and
through a real router that derives the same token from the shared key.

For clusters without NetworkPolicy enforcement (chart value ``voiceAuth.enabled``): the
operator writes ``VOICEFLEET_AUTH_TOKEN`` (the voice's token, derived from the key by
``voicefleet_api.podauth``) into the voice's pods, the router sends that token to them.
Here the server gets the variable as the operator would set it, and the router the key.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from routerprocs import running_router
from serverprocs import ServerProc, launch, stop, wait_ready

from voicefleet_api import env, podauth
from voicefleet_inference.router.settings import RouterSettings

pytestmark = [pytest.mark.timeout(120)]

KEY = "the-release-key-only-operator-and-router-know"
NAMESPACE, VOICE = "team-a", "joe"
TOKEN = podauth.pod_token(KEY, NAMESPACE, VOICE)
SPEECH = {"model": "en_US-joe-medium", "input": "Hello.", "voice": "default"}


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    log = tmp_path_factory.mktemp("auth") / "server.log"
    server = launch(
        log, "--engine", "simulated",
        env={env.AUTH_TOKEN: TOKEN, "SIMULATED_ENGINE_SPEED_FACTOR": "8"},
    )  # fmt: skip
    try:
        yield wait_ready(server)
    finally:
        stop(server)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_synthesis_routes_refuse_a_missing_or_wrong_token_naming_the_cause(
    pod: ServerProc,
) -> None:
    url = pod.base_url
    missing = httpx.post(f"{url}/v1/audio/speech", json=SPEECH, timeout=10)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    error = missing.json()["error"]
    assert (error["type"], error["code"]) == ("authentication_error", "unauthorized")
    assert "requires its bearer token" in error["message"]
    assert "carried no bearer token" in error["message"]
    wrong = httpx.post(
        f"{url}/v1/audio/speech", json=SPEECH, headers=bearer(TOKEN[:-1] + "0"), timeout=10
    )
    assert wrong.status_code == 401
    assert "carried a wrong bearer token" in wrong.json()["error"]["message"]
    assert TOKEN[:-1] not in wrong.text  # nothing of the secret is echoed
    # another voice's token (same key, other namespace) does not open this one
    other = podauth.pod_token(KEY, "team-b", VOICE)
    assert httpx.get(f"{url}/v1/models", headers=bearer(other), timeout=10).status_code == 401
    # the GPT-SoVITS route too, in its own error shape
    tts = httpx.get(f"{url}/tts", params={"text": "Hello.", "text_lang": "en"}, timeout=10)
    assert tts.status_code == 401
    assert "requires its bearer token" in tts.json()["message"]


def test_the_right_token_is_served_and_probes_metrics_and_load_stay_open(
    pod: ServerProc,
) -> None:
    url = pod.base_url
    ok = httpx.post(f"{url}/v1/audio/speech", json=SPEECH, headers=bearer(TOKEN), timeout=30)
    assert ok.status_code == 200, ok.text
    # the scheme is case-insensitive (RFC 9110)
    lower = httpx.get(f"{url}/v1/models", headers={"Authorization": f"bearer {TOKEN}"})
    assert lower.status_code == 200
    for path in ("/healthz", "/readyz", "/metrics", "/load"):
        assert httpx.get(f"{url}{path}", timeout=10).status_code == 200, path
    httpx.post(f"{url}/v1/audio/speech", json=SPEECH, timeout=10)  # refused, and counted
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert 'voicefleet_requests_total{code="401"}' in metrics


def upstream(pod: ServerProc, **extra: object) -> RouterSettings:
    entry = f"{NAMESPACE}/{VOICE}={pod.base_url}#en_US-joe-medium"
    values: dict[str, object] = {"poll_interval_s": 0.1, **extra}
    return RouterSettings(static_upstreams=[entry], **values)  # type: ignore[arg-type]


async def test_the_router_presents_the_voices_token_derived_from_the_key(
    pod: ServerProc,
) -> None:
    request = {**SPEECH, "model": f"{NAMESPACE}/{VOICE}", "response_format": "wav"}
    settings = upstream(pod, pod_token_key=KEY)
    async with running_router(settings) as (_, url), httpx.AsyncClient(timeout=30) as http:
        answered = await http.post(f"{url}/v1/audio/speech", json=request)
    assert answered.status_code == 200, answered.text
    assert answered.content[:4] == b"RIFF"
    # The control: a router without the key is refused by the pod.
    async with running_router(upstream(pod)) as (_, url), httpx.AsyncClient(timeout=30) as http:
        refused = await http.post(f"{url}/v1/audio/speech", json=request)
    assert refused.status_code == 401, refused.text
