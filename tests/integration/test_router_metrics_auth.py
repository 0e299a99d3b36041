"""The router's ``/metrics`` takes only the operator's token, and the operator sends it.

Held requests per voice (``voicefleet_router_pending_requests``) are what the autoscaler
scales a voice from zero on: anyone who could serve that series to the operator, or read it,
would learn every voice and steer GPU spend. The chart generates one token, mounted into
the router (``VOICEFLEET_ROUTER_METRICS_TOKEN``) and the operator
(``VOICEFLEET_OPERATOR_ROUTER_TOKEN``); files work as well. Here a
real ``voicefleet-router`` process is started with the file, and the operator's own reader
(``HttpLoadSource``) scrapes a router holding a request, as the autoscaler does each tick.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from routerprocs import running_router
from serverprocs import ServerProc, free_port, wait_ready

from voicefleet_inference.router.settings import RouterSettings
from voicefleet_localcluster.procs import stop_process
from voicefleet_operator.autoscaler_load import HttpLoadSource, LoadConfig

pytestmark = [pytest.mark.timeout(120)]

ROUTER = Path(sys.executable).parent / "voicefleet-router"
TOKEN = "s3cr3t-scrape-token-0123456789"


def test_the_router_process_refuses_an_unauthenticated_scrape(tmp_path: Path) -> None:
    token_file = tmp_path / "metrics-token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    log = tmp_path / "router.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEFLEET_ROUTER_")}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(ROUTER),
                "--host=127.0.0.1",
                f"--port={port}",
                f"--static-upstreams=joe=http://127.0.0.1:{free_port()}",
                f"--metrics-token-file={token_file}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    base = wait_ready(ServerProc(proc, "127.0.0.1", port, log), timeout_s=30).base_url
    try:
        anonymous = httpx.get(base + "/metrics")
        wrong = httpx.get(base + "/metrics", headers={"Authorization": "Bearer guess"})
        right = httpx.get(base + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        probes = [httpx.get(base + path).status_code for path in ("/healthz", "/readyz")]
    finally:
        stop_process(proc, 10)
    assert anonymous.status_code == 401, anonymous.text
    assert "bearer token" in anonymous.json()["message"]
    assert wrong.status_code == 401
    assert right.status_code == 200
    assert "voicefleet_router_pending_requests" in right.text
    assert probes == [200, 200]  # the kubelet's probes carry no token
    assert "metrics-auth=on" in log.read_text()


async def test_the_operators_scrape_reads_held_requests_and_a_tokenless_one_reads_none(
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "router-token"
    token_file.write_text(TOKEN)
    settings = RouterSettings(
        static_upstreams=[f"joe=http://127.0.0.1:{free_port()}"], cold_start_timeout_s=30
    )
    async with (
        running_router(settings, metrics_token=TOKEN) as (service, url),
        httpx.AsyncClient(timeout=30) as client,
    ):
        service.fleet.remove_pod("default/joe-static-0")  # scaled to zero: requests are held
        held = asyncio.ensure_future(
            client.post(url + "/v1/audio/speech", json={"model": "joe", "input": "Hello."})
        )
        await asyncio.sleep(0.5)
        config = LoadConfig(router_urls=(url + "/metrics",), timeout=5)
        operator = HttpLoadSource(
            LoadConfig(**{**config.__dict__, "router_token_file": token_file})
        )
        stranger = HttpLoadSource(config)
        from_env = HttpLoadSource(LoadConfig(**{**config.__dict__, "router_token": TOKEN}))
        try:
            with_token = await operator.router_pending([])
            with_env_token = await from_env.router_pending([])
            without = await stranger.router_pending([])
            token_file.write_text("rotated-and-wrong")  # read at every scrape
            after_rotation = await operator.router_pending([])
        finally:
            await operator.close()
            await stranger.close()
            await from_env.close()
            held.cancel()
    assert with_token == {"default/joe": 1}
    assert with_env_token == {"default/joe": 1}  # the chart's way: the Secret by env
    assert without == {}
    assert after_rotation == {}
