"""/health and /ready over the whole HTTP edge in this process: /health turns 503 as soon
as the engine's step loop has died (and requests that were waiting on it fail instead of
hanging); /ready stays 200 while any model can be served, is 503 when none can, and one
round of concurrent probes answers many callers; rounds run in the background and
callers read the last one without probing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from backend.engine import Engine, EngineConfig
from backend.loading.weights import load_model
from gateway.build import build_gateway, engine_gate
from gateway.config import load_config
from gateway.http import create_app
from gateway.runtime import Gateway
from gateway.testing.client import app_client
from gateway.upstreams.engine import EngineUpstream
from gateway.upstreams.http import HttpUpstream
from tests.serving import TEST_KV_CACHE_GB, free_port

pytestmark = pytest.mark.anyio


@pytest.fixture
def engine(smollm2_gguf: Path) -> Iterator[Engine]:
    eng = Engine(load_model(smollm2_gguf), EngineConfig(kv_cache_gb=TEST_KV_CACHE_GB))
    yield eng
    eng.shutdown()


async def test_health_is_503_once_the_engine_loop_has_died(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream = EngineUpstream(engine, "m")
    app = create_app(Gateway.single(upstream, "m", engine_gate("m", upstream)))
    body = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    async with app_client(app) as client:
        assert (await client.get("/health")).json() == {"status": "ok"}
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 200

        def broken() -> None:
            raise MemoryError("the scheduler's state is gone")

        # Outside the model step (which fails only its own requests): the loop dies.
        monkeypatch.setattr(engine.scheduler, "schedule", broken)
        waiting = await client.post("/v1/chat/completions", json=body)
        assert waiting.status_code >= 500  # failed, not left hanging
        health = await client.get("/health")
        assert health.status_code == 503
        assert health.json() == {"status": "dead", "dead": ["m"]}
        refused = await client.post("/v1/chat/completions", json=body)
        assert refused.status_code >= 500
        assert (await client.get("/ready")).status_code == 503


def _two_groups(up: str, down: str) -> str:
    return (
        f'[[groups]]\nname = "a"\nbackends = [{{url = "{up}"}}]\n'
        f'[[groups]]\nname = "b"\nbackends = [{{url = "{down}"}}]\n'
        '[[models]]\nname = "m"\ngroups = ["a"]\n'
        '[[models]]\nname = "n"\ngroups = ["b"]\n'
    )


async def _ready(config_text: str, tmp_path: Path, calls: int = 1) -> list[httpx.Response]:
    path = tmp_path / "gateway.toml"
    path.write_text(config_text)
    app = create_app(build_gateway(load_config(path, {})))
    async with app_client(app) as client:
        return list(await asyncio.gather(*(client.get("/ready") for _ in range(calls))))


async def test_ready_while_one_of_two_groups_is_down(mock_upstream: object, tmp_path: Path) -> None:
    up = mock_upstream()  # type: ignore[operator]
    down = f"http://127.0.0.1:{free_port()}/v1"
    [reply] = await _ready(_two_groups(up, down), tmp_path)
    assert reply.status_code == 200
    assert reply.json()["status"] == "ready"
    assert reply.json()["models"] == {"m": True, "n": False}


async def test_not_ready_when_no_model_can_be_served(tmp_path: Path) -> None:
    down = [f"http://127.0.0.1:{free_port()}/v1" for _ in range(2)]
    [reply] = await _ready(_two_groups(*down), tmp_path)
    assert reply.status_code == 503
    assert reply.json()["models"] == {"m": False, "n": False}


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """[how many HTTP upstream probes ran so far], counted as they run."""
    count = [0]
    real = HttpUpstream.ready

    async def counted(self: HttpUpstream) -> bool:
        count[0] += 1
        return await real(self)

    monkeypatch.setattr(HttpUpstream, "ready", counted)
    return count


async def test_concurrent_callers_share_one_round_of_probes(
    mock_upstream: object, tmp_path: Path, probes: list[int]
) -> None:
    up = mock_upstream()  # type: ignore[operator]
    down = f"http://127.0.0.1:{free_port()}/v1"
    replies = await _ready(_two_groups(up, down), tmp_path, calls=20)
    assert {r.status_code for r in replies} == {200}
    assert probes[0] == 2  # one per backend, for all twenty callers


async def test_rounds_run_in_the_background_and_callers_read_the_last_one(
    mock_upstream: object, tmp_path: Path, probes: list[int]
) -> None:
    path = tmp_path / "gateway.toml"
    up = mock_upstream()  # type: ignore[operator]
    path.write_text(_two_groups(up, f"http://127.0.0.1:{free_port()}/v1"))
    app = create_app(build_gateway(load_config(path, {})))
    app.routes.probes.every_s = 0.01
    async with app_client(app):
        loop = asyncio.ensure_future(app.routes.probes.keep_fresh())
        try:
            async with asyncio.timeout(30):  # three rounds of two backends, no caller at all
                while probes[0] < 6:
                    await asyncio.sleep(0.01)
            before = probes[0]
            reply = await app.routes.probes.ready(detail=True)
            assert probes[0] == before  # answered from the last round, no probe of its own
            assert reply.status == 200
        finally:
            loop.cancel()
