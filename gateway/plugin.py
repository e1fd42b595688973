"""The plugin API: what an author outside this repo subclasses.

    from gateway.plugin import Plugin, Next
    from gateway.call import Call, Reply
    from gateway.payload import Chunk

    class Stamp(Plugin):
        name = "stamp"

        def __init__(self, *, header: str = "x-stamp") -> None:   # settings from config
            self.header = header

        async def handle(self, *, call: Call, call_next: Next) -> Reply:
            reply = await call_next(call)          # or answer yourself: return Reply(body=...)
            reply.headers[self.header] = "1"
            return reply

        async def on_chunk(self, *, call: Call, chunk: Chunk) -> Chunk:
            return chunk                           # every streamed chunk, replays included

Hooks (all optional, all async, all keyword-only):

    startup(*, gateway)          once, before the first request; `gateway` is a PluginHost:
                                 the store, metrics, backends and the embedder
    shutdown()                   once, at exit
    handle(*, call, call_next)   wrapper around everything after this plugin: may answer
                                 (short-circuit), change the call, or await call_next and
                                 post-process the reply, complete or streamed
    on_chunk(*, call, chunk)     each chunk the client receives, whoever produced it (a
                                 cache replay included); runs innermost plugin first

Reading and changing traffic (the gateway passes everything on as it came unless a
plugin changes it): `call.request` is a typed view of the fields the gateway reads,
`call.body.data` the whole request as sent; `call.edit(field=value)` returns the call
with that field changed (nothing else is re-encoded). `reply.body.data` and
`chunk.data` are the answer's JSON (read-only); to change one, return a new
`Payload.of(data)` / `Chunk.of(data)`. `call.endpoint` says what the call is
("chat.completions", "completions", "responses", "embeddings", or "passthrough" for
any other /v1 path): a plugin that only understands some of them passes the rest on.

The gateway passes a hook only the arguments it declares (or all of them if it takes
**kwargs), so hooks may declare a subset, and arguments added in later versions never
break an old plugin. Discovery: the entry-point group `llm_gateway.plugins` maps a name
to the class; config lists names in order (gateway/config.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar

from gateway.call import Call, Reply
from gateway.payload import Chunk

if TYPE_CHECKING:
    from gateway.runtime import PluginHost

Next = Callable[[Call], Awaitable[Reply]]

ENTRY_POINT_GROUP = "llm_gateway.plugins"
HOOKS = ("startup", "shutdown", "handle", "on_chunk")


class Plugin:
    """Base class: every hook is a no-op the runtime skips, so override only what you use."""

    name: ClassVar[str] = ""

    async def startup(self, *, gateway: PluginHost) -> None:
        return None

    async def shutdown(self) -> None:
        return None

    async def handle(self, *, call: Call, call_next: Next) -> Reply:
        return await call_next(call)

    async def on_chunk(self, *, call: Call, chunk: Chunk) -> Chunk:
        return chunk


def overrides(plugin: object, hook: str) -> bool:
    """Whether `plugin` defines `hook` itself (the base class's no-ops are skipped)."""
    impl = getattr(type(plugin), hook, None)
    return impl is not None and impl is not getattr(Plugin, hook)


class Hook:
    """One plugin's implementation of one hook, called with the keyword arguments it
    declares. Built once at start-up, so a call costs one dict comprehension at most."""

    __slots__ = ("fn", "names", "takes_all")

    def __init__(self, fn: Callable[..., Awaitable[Any]]) -> None:
        self.fn = fn
        params = inspect.signature(fn).parameters.values()
        self.takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        positional = [
            p.name
            for p in params
            if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.VAR_POSITIONAL)
        ]
        if positional:
            raise TypeError(
                f"{getattr(fn, '__qualname__', fn)}: hook arguments are keyword-only, "
                f"got positional {positional}"
            )
        self.names = frozenset(p.name for p in params)

    def __call__(self, **kwargs: Any) -> Awaitable[Any]:
        if self.takes_all:
            return self.fn(**kwargs)
        return self.fn(**{k: v for k, v in kwargs.items() if k in self.names})
