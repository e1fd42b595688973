"""Next-token selection, one row or a whole batch (the parameters: sampling_params.py).

Each request owns a `torch.Generator` seeded from its `seed`, so a seeded request
draws the same tokens whatever else the engine is doing: `sample_batch` takes exactly
one uniform number from a sampled row's generator per step, and every computation on a
row depends on that row alone, so a row gets bitwise the same result alone or batched.

Per row, in vLLM's order:

1. `logit_bias` is added to the raw logits;
2. repetition penalty (tokens of the prompt or the output: positive logits divided by it,
   negative ones multiplied), then frequency and presence penalties (output tokens only:
   `logit -= frequency * count + presence * (count > 0)`);
3. log-probabilities, when asked for, are `log_softmax` of these adjusted logits, before
   temperature and truncation. (vLLM's default, "raw_logprobs", is before bias and
   penalties too; its "processed" modes are after temperature and top-k/top-p.) Our
   choice reports what the model plus the request's own bias/penalties assign to each
   token, independent of how the token is then drawn, so greedy and sampled requests
   report comparable numbers;
4. greedy rows (temperature < GREEDY_EPS, sampling_params.py) take the argmax; the others
   are divided by their temperature, then truncated by top_k, top_p and min_p, and drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from backend.sampling_params import SamplingParams

# top_p without top_k first looks for the nucleus among this many best tokens per row,
# then this many, and sorts the whole row only when even that is not enough mass:
# a full sort of a 49k vocabulary costs ~20x a top-256 selection on a CPU.
_NUCLEUS_TIERS = (256, 4096)
# The draw inverts the CDF in blocks of this many tokens: float32 prefix sums within a
# block, float64 across blocks, so tiny probabilities are not lost to float32 rounding.
_CDF_BLOCK = 256
_CDF_DIRECT_MAX = 4096  # up to this vocabulary size, one float64 prefix sum


@dataclass(slots=True)
class SampleRequest:
    """One row of a batch: its parameters, its generator and the token history."""

    params: SamplingParams
    generator: torch.Generator | None  # None: the global generator (greedy rows use none)
    prompt_token_ids: Sequence[int] = ()
    output_token_ids: Sequence[int] = ()


@dataclass(slots=True)
class SampleResult:
    token_id: int
    logprob: float | None = None  # the chosen token's log-probability, when asked for
    top_logprobs: list[tuple[int, float]] = field(default_factory=list)  # best first


def sample(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None,
    prompt_token_ids: Sequence[int] = (),
    output_token_ids: Sequence[int] = (),
) -> int:
    """logits: [vocab] float32 -> the chosen token id (a batch of one)."""
    row = SampleRequest(params, generator, prompt_token_ids, output_token_ids)
    return sample_batch(logits.unsqueeze(0), [row])[0].token_id


def sample_batch(logits: torch.Tensor, rows: Sequence[SampleRequest]) -> list[SampleResult]:
    """logits: [N, vocab] (float32; other dtypes are upcast) -> one result per row.

    `logits` is not modified.
    """
    if logits.dim() != 2 or logits.shape[0] != len(rows):
        raise ValueError(f"logits {tuple(logits.shape)} do not match {len(rows)} rows")
    if logits.dtype != torch.float32:
        logits = logits.float()
    greedy = [i for i, row in enumerate(rows) if row.params.greedy]
    sampled = [i for i, row in enumerate(rows) if not row.params.greedy]
    results: list[SampleResult | None] = [None] * len(rows)
    for group in (greedy, sampled):
        if not group:
            continue
        group_rows = [rows[i] for i in group]
        processed = processed_logits(logits, group, group_rows)
        # Logprobs come from the processed logits, before temperature (see module doc).
        want = [j for j, row in enumerate(group_rows) if row.params.logprobs is not None]
        logprobs = torch.log_softmax(_take(processed, want), dim=-1) if want else None
        if group is greedy:
            tokens = torch.argmax(processed, dim=-1)
        else:
            tokens = _pick_sampled(processed, group_rows, owned=processed is not logits)
        for j, result in zip(group, build_results(tokens, want, group_rows, logprobs), strict=True):
            results[j] = result
    return [r for r in results if r is not None]


def _take(t: torch.Tensor, idx: list[int]) -> torch.Tensor:
    """Rows `idx` of `t`: `t` itself when that is all of them in order, else a copy."""
    if len(idx) == t.shape[0]:
        return t
    return t[torch.tensor(idx, device=t.device)]  # indexing copies faster than index_select


def processed_logits(
    logits: torch.Tensor, idx: list[int], rows: list[SampleRequest]
) -> torch.Tensor:
    """The rows `idx` of `logits` after logit_bias and penalties (rows without any are
    only gathered). Returns `logits` itself when nothing needs changing."""
    changing = [j for j, row in enumerate(rows) if row.params.adjusts_logits]
    sub = _take(logits, idx)
    if not changing:
        return sub
    if sub is logits:
        sub = logits.clone()
    for j in changing:
        _apply_bias_and_penalties(sub[j], rows[j])
    return sub


def _token_tensor(ids: Sequence[int], device: torch.device) -> torch.Tensor:
    if isinstance(ids, torch.Tensor):
        return ids.to(device=device, dtype=torch.long)
    return torch.tensor(list(ids), dtype=torch.long, device=device)


def _apply_bias_and_penalties(row: torch.Tensor, req: SampleRequest) -> None:
    """Adjusts one row of logits [vocab] in place."""
    params, device, vocab = req.params, row.device, row.shape[0]
    if params.logit_bias:
        # Ids outside the vocabulary are ignored (the API layer checks them against the
        # tokenizer); dict keys are unique, so index_add_ adds each bias once.
        items = [(t, b) for t, b in params.logit_bias.items() if t < vocab]
        if items:
            ids = torch.tensor([t for t, _ in items], dtype=torch.long, device=device)
            bias = torch.tensor([b for _, b in items], dtype=row.dtype, device=device)
            row.index_add_(0, ids, bias)
    if params.repetition_penalty != 1.0:
        seen = torch.cat(
            [
                _token_tensor(req.prompt_token_ids, device),
                _token_tensor(req.output_token_ids, device),
            ]
        )
        if seen.numel():
            # Repeated ids all write the same value, so duplicates are harmless.
            vals = row[seen]
            penalty = params.repetition_penalty
            row[seen] = torch.where(vals > 0, vals / penalty, vals * penalty)
    if (params.presence_penalty or params.frequency_penalty) and len(req.output_token_ids):
        ids, counts = torch.unique(_token_tensor(req.output_token_ids, device), return_counts=True)
        penalty = counts.to(row.dtype) * params.frequency_penalty + params.presence_penalty
        row.index_add_(0, ids, -penalty)


def _pick_sampled(
    processed: torch.Tensor, rows: list[SampleRequest], *, owned: bool
) -> torch.Tensor:
    """Temperature, truncation and a draw per row; `processed` is divided in place when
    `owned` (a copy of ours) to spare an allocation."""
    probs = sampling_probs(processed, rows, owned=owned)
    return draw(probs, uniforms(rows, processed.device))


def sampling_probs(
    processed: torch.Tensor, rows: Sequence[SampleRequest], *, owned: bool = False
) -> torch.Tensor:
    """processed [S, vocab] -> the distribution each row draws from, after temperature,
    top_k, top_p and min_p: [S, vocab] float32, non-negative, rows NOT renormalised."""
    device, vocab = processed.device, processed.shape[1]
    temps = torch.tensor([r.params.temperature for r in rows], device=device).unsqueeze(1)
    probs = torch.softmax(processed.div_(temps) if owned else processed / temps, dim=-1)

    # Each row keeps the tokens at or above a floor: top_k/top_p's threshold, raised to
    # min_p * the top probability (which truncation never removes, so applying min_p
    # after top_k/top_p and together with them is the same).
    floor: torch.Tensor | None = None
    truncating = [
        j for j, r in enumerate(rows) if 0 < r.params.top_k < vocab or r.params.top_p < 1.0
    ]
    if truncating:
        floor = _truncation_floor(_take(probs, truncating), [rows[j] for j in truncating])
        if len(truncating) < len(rows):
            index = torch.tensor(truncating, device=device)
            floor = torch.zeros(len(rows), device=device).index_put_((index,), floor)
    if any(r.params.min_p > 0.0 for r in rows):
        min_p = torch.tensor([r.params.min_p for r in rows], device=device)
        min_p_floor = probs.amax(dim=-1) * min_p
        floor = min_p_floor if floor is None else torch.maximum(floor, min_p_floor)
    if floor is not None:
        probs.masked_fill_(probs < floor.unsqueeze(1), 0.0)
    return probs


def uniforms(rows: Sequence[SampleRequest], device: torch.device) -> torch.Tensor:
    """One uniform float64 in [0, 1) per row, from the row's own generator: [S]."""
    draws = [
        torch.rand(
            1,
            generator=r.generator,
            dtype=torch.float64,
            device=r.generator.device if r.generator is not None else device,
        )
        for r in rows
    ]
    if len(draws) == 1:
        return draws[0].to(device)
    if all(d.device == draws[0].device for d in draws):
        return torch.cat(draws).to(device)
    return torch.cat([d.to(device) for d in draws])


def _truncation_floor(probs: torch.Tensor, rows: list[SampleRequest]) -> torch.Tensor:
    """The probability each row of `probs` [T, vocab] must reach to survive top_k and
    top_p: [T].

    A row's threshold is found among its best tokens (torch.topk's values are exact
    order statistics and cumsum runs along the row, so the threshold does not depend on
    the other rows). Ties with the threshold are kept.
    """
    device, vocab = probs.device, probs.shape[1]
    top_k = [r.params.top_k if 0 < r.params.top_k < vocab else 0 for r in rows]
    top_p = [r.params.top_p for r in rows]
    thresholds: list[torch.Tensor] = []  # [len(rows_done)] each
    rows_done: list[int] = []
    pending = list(range(len(rows)))
    for tier in (*_NUCLEUS_TIERS, vocab):
        tier = min(tier, vocab)
        ks = [top_k[j] for j in pending]
        ps = [top_p[j] for j in pending]
        # top_k rows look at exactly their top_k tokens; top_p-only rows at `tier` tokens.
        need = [k or tier for k in ks]
        kmax = max(need)
        if len(pending) == probs.shape[0]:
            sub = probs
        else:
            sub = probs[torch.tensor(pending, device=device)]
        values = torch.topk(sub, kmax, dim=-1).values  # best first
        if min(need) < kmax:
            need_t = torch.tensor(need, device=device).unsqueeze(1)
            values = values.masked_fill(torch.arange(kmax, device=device) >= need_t, 0.0)
            kth = values.gather(1, need_t - 1).squeeze(1)
        else:
            kth = values[:, -1]
        if all(p >= 1.0 for p in ps):
            thresholds.append(kth)
            rows_done += pending
            break
        cum = values.cumsum(dim=-1)
        mass = cum[:, -1]  # of the row's candidates
        # top_p is a fraction of what top_k kept, or of the whole (softmax) row.
        limit = torch.tensor(ps, device=device)
        if any(ks):
            has_k = torch.tensor([k > 0 for k in ks], device=device)
            scale = mass if all(ks) else torch.where(has_k, mass, 1.0)
            limit = limit * scale
        # Keep the smallest prefix whose mass reaches the limit (the top token always
        # stays). Positions past a row's candidates hold 0 with cum = its mass: they
        # count only for rows whose candidates fall short, which go to the next tier.
        kept = ((cum - values) < limit.unsqueeze(1)).sum(dim=-1).clamp(min=1, max=kmax)
        threshold = values.gather(1, (kept - 1).unsqueeze(1)).squeeze(1)
        if not all(p < 1.0 for p in ps):
            nucleus = torch.tensor([p < 1.0 for p in ps], device=device)
            threshold = torch.where(nucleus, threshold, kth)
        # Rows with top_k, or already looking at the whole vocabulary, are settled;
        # the others when their candidates hold at least the limit's mass.
        short = [pos for pos, k in enumerate(ks) if not k and tier < vocab]
        if short:
            enough = (mass >= limit).tolist()
            short = [pos for pos in short if not enough[pos]]
        if not short:
            thresholds.append(threshold)
            rows_done += pending
            break
        settled = [pos for pos in range(len(pending)) if pos not in set(short)]
        if settled:
            thresholds.append(threshold[torch.tensor(settled, device=device)])
            rows_done += [pending[pos] for pos in settled]
        pending = [pending[pos] for pos in short]
    threshold = thresholds[0] if len(thresholds) == 1 else torch.cat(thresholds)
    if rows_done != list(range(len(rows))):
        order = torch.tensor(rows_done, device=device)
        threshold = torch.empty_like(threshold).index_put_((order,), threshold)
    return threshold


def draw(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: probs [S, vocab] (non-negative, any total), uniforms [S] float64
    in [0, 1) -> token ids [S].

    A float32 prefix sum over a large vocabulary loses tokens smaller than its rounding
    (~6e-8 near 1): a small vocabulary is summed in float64; a large one in blocks of
    `_CDF_BLOCK` tokens (float32 within a block, float64 across blocks), picking the
    block and then the token within it. The method depends on the vocabulary only.
    """
    rows, vocab = probs.shape
    if vocab <= _CDF_DIRECT_MAX:
        cdf = probs.double().cumsum(dim=-1)
        return _search(cdf, uniforms.unsqueeze(1)).squeeze(1)
    pad = -vocab % _CDF_BLOCK
    padded = F.pad(probs, (0, pad)) if pad else probs
    inner = padded.view(rows, -1, _CDF_BLOCK).cumsum(dim=-1)  # [S, blocks, BLOCK] float32
    outer = inner[..., -1].double().cumsum(dim=-1)  # [S, blocks]
    block = _search(outer, uniforms.unsqueeze(1))  # [S, 1]
    before = outer.gather(1, (block - 1).clamp(min=0)).masked_fill(block == 0, 0.0)
    within = inner[torch.arange(rows, device=probs.device), block.squeeze(1)].double()
    # Where u falls inside the block, as a fraction of the block's mass.
    x = uniforms.unsqueeze(1) * outer[:, -1:] - before
    token = _search(within, x / within[:, -1:])
    return (block * _CDF_BLOCK + token).squeeze(1).clamp(max=vocab - 1)


def _search(cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """First index where the (unnormalized, non-decreasing) cdf [S, M] exceeds u [S, 1]
    times its total: a token with positive mass, since u * total is kept below total."""
    total = cdf[:, -1:]
    x = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, x, right=True).clamp(max=cdf.shape[1] - 1)


def build_results(
    tokens: torch.Tensor,
    want: list[int],
    rows: list[SampleRequest],
    logprobs: torch.Tensor | None,
) -> list[SampleResult]:
    token_ids: list[int] = tokens.tolist()
    results = [SampleResult(token_id=t) for t in token_ids]
    if logprobs is None:
        return results
    chosen_ids = tokens[torch.tensor(want, device=tokens.device)]
    chosen: list[float] = logprobs.gather(1, chosen_ids.unsqueeze(1)).squeeze(1).tolist()
    counts = [rows[j].params.logprobs or 0 for j in want]
    top_values: list[list[float]] = []
    top_ids: list[list[int]] = []
    if max(counts) > 0:
        best = torch.topk(logprobs, max(counts), dim=-1)
        top_values, top_ids = best.values.tolist(), best.indices.tolist()
    for pos, (j, count) in enumerate(zip(want, counts, strict=True)):
        results[j].logprob = chosen[pos]
        if count:
            pairs = zip(top_ids[pos][:count], top_values[pos][:count], strict=True)
            results[j].top_logprobs = list(pairs)
    return results
