"""Turns a scheduled batch into flat tensors, runs the model, returns next-token logits.

Layout of the flat batch (T tokens): decode rows first, then prefill chunks, so the
attention can batch all decodes in one call. Only the last token of a sequence that
completes this step needs logits; the LM head runs on those rows alone. A sequence with
speculative guesses feeds its last token and the guesses as decode rows, each attending
to the context up to its own position (their K/V are written before attention runs, so
row j sees rows 0..j-1: causal), and gets logits for all of them, to verify each guess.
A sequence that asks for its prompt's log-probabilities gets its prompt rows scored too
(prompt_scores.py).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch

from backend.attention import AttentionMetadata, DecodeKernel, PrefillKernel, PrefillSegment
from backend.model import LlamaModel
from backend.prompt_scores import TokenScore, score_tokens
from backend.scheduler import ScheduledBatch
from backend.sequence import Sequence


@dataclass(frozen=True, slots=True)
class StepOutput:
    logits: torch.Tensor  # [N, vocab] float32: per sampling sequence, 1 + len(draft) rows
    sampling: list[Sequence]  # the sequences that yield tokens this step, in row order
    num_rows: list[int]  # logits rows of each sampling sequence
    attended: int  # context tokens the one-query rows attended to, summed (StepCost)
    # Per sequence scoring its prompt: (the sequence, the position of the first scored
    # row, the scores of the tokens after that row and the ones after it)
    prompt_scores: list[tuple[Sequence, int, list[TokenScore]]]


class ModelRunner:
    def __init__(
        self,
        model: LlamaModel,
        num_blocks: int,
        block_size: int,
        kv_dtype: torch.dtype,
        device: torch.device,
        decode_kernel: DecodeKernel | None = None,
        prefill_kernel: PrefillKernel | None = None,
    ) -> None:
        self.model = model
        self.decode_kernel = decode_kernel
        self.prefill_kernel = prefill_kernel
        self.block_size = block_size
        self.device = device
        self.kv_cache = model.allocate_kv_cache(num_blocks, block_size, kv_dtype, device)

    def release(self) -> None:
        """Gives the KV cache's memory back (the engine has stopped: nothing runs again).
        An engine object can outlive its shutdown in a reference cycle until the garbage
        collector's next full pass; its cache (gigabytes) should not."""
        self.kv_cache = self.kv_cache.new_empty(0)

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> StepOutput:
        for c in batch.kv_copies:  # partial-block prefix reuse (blocks.py), before any write
            self.kv_cache[:, :, c.dst, : c.num_tokens] = self.kv_cache[:, :, c.src, : c.num_tokens]

        def is_prefill(i: int) -> bool:
            return batch.num_new_tokens[i] > 1 and not batch.seqs[i].draft

        order = sorted(range(len(batch.seqs)), key=is_prefill)
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        decode_tables: list[list[int]] = []
        decode_ctx: list[int] = []
        prefills: list[PrefillSegment] = []
        last_rows: list[int] = []
        sampling: list[Sequence] = []
        num_rows: list[int] = []
        scored: list[tuple[Sequence, int, int]] = []  # (seq, first position, rows)
        score_rows: list[int] = []
        score_targets: list[int] = []
        for i in order:
            seq, n = batch.seqs[i], batch.num_new_tokens[i]
            start, end = seq.num_computed_tokens, seq.num_computed_tokens + n
            table = seq.block_table
            q_start = len(input_ids)
            input_ids += seq.token_ids[start:end]
            if seq.draft:  # the guesses follow the real tokens
                input_ids += seq.draft[: end - seq.num_tokens]
            positions += range(start, end)
            slots += [table[p // bs] * bs + p % bs for p in range(start, end)]
            if not is_prefill(i):  # a decode, or a verify: one row per token
                width = -(-end // bs)
                for ctx in range(start + 1, end + 1):
                    decode_tables.append(table[:width])
                    decode_ctx.append(ctx)
            else:
                ids = torch.tensor(table[: -(-end // bs)], dtype=torch.long, device=self.device)
                prefills.append(PrefillSegment(q_start, n, end, ids))
            if seq.prompt_logprobs is not None:  # rows whose next token is a prompt token
                hi = min(end, seq.num_prompt_tokens - 1)
                if hi > start:
                    scored.append((seq, start, hi - start))
                    score_rows += range(q_start, q_start + hi - start)
                    score_targets += seq.token_ids[start + 1 : hi + 1]
            if batch.sampling[i]:
                rows = 1 + len(seq.draft)
                last_rows += range(q_start + n - rows, q_start + n)
                sampling.append(seq)
                num_rows.append(rows)

        meta = AttentionMetadata(
            slot_mapping=self._tensor(slots),
            num_decodes=len(decode_ctx),
            decode_block_tables=self._padded(decode_tables) if decode_tables else None,
            decode_ctx_lens=self._tensor(decode_ctx) if decode_ctx else None,
            decode_max_ctx=max(decode_ctx, default=0),
            prefills=prefills,
            decode_kernel=self.decode_kernel,
            prefill_kernel=self.prefill_kernel,
        )
        # A scored prompt is computed as the float reference computes it (model.py).
        with self.model.exact_arithmetic() if scored else contextlib.nullcontext():
            hidden = self.model.forward(
                self._tensor(input_ids), self._tensor(positions), meta, self.kv_cache
            )
        logits = self.model.compute_logits(hidden[self._tensor(last_rows)])
        return StepOutput(
            logits,
            sampling,
            num_rows,
            sum(decode_ctx),
            self._scores(hidden, scored, score_rows, score_targets),
        )

    def _scores(
        self,
        hidden: torch.Tensor,
        scored: list[tuple[Sequence, int, int]],
        rows: list[int],
        targets: list[int],
    ) -> list[tuple[Sequence, int, list[TokenScore]]]:
        if not scored:
            return []
        k = max(seq.prompt_logprobs or 0 for seq, _, _ in scored)
        scores = score_tokens(
            self.model.compute_logits, hidden[self._tensor(rows)], self._tensor(targets), k
        )
        out = []
        for seq, first, n in scored:
            mine, scores = scores[:n], scores[n:]
            want = seq.prompt_logprobs or 0
            if want < k:
                mine = [TokenScore(s.logprob, s.rank, s.top[:want]) for s in mine]
            out.append((seq, first, mine))
        return out

    @torch.inference_mode()
    def time_forward(self, num_tokens: int, context: int = 0) -> float:
        """Seconds for one step of `num_tokens` tokens with logits for all of them: a
        prefill into the first blocks, or with `context`, that many one-query rows each
        attending to the first `context` slots (calibration only: call while the cache
        holds nothing in use; what it writes there is garbage)."""
        capacity = self.kv_cache.shape[2] * self.block_size
        n, ctx = min(num_tokens, capacity), min(context, capacity)
        if ctx:
            table = list(range(-(-ctx // self.block_size)))
            meta = AttentionMetadata(
                slot_mapping=torch.arange(n, device=self.device),
                num_decodes=n,
                decode_block_tables=self._tensor(table * n).view(n, len(table)),
                decode_ctx_lens=self._tensor([ctx] * n),
                decode_max_ctx=ctx,
                decode_kernel=self.decode_kernel,
            )
            positions = torch.full((n,), ctx - 1, device=self.device)
        else:
            meta = AttentionMetadata.single_prefill(n, self.block_size, self.device)
            positions = torch.arange(n, device=self.device)
        ids = torch.zeros(n, dtype=torch.long, device=self.device)
        began = time.perf_counter()
        hidden = self.model.forward(ids, positions, meta, self.kv_cache)
        self.model.compute_logits(hidden).cpu()  # .cpu(): waits for the device
        return time.perf_counter() - began

    def _tensor(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)

    def _padded(self, tables: list[list[int]]) -> torch.Tensor:
        width = max(len(t) for t in tables)
        flat = [b for t in tables for b in t + [0] * (width - len(t))]
        return self._tensor(flat).view(len(tables), width)
