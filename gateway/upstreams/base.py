"""The seam between the gateway and whatever serves a model.

An upstream gets the call (the client's request as the chain left it), the model name
to send upstream when the config aliases it, and the headers the gateway adds (request
id, trace context, the client headers allowed through); it answers with a Reply: a
complete JSON body, a stream of events, or raw content. The in-process engine and
remote OpenAI-compatible servers implement the same protocol; `endpoints` says which
operations an upstream serves itself (the gateway adapts the Responses API onto chat
for one that does not, and refuses the rest).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gateway.call import Call, Reply


class Upstream(Protocol):
    endpoints: frozenset[str]  # operations served natively (gateway.call's endpoint names)

    async def send(self, call: Call, model: str | None, headers: Mapping[str, str]) -> Reply: ...

    async def ready(self) -> bool:
        """Whether the upstream can take requests now."""
        ...

    def alive(self) -> bool:
        """False when a part of this process that serves it has died (an in-process
        engine's step loop): the process needs a restart, and /health says so. A remote
        server that does not answer is not that: it is readiness (`ready`)."""
        ...

    async def close(self) -> None: ...
