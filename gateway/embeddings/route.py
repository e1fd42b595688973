"""POST /v1/embeddings in OpenAI's shape, served by the gateway's Embedder.

Text only: token-id inputs (lists of ints) are a 400, as are empty inputs, empty strings,
more than MAX_INPUTS items and a `dimensions` other than the model's. The model name must
be one of the gateway's `embedder_names` (404 otherwise, and when no embedder is
configured); the first request that passes the checks loads the model.
Texts longer than the model's max_seq_length (256 tokens) are truncated, as
sentence-transformers does; usage counts the tokens the model saw.

Requests for any other model go through the chain to that model's upstream (the
runtime decides, gateway/runtime/serve.py); `serve_embeddings` answers the local ones.
"""

from __future__ import annotations

import asyncio
import base64
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol

import msgspec
from msgspec import Meta, Struct

from gateway.errors import InvalidRequest, ModelNotFound, invalid_body

if TYPE_CHECKING:
    from gateway.embeddings.batcher import Embedder
    from gateway.embeddings.types import Embedded

MAX_INPUTS = 2048  # OpenAI's limit on items per request


class EmbeddingRequest(Struct, kw_only=True):
    model: str
    # str | list[str] | list[int] | list[list[int]]: msgspec takes one array type per
    # union, so the items are checked in _texts.
    input: str | list[Any]
    encoding_format: Literal["float", "base64"] | None = None  # None: float
    dimensions: Annotated[int, Meta(ge=1)] | None = None
    user: str | None = None


class Embedding(Struct, kw_only=True):
    object: str = "embedding"
    index: int
    embedding: list[float] | str  # str: base64 of little-endian float32 bytes


class EmbeddingUsage(Struct, kw_only=True):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(Struct, kw_only=True):
    object: str = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class EmbeddingHost(Protocol):
    """What serve_embeddings needs of the gateway (gateway.runtime.Gateway has it)."""

    @property
    def embedder_names(self) -> frozenset[str]: ...
    @property
    def embedding_max_tokens(self) -> int: ...
    async def load_embedder(self) -> Embedder | None: ...


_decoder = msgspec.json.Decoder(EmbeddingRequest)
_encoder = msgspec.json.Encoder()


async def serve_embeddings(gw: EmbeddingHost, raw: bytes) -> bytes:
    """One embeddings request (the caller checked the API key): decode, checks, the
    embedder; returns the JSON body. Raises OpenAIError (and the embedder's 503s) for
    answers in OpenAI's error shape."""
    try:
        body = _decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise invalid_body(exc) from exc
    # The names are known before the model loads: a wrong name never costs a load.
    if body.model not in gw.embedder_names:
        raise ModelNotFound(body.model)
    texts = _texts(body.input)
    embedder = await gw.load_embedder()  # the first request loads the model (seconds)
    if embedder is None:
        raise ModelNotFound(body.model)
    dim = embedder.model.dim
    if body.dimensions is not None and body.dimensions != dim:
        raise InvalidRequest(
            f"This model's embeddings have {dim} dimensions: set 'dimensions' to {dim} "
            "or leave it out.",
            param="dimensions",
            code="invalid_value",
        )
    await _check_tokens(embedder, texts, gw.embedding_max_tokens)
    result = await embedder.embed_counted(texts)
    return _encoder.encode(_response(result, body))


async def _check_tokens(embedder: Embedder, texts: list[str], most: int) -> None:
    """At most `most` tokens in one request (each text counted up to the model's
    length): a batch is computed in one go, and everyone else's embeddings (the semantic
    cache's among them) wait behind it. A token has at least one character, so short
    requests are not counted at all; long ones are counted on the model's thread."""
    if sum(map(len, texts)) <= most:
        return
    counts: list[int] = await asyncio.wrap_future(embedder.model.count(texts))
    tokens = sum(counts)
    if tokens > most:
        raise InvalidRequest(
            f"'input' holds {tokens} tokens; at most {most} are allowed in one request "
            "(split it across requests).",
            param="input",
            code="too_many_tokens",
        )


def _texts(value: str | list[Any]) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not items:
        raise InvalidRequest("'input' must not be empty.", param="input", code="invalid_value")
    if len(items) > MAX_INPUTS:
        raise InvalidRequest(
            f"'input' holds {len(items)} items; at most {MAX_INPUTS} are allowed.",
            param="input",
            code="invalid_value",
        )
    for i, item in enumerate(items):
        if isinstance(item, str):
            if not item:
                raise InvalidRequest(
                    f"'input[{i}]' is an empty string; every input must hold some text.",
                    param="input",
                    code="invalid_value",
                )
        elif isinstance(item, int | list) and not isinstance(item, bool):
            raise InvalidRequest(
                "This model takes text: send 'input' as a string or a list of strings, "
                "not token ids.",
                param="input",
                code="invalid_value",
            )
        else:
            raise InvalidRequest(
                f"'input[{i}]' must be a string.", param="input", code="invalid_value"
            )
    return items


def _response(result: Embedded, body: EmbeddingRequest) -> EmbeddingList:
    data: list[Embedding]
    if body.encoding_format == "base64":
        # The SDK decodes with np.frombuffer(base64.b64decode(s), dtype="float32").
        rows = result.vectors.astype("<f4", copy=False)
        data = [
            Embedding(index=i, embedding=base64.b64encode(row.tobytes()).decode("ascii"))
            for i, row in enumerate(rows)
        ]
    else:
        data = [Embedding(index=i, embedding=row) for i, row in enumerate(result.vectors.tolist())]
    usage = EmbeddingUsage(prompt_tokens=result.tokens, total_tokens=result.tokens)
    return EmbeddingList(data=data, model=body.model, usage=usage)
