"""Speculative decoding: guess a few tokens cheaply, verify them all in one step.

    SpeculativeConfig   config.py      which proposer, how many guesses, the prior
    Proposer, ...       proposer.py    the interface: guess for many sequences at once
    NgramProposer, ...  ngram.py       prompt lookup: continue an earlier occurrence
    SelfDraftProposer   self_draft.py  early exit: the model's first layers guess
    AcceptanceTracker   acceptance.py  how often guesses are kept, per run of agreement
    StepCost            step_cost.py   what a step of n tokens costs on this machine
    plan_drafts, ...    planner.py     how many guesses pay, per sequence and step
    verify_draft        verify.py      which guesses a sequence keeps (exact sampling)

The engine's use of them, step by step, is backend/engine/speculation.py.

Importing this package costs no torch (gateway/cli.py reads PROPOSERS at start-up):
the names from self_draft.py and verify.py load on first use (PEP 562 __getattr__).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from backend.lazy import lazy_getattr
from backend.speculative.acceptance import AcceptanceTracker, RunAcceptance
from backend.speculative.config import PROPOSERS, SpeculativeConfig
from backend.speculative.ngram import NgramIndex, NgramProposer
from backend.speculative.planner import Candidate, Plan, plan_drafts
from backend.speculative.proposer import Proposal, ProposalRequest, Proposer
from backend.speculative.step_cost import StepCost

if TYPE_CHECKING:
    from backend.speculative.self_draft import SelfDraftProposer
    from backend.speculative.verify import verify_draft

__all__ = [
    "PROPOSERS",
    "AcceptanceTracker",
    "Candidate",
    "NgramIndex",
    "NgramProposer",
    "Plan",
    "Proposal",
    "ProposalRequest",
    "Proposer",
    "RunAcceptance",
    "SelfDraftProposer",
    "SpeculativeConfig",
    "StepCost",
    "plan_drafts",
    "verify_draft",
]

# name -> the submodule that defines it, imported when the name is first asked for
_LAZY = {"SelfDraftProposer": "self_draft", "verify_draft": "verify"}

# Hidden from mypy, which reads the TYPE_CHECKING imports above instead.
if not TYPE_CHECKING:
    __getattr__ = lazy_getattr(__name__, _LAZY)
