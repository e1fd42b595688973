"""The self-draft proposer: the target model's first layers, with its own head, guess."""

from __future__ import annotations

import time
from collections.abc import Sequence as Seq

import torch

from backend.attention import AttentionMetadata
from backend.runner import ModelRunner
from backend.sequence import Sequence
from backend.speculative.proposer import Proposal, ProposalRequest


class SelfDraftProposer:
    """Early exit: the target's first `num_layers` layers, then its final norm and LM head,
    guess greedily, one token per pass, all speculating sequences batched.

    It needs no second model and no cache of its own: for the tokens it reads, the
    first layers' K/V in the target's cache are exactly what it would compute, and what it
    writes for its guesses (in the slots the step reserved for them) the verification
    pass overwrites with the same values where guesses are kept.
    """

    lazy = True

    def __init__(self, runner: ModelRunner, num_layers: int) -> None:
        total = runner.model.config.num_layers
        if num_layers >= total:
            raise ValueError(f"self_draft_layers must be below the model's {total} layers")
        self.runner = runner
        self.num_layers = num_layers
        self.pass_seconds = 0.0  # set by calibrate()

    @torch.inference_mode()
    def calibrate(self) -> None:
        """Times one guessing pass (one row through the first layers and the head); call
        while the cache holds nothing in use."""
        runner = self.runner
        meta = AttentionMetadata.single_prefill(1, runner.block_size, runner.device)
        ids = torch.zeros(1, dtype=torch.long, device=runner.device)
        best = float("inf")
        for _ in range(4):
            began = time.perf_counter()
            hidden = runner.model.forward(
                ids, ids, meta, runner.kv_cache, num_layers=self.num_layers
            )
            runner.model.compute_logits(hidden).argmax(-1).cpu()
            best = min(best, time.perf_counter() - began)
        self.pass_seconds = best

    def propose(self, requests: Seq[ProposalRequest]) -> list[Proposal]:
        raise NotImplementedError("the self-draft guesses after scheduling (fill)")

    @torch.inference_mode()
    def fill(self, seqs: Seq[Sequence]) -> None:
        """Replaces the placeholder guesses in each seq.draft with real ones."""
        runner, bs = self.runner, self.runner.block_size
        device = runner.device
        last = [s.token_ids[-1] for s in seqs]
        for j in range(max(len(s.draft) for s in seqs)):
            rows = [i for i, s in enumerate(seqs) if j < len(s.draft)]
            positions = [seqs[i].num_tokens - 1 + j for i in rows]
            tables = [seqs[i].block_table for i in rows]
            slots = [t[p // bs] * bs + p % bs for t, p in zip(tables, positions, strict=True)]
            width = max(-(-(p + 1) // bs) for p in positions)
            padded = [t[:width] + [0] * (width - len(t[:width])) for t in tables]
            meta = AttentionMetadata(
                slot_mapping=torch.tensor(slots, device=device),
                num_decodes=len(rows),
                decode_block_tables=torch.tensor(padded, device=device),
                decode_ctx_lens=torch.tensor([p + 1 for p in positions], device=device),
                decode_max_ctx=max(positions) + 1,
                decode_kernel=runner.decode_kernel,
            )
            ids = torch.tensor([last[i] for i in rows], device=device)
            hidden = runner.model.forward(
                ids,
                torch.tensor(positions, device=device),
                meta,
                runner.kv_cache,
                num_layers=self.num_layers,
            )
            guesses: list[int] = runner.model.compute_logits(hidden).argmax(-1).tolist()
            for i, g in zip(rows, guesses, strict=True):
                seqs[i].draft[j] = g
                last[i] = g
