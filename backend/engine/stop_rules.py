"""When a request stops, and the text it emits on the way.

Token by token: an end-of-generation token (unless ignore_eos) or one of the request's
stop_token_ids finishes it with "stop", a stop string in the text with "stop" (the
string itself is not sent; tokenizer/stop_strings.py), max_tokens with "length".
Tokens after the one that finishes the request are dropped. A request with max_tokens 0
finishes with "length" once its prompt is computed (and scored, when it asked). A request
under a grammar (backend/structured/) stops as soon as the grammar can only end.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Set

from backend.request import Delta, Request
from backend.sampler import SampleResult


def emit_tokens(req: Request, results: list[SampleResult], eos_token_ids: Set[int]) -> Delta:
    """Appends a step's tokens (one sampled, or accepted guesses and one more) to the
    request, applying the stop rules to each; one delta for all of them. The request's
    first delta carries its prompt's scores, when it asked for them."""
    delta = _emitted(req, results, eos_token_ids)
    if req.prompt_scores is not None:
        delta = dataclasses.replace(delta, prompt_logprobs=req.prompt_scores)
        req.prompt_scores = None
    return delta


def _emitted(req: Request, results: list[SampleResult], eos_token_ids: Set[int]) -> Delta:
    if req.max_tokens == 0:  # the prompt was scored; nothing is generated
        seq = req.seq
        return Delta(
            req.request_id, "", [], "length", seq.num_prompt_tokens, 0,
            cached_tokens=seq.num_cached_tokens,
        )  # fmt: skip
    deltas = []
    for result in results:
        req.seq.append_token(result.token_id)
        deltas.append(_advance(req, result, eos_token_ids))
        if deltas[-1].finish_reason is not None:
            break
    delta = deltas[0] if len(deltas) == 1 else _merged(deltas)
    if req.spec is not None:
        delta = dataclasses.replace(
            delta,
            accepted_draft_tokens=req.spec.accepted,
            rejected_draft_tokens=req.spec.rejected,
        )
    return delta


def _advance(req: Request, result: SampleResult, eos_token_ids: Set[int]) -> Delta:
    """Applies the stop rules to a freshly sampled token and builds its delta."""
    params, token = req.params, result.token_id
    text, matched, finish = "", False, None
    if req.grammar is not None:
        req.grammar.consume_token(token)  # allowed: the sampler saw only allowed tokens
    if (token in eos_token_ids and not params.ignore_eos) or token in params.stop_token_ids:
        finish = "stop"
    else:
        text, matched = req.stop_matcher.feed(req.detokenizer.add(token))
        if matched:
            finish = "stop"
        elif req.grammar is not None and req.grammar.is_stopped():  # it can only end now
            finish = "length" if req.closing else "stop"  # closed early for its budget
        elif req.seq.num_output_tokens >= req.max_tokens:
            finish = "length"
    if finish is not None and not matched:
        # Nothing more will come: text held back for a possible stop string is final.
        more, matched = req.stop_matcher.feed(req.detokenizer.flush())
        text += more if matched else more + req.stop_matcher.flush()
    return Delta(
        req.request_id,
        text,
        [token],
        finish,
        req.seq.num_prompt_tokens,
        req.seq.num_output_tokens,
        None if result.logprob is None else [result.logprob],
        None if result.logprob is None else [result.top_logprobs],
        cached_tokens=min(req.seq.num_cached_tokens, req.seq.num_prompt_tokens),
    )


def _merged(deltas: list[Delta]) -> Delta:
    """One delta for several tokens of a request that came out of the same step."""
    last = deltas[-1]
    with_logprobs = last.logprobs is not None
    return dataclasses.replace(
        last,
        text="".join(d.text for d in deltas),
        token_ids=[t for d in deltas for t in d.token_ids],
        logprobs=[x for d in deltas for x in d.logprobs or []] if with_logprobs else None,
        top_logprobs=[x for d in deltas for x in d.top_logprobs or []] if with_logprobs else None,
    )
