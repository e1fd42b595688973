"""What a request must satisfy before the engine takes it, and the error when it does
not (the gateway answers 400 with `code`)."""

from __future__ import annotations

from backend.sampling_params import SamplingParams
from backend.tokenizer import Tokenizer


class RequestRejected(ValueError):
    """The request cannot be served as asked (e.g. longer than the context window)."""

    def __init__(self, message: str, code: str = "invalid_prompt") -> None:
        super().__init__(message)
        self.code = code


def prompt_token_ids(prompt: str | list[int], tokenizer: Tokenizer) -> list[int]:
    """The prompt as token ids (text is encoded with the model's special tokens)."""
    if isinstance(prompt, str):
        ids = tokenizer.encode(prompt, add_special_tokens=True)
    else:
        ids = list(prompt)
    if not ids:
        raise RequestRejected("the prompt is empty")
    if any(not 0 <= t < tokenizer.vocab_size for t in ids):
        raise RequestRejected(f"prompt token ids must be in [0, {tokenizer.vocab_size})")
    return ids


def completion_room(num_prompt_tokens: int, params: SamplingParams, max_model_len: int) -> int:
    """Tokens the context window leaves for the completion, when it holds the request."""
    room = max_model_len - num_prompt_tokens
    if params.max_tokens is not None and params.max_tokens > room:
        raise RequestRejected(
            f"This model's maximum context length is {max_model_len} tokens. However, "
            f"you requested {num_prompt_tokens + params.max_tokens} tokens "
            f"({num_prompt_tokens} in the prompt, {params.max_tokens} for the completion). "
            "Please reduce the prompt or max_tokens.",
            "context_length_exceeded",
        )
    if room < 1 and params.max_tokens != 0:  # max_tokens 0 scores the prompt alone
        raise RequestRejected(
            f"This model's maximum context length is {max_model_len} tokens. However, "
            f"the prompt has {num_prompt_tokens} tokens.",
            "context_length_exceeded",
        )
    return room


def check_speculative(params: SamplingParams, enabled: bool) -> None:
    """A request may ask for speculative decoding only where the server offers it."""
    if params.speculative and not enabled:
        raise RequestRejected(
            "speculative decoding is not enabled on this server "
            "(start it with --speculative METHOD)",
            "unsupported_parameter",
        )
