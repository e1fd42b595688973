"""Builds the proposer a SpeculativeConfig names (see speculative.py for the interface)."""

from __future__ import annotations

from backend.runner import ModelRunner
from backend.speculative import NgramProposer, Proposer, SpeculativeConfig
from backend.weights import LoadedModel


def build_proposer(config: SpeculativeConfig, target: LoadedModel, runner: ModelRunner) -> Proposer:
    if config.method == "ngram":
        return NgramProposer()
    raise ValueError(f"speculative method {config.method!r} is not available")
