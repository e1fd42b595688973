"""What a request asks of the sampler: OpenAI's sampling fields plus vLLM's extras,
checked on construction (ValueError names the bad field)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from backend.structured.spec import GrammarSpec

# Temperatures below this are treated as greedy: dividing logits by a near-zero value
# overflows float32 (inf -> NaN probabilities) long before it means anything different.
GREEDY_EPS = 1e-5
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1  # OpenAI's seed is a signed 64-bit integer
PENALTY_MAX = 2.0  # presence and frequency penalties lie in [-2, 2] (OpenAI)
LOGIT_BIAS_MAX = 100.0  # bias values are clamped to [-100, 100] (OpenAI)
TOP_LOGPROBS_MAX = 20  # OpenAI's top_logprobs limit


@dataclass(slots=True)
class SamplingParams:
    max_tokens: int | None = None  # None: until EOS or the context is full; 0: score only
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 disables
    min_p: float = 0.0  # drop tokens whose probability is below min_p * the top one's
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0  # 1 disables
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None  # None: off; k: the chosen token's logprob + k best
    # The prompt's tokens scored too (each given the ones before it; the first has none):
    # None: off; k: each token's logprob + k best. Such a prompt is computed whole, never
    # taken from the prefix cache (whose blocks hold K/V, not log-probabilities).
    prompt_logprobs: int | None = None
    logit_bias: dict[int, float] | None = None  # token id -> bias, clamped to +-100
    n: int = 1  # choices per prompt: the engine's business, not the sampler's
    speculative: bool | None = None  # speculative decoding: None = the engine's default
    # The answer follows this grammar (backend/structured/); such a request does not
    # speculate.
    grammar: GrammarSpec | None = None

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 0:
            raise ValueError("max_tokens must be at least 0")
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError("temperature must be between 0 and 2")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be between 0 and 1, got {self.min_p}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not -PENALTY_MAX <= value <= PENALTY_MAX:
                raise ValueError(f"{name} must be between -2 and 2, got {value}")
        if not 0.0 < self.repetition_penalty < math.inf:
            raise ValueError(
                f"repetition_penalty must be a finite number > 0, got {self.repetition_penalty}"
            )
        if self.seed is not None and not SEED_MIN <= self.seed <= SEED_MAX:
            raise ValueError("seed must be a signed 64-bit integer")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not 0 <= value <= TOP_LOGPROBS_MAX
            ):
                raise ValueError(
                    f"{name} must be None or an integer between 0 and {TOP_LOGPROBS_MAX}, "
                    f"got {value!r}"
                )
        if self.logit_bias is not None:
            self.logit_bias = _checked_logit_bias(self.logit_bias)
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be an integer >= 1, got {self.n!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_EPS

    @property
    def needs_history(self) -> bool:
        """Whether sampling looks at the prompt/output tokens (a penalty is on)."""
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )

    @property
    def adjusts_logits(self) -> bool:
        """Whether the logits must be adjusted (bias or penalties) before anything else."""
        return bool(self.logit_bias) or self.needs_history

    def make_generator(self, device: torch.device) -> torch.Generator | None:
        if self.greedy:
            return None
        gen = torch.Generator(device=device)
        if self.seed is None:
            gen.seed()
        else:
            gen.manual_seed(self.seed % 2**64)  # torch takes the seed as an unsigned 64-bit value
        return gen


def _checked_logit_bias(bias: dict[int, float]) -> dict[int, float]:
    """A copy with int keys and values clamped to [-100, 100]; ValueError if malformed."""
    if not isinstance(bias, dict):
        raise ValueError("logit_bias must be a mapping of token id to bias")
    out: dict[int, float] = {}
    for token, value in bias.items():
        if isinstance(token, bool) or not isinstance(token, int) or token < 0:
            raise ValueError(f"logit_bias keys must be token ids (integers >= 0), got {token!r}")
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise ValueError(f"logit_bias values must be numbers, got {value!r} for {token}")
        out[token] = max(-LOGIT_BIAS_MAX, min(LOGIT_BIAS_MAX, float(value)))
    return out
