"""OpenAI request fields -> the engine's inputs: prompt messages and `SamplingParams`.

Every field is either honoured or refused with a 400 naming it; none is silently
dropped.
"""

from __future__ import annotations

from typing import Any

from backend.sampling_params import SamplingParams
from backend.structured import GrammarSpec
from gateway.errors import InvalidRequest
from gateway.schemas import ChatCompletionRequest, ChatMessage, CompletionRequest


def unsupported(name: str) -> InvalidRequest:
    return InvalidRequest(
        f"'{name}' is not supported by this model yet.", param=name, code="unsupported_parameter"
    )


def chat_logprobs(request: ChatCompletionRequest) -> int | None:
    """How many alternatives to report per token, or None when logprobs are off."""
    if request.top_logprobs is not None and not request.logprobs:
        raise InvalidRequest("'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs")
    return (request.top_logprobs or 0) if request.logprobs else None


def completion_logprobs(request: CompletionRequest) -> int | None:
    for name, bad in (("suffix", bool(request.suffix)), ("best_of", (request.best_of or 1) > 1)):
        if bad:
            raise unsupported(name)
    return request.logprobs


def prompt_scoring(request: ChatCompletionRequest | CompletionRequest, k: int | None) -> int | None:
    """How many alternatives the engine reports per prompt token, or None: for vLLM's
    `prompt_logprobs`, and on legacy completions for `echo` with `logprobs` (k)."""
    if request.prompt_logprobs is not None and request.stream:
        raise InvalidRequest(
            "'prompt_logprobs' is not available when 'stream' is true.", param="prompt_logprobs"
        )
    echoed = k if isinstance(request, CompletionRequest) and request.echo else None
    wanted = [x for x in (request.prompt_logprobs, echoed) if x is not None]
    return max(wanted) if wanted else None


def sampling_params(
    request: ChatCompletionRequest | CompletionRequest,
    max_tokens: int | None,
    logprobs: int | None,
    vocab_size: int,
    prompt_logprobs: int | None = None,
    grammar: GrammarSpec | None = None,
) -> SamplingParams:
    stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None or request.top_p == 0 else request.top_p,
            top_k=max(0, request.top_k or 0),
            min_p=request.min_p or 0.0,
            presence_penalty=request.presence_penalty or 0.0,
            frequency_penalty=request.frequency_penalty or 0.0,
            repetition_penalty=request.repetition_penalty or 1.0,
            seed=request.seed,
            stop=[s for s in stop if s],
            ignore_eos=bool(request.ignore_eos),
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            logit_bias=_logit_bias(request.logit_bias, vocab_size),
            speculative=request.speculative,
            grammar=grammar,
        )
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from exc


def _logit_bias(bias: dict[str, float] | None, vocab_size: int) -> dict[int, float] | None:
    if not bias:
        return None
    out: dict[int, float] = {}
    for key, value in bias.items():
        if not key.lstrip("-").isdigit() or not 0 <= int(key) < vocab_size:
            raise InvalidRequest(
                f"Invalid key {key!r} in 'logit_bias': keys are token ids in [0, {vocab_size}).",
                param="logit_bias",
            )
        out[int(key)] = value
    return out


def message_dict(message: ChatMessage, index: int) -> dict[str, Any]:
    """A message as chat templates expect it (plain dicts, text content)."""
    content = message.content
    if isinstance(content, list):
        texts = []
        for part in content:
            if part.type != "text" or part.text is None:
                raise InvalidRequest(
                    f"Content of type '{part.type}' is not supported by this model; only text is.",
                    param=f"messages[{index}].content",
                )
            texts.append(part.text)
        content = "".join(texts)
    role = "system" if message.role == "developer" else message.role
    out: dict[str, Any] = {"role": role, "content": content or ""}
    if message.name:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": c.type,
                "function": {"name": c.function.name, "arguments": c.function.arguments},
            }
            for c in message.tool_calls
        ]
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    return out


def prompt_list(prompt: str | list[str | int | list[int]]) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise InvalidRequest("'prompt' must not be empty.", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        return [[int(p) for p in prompt]]  # type: ignore[arg-type]
    if all(isinstance(p, str) for p in prompt) or all(isinstance(p, list) for p in prompt):
        return list(prompt)  # type: ignore[arg-type]
    raise InvalidRequest(
        "'prompt' must be a string, a list of strings, a list of token ids or a list of lists "
        "of token ids.",
        param="prompt",
    )
