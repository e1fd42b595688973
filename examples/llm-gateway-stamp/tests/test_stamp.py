from __future__ import annotations

import pytest
from llm_gateway_stamp import Stamp

from gateway.chain import Chain, ChainEntry
from gateway.testing.conformance import FakeUpstream, check_plugin, collect, make_call


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_conforms() -> None:
    await check_plugin(Stamp())


@pytest.mark.anyio
async def test_stamps_the_tenant() -> None:
    chain = Chain([ChainEntry("stamp", Stamp(header="x-s"))], FakeUpstream())
    reply = await chain.run(make_call("hi", tenant="team-a"))
    assert reply.headers["x-s"].startswith("tenant=team-a; below_ms=")
    assert await collect(reply) == "echo: hi"
