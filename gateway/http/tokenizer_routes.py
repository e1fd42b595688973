"""vLLM's tokenizer endpoints for the models the bundled engine serves, so tools that
count or score tokens need no tokenizer files of their own (lm-evaluation-harness's
`local-completions` looks for them and otherwise wants a Hugging Face tokenizer):

    POST /tokenize        {"model"?, "prompt": str | "messages": [...], "add_special_tokens"?}
                          -> {"count", "max_model_len", "tokens"}
    POST /detokenize      {"model"?, "tokens": [int, ...]} -> {"prompt"}
    GET  /tokenizer_info  ?model= -> {"eos_token", "bos_token", "pad_token",
                          "chat_template", "model_max_length", "vocab_size"}

"model" may be left out where one engine model is served. A model served by an HTTP
upstream has no tokenizer here: 404.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import msgspec

from gateway.call import Reply
from gateway.errors import InvalidRequest, NotFound, invalid_body
from gateway.payload import DecodeErrors, Payload, decoder
from gateway.runtime import Gateway, Incoming
from gateway.schemas import ChatMessage

if TYPE_CHECKING:  # the engine is an extra: imported where a request needs it
    from gateway.upstreams.engine import EngineUpstream

PATHS = ("/tokenize", "/detokenize", "/tokenizer_info")


class TokenizeRequest(msgspec.Struct, kw_only=True):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True


class DetokenizeRequest(msgspec.Struct, kw_only=True):
    model: str | None = None
    tokens: list[int]


def serve_tokenizer(gateway: Gateway, incoming: Incoming) -> Reply:
    gateway.auth.tenant(incoming.headers.get("authorization"))
    if incoming.path == "/tokenizer_info":
        named = parse_qs(incoming.query).get("model")
        return _reply(_info(_engine(gateway, named[0] if named else None)))
    kind = TokenizeRequest if incoming.path == "/tokenize" else DetokenizeRequest
    try:
        request: Any = decoder(kind).decode(incoming.body)
    except DecodeErrors as exc:
        raise invalid_body(exc) from None
    upstream = _engine(gateway, request.model)
    if isinstance(request, DetokenizeRequest):
        return _reply({"prompt": _detokenize(upstream, request.tokens)})
    return _reply(_tokenize(upstream, request))


def _engine(gateway: Gateway, model: str | None) -> EngineUpstream:
    """The engine serving `model` (or the only engine model, when none is named)."""
    names = [model] if model is not None else gateway.models()
    engines = []
    for name in names:
        for group in gateway.target(name).groups:  # 404 for an unknown model
            engines += [b.upstream for b in group.backends if hasattr(b.upstream, "engine")]
    if not engines:
        raise NotFound(f"No tokenizer is served for {model or 'these models'}: it runs upstream.")
    if model is None and len({id(e) for e in engines}) > 1:
        raise InvalidRequest("Several models are served: name one in 'model'.", param="model")
    return engines[0]  # type: ignore[return-value]


def _tokenize(upstream: EngineUpstream, request: TokenizeRequest) -> dict[str, Any]:
    engine = upstream.engine
    if (request.prompt is None) == (request.messages is None):
        raise InvalidRequest("Send either 'prompt' or 'messages'.", param="prompt")
    if request.messages is not None:
        from gateway.upstreams.chat_prompt import render_chat

        tokens = render_chat(engine.tokenizer, request.messages, None)
    else:
        tokens = engine.tokenizer.encode(request.prompt or "", request.add_special_tokens)
    return {"count": len(tokens), "max_model_len": engine.max_model_len, "tokens": tokens}


def _detokenize(upstream: EngineUpstream, tokens: list[int]) -> str:
    tokenizer = upstream.engine.tokenizer
    bad = [t for t in tokens if not 0 <= t < tokenizer.vocab_size]
    if bad:
        raise InvalidRequest(
            f"Token ids must be in [0, {tokenizer.vocab_size}); got {bad[0]}.", param="tokens"
        )
    return tokenizer.decode(tokens, skip_special_tokens=False)


def _info(upstream: EngineUpstream) -> dict[str, Any]:
    tokenizer = upstream.engine.tokenizer
    return {
        "eos_token": tokenizer.eos_token,
        "bos_token": tokenizer.bos_token,
        "pad_token": tokenizer.pad_token,
        "chat_template": tokenizer.chat_template,
        "model_max_length": upstream.engine.max_model_len,
        "vocab_size": tokenizer.vocab_size,
    }


def _reply(data: dict[str, Any]) -> Reply:
    return Reply(body=Payload.of(data))
