"""The engine's async front and its step loop.

`add_request()` returns an async iterator of `Delta`s; `abort()` stops a request. The
model runs on one background thread (torch releases the GIL inside kernels), so the
event loop serving HTTP never blocks on a forward pass. Each iteration of the loop is
one step of continuous batching: the scheduler picks sequences and token counts, the
runner computes them over the paged KV cache, the sampler picks the next tokens, and
finished requests leave at once so waiting ones can take their place.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from prometheus_client import CollectorRegistry

from backend.blocks import BlockManager
from backend.cpu_kernels import paged_decode_kernel, skinny_linear_kernel
from backend.linear import SKINNY_MAX_ROWS
from backend.metrics import EngineMetrics
from backend.request import Delta, Request, RequestStream, SpecState
from backend.runner import ModelRunner
from backend.sampler import SampleRequest, SampleResult, SamplingParams, sample_batch
from backend.scheduler import Scheduler, SchedulerConfig
from backend.sequence import Sequence
from backend.spec_proposers import build_proposer
from backend.spec_verify import verify_draft
from backend.speculative import (
    AcceptanceTracker,
    Candidate,
    NgramIndex,
    Plan,
    ProposalRequest,
    SpeculativeConfig,
    StepCost,
    plan_drafts,
)
from backend.stop_strings import StopStringMatcher
from backend.tokenizer import IncrementalDetokenizer, Tokenizer
from backend.weights import LoadedModel, load_model

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class RequestRejected(ValueError):
    """The request cannot be served as asked (e.g. longer than the context window)."""

    def __init__(self, message: str, code: str = "invalid_prompt") -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class EngineConfig:
    model: str | Path | None = None  # for from_config; Engine() takes a loaded model
    dtype: str = "auto"  # "auto": bfloat16 on CUDA, float32 on CPU
    device: str = "auto"  # "auto": cuda when available, else cpu
    max_model_len: int | None = None  # default: the model's own context length
    block_size: int = 16  # tokens per KV block
    num_kv_blocks: int | None = None  # default: what kv_cache_gb holds
    kv_cache_gb: float | None = None  # default: 2 on CPU, 90% of free memory on CUDA
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 1024
    enable_prefix_caching: bool = True
    int8_decode: bool = False  # int8 weight copies for small steps (CPU; see int8_decode.py)
    # "auto": our C++ kernels where they build (CPU: backend/kernels/: decode attention and
    # the few-row matmul), else pure PyTorch; "torch": pure PyTorch throughout.
    kernels: str = "auto"
    speculative: SpeculativeConfig | None = None  # None: no speculative decoding

    def __post_init__(self) -> None:
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be auto or one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError("max_model_len must be at least 2")
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError("block_size must be a power of two")
        if self.kernels not in ("auto", "torch"):
            raise ValueError(f"kernels must be auto or torch, got {self.kernels!r}")

    def resolve_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolve_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        return DTYPES[self.dtype]


class Engine:
    def __init__(
        self,
        loaded: LoadedModel,
        config: EngineConfig | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        config = config or EngineConfig()
        self.config = config
        self.model = loaded.model
        self.tokenizer: Tokenizer = loaded.tokenizer
        self.model_name = loaded.name
        self.device = loaded.model.embed_tokens.weight.device
        self.dtype = loaded.model.embed_tokens.weight.dtype
        ctx = loaded.config.max_position_embeddings
        if config.int8_decode:
            if self.device.type != "cpu":
                raise ValueError("int8_decode is implemented for CPU only")
            self.model.enable_int8_decode()
        num_blocks = config.num_kv_blocks or self._blocks_that_fit(config)
        # A sequence must fit in the cache on its own, or it could never be scheduled.
        self.max_model_len = min(config.max_model_len or ctx, ctx, num_blocks * config.block_size)
        self.blocks = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(
            SchedulerConfig(config.max_num_seqs, config.max_num_batched_tokens), self.blocks
        )
        use_kernel = config.kernels == "auto" and self.device.type == "cpu"
        skinny = skinny_linear_kernel() if use_kernel else None
        if skinny is not None:
            self.model.enable_skinny_linear(skinny)
        self.runner = ModelRunner(
            self.model,
            num_blocks,
            config.block_size,
            self.dtype,
            self.device,
            paged_decode_kernel() if use_kernel else None,
        )
        self.metrics = EngineMetrics(self, registry or CollectorRegistry())
        self.spec = config.speculative
        self.step_cost = StepCost()
        self.proposer = build_proposer(self.spec, self.runner) if self.spec is not None else None
        if self.spec is not None and self.spec.adaptive:
            self._calibrate_step_cost()
        self._seq_ids = itertools.count()
        self._requests: dict[int, Request] = {}  # seq_id -> request (engine thread only)
        self._pending: list[Request] = []  # added, not yet seen by the step loop
        self._streams: dict[str, RequestStream] = {}
        self._aborted: set[str] = set()
        self._cv = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="engine-step-loop", daemon=True)
        self._thread.start()

    @classmethod
    def from_config(cls, config: EngineConfig) -> Engine:
        if config.model is None:
            raise ValueError("EngineConfig.model is required")
        device = config.resolve_device()
        loaded = load_model(config.model, config.resolve_dtype(device), device)
        return cls(loaded, config)

    def _blocks_that_fit(self, config: EngineConfig) -> int:
        cfg = self.model.config
        bytes_per_block = (
            cfg.num_layers * 2 * config.block_size * cfg.num_kv_heads * cfg.head_dim
            * self.dtype.itemsize
        )  # fmt: skip
        budget = config.kv_cache_gb
        if budget is None and self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return max(1, int(free * 0.9) // bytes_per_block)
        return max(1, int((budget or 2.0) * 2**30) // bytes_per_block)

    # ---- front -------------------------------------------------------------------------

    def add_request(
        self,
        prompt: str | list[int],
        params: SamplingParams,
        request_id: str | None = None,
        same_prompt_as: RequestStream | None = None,
    ) -> RequestStream:
        """Queues a request; must be called from the event loop that will read the stream.

        `same_prompt_as`: an earlier request with the same prompt (another of n choices);
        this one then starts once that prompt's KV is computed and shares its blocks.
        """
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt, add_special_tokens=True)
        else:
            ids = list(prompt)
        if not ids:
            raise RequestRejected("the prompt is empty")
        if any(not 0 <= t < self.tokenizer.vocab_size for t in ids):
            raise RequestRejected(f"prompt token ids must be in [0, {self.tokenizer.vocab_size})")
        room = self.max_model_len - len(ids)
        if params.max_tokens is not None and params.max_tokens > room:
            raise RequestRejected(
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"you requested {len(ids) + params.max_tokens} tokens ({len(ids)} in the prompt, "
                f"{params.max_tokens} for the completion). Please reduce the prompt or max_tokens.",
                "context_length_exceeded",
            )
        if room < 1:
            raise RequestRejected(
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"the prompt has {len(ids)} tokens.",
                "context_length_exceeded",
            )
        speculate = self.spec is not None and (
            self.spec.default_on if params.speculative is None else params.speculative
        )
        if params.speculative and self.spec is None:
            raise RequestRejected(
                "speculative decoding is not enabled on this server "
                "(start it with --speculative METHOD)",
                "unsupported_parameter",
            )
        request_id = request_id or uuid.uuid4().hex
        req = Request(
            request_id=request_id,
            seq=Sequence(
                next(self._seq_ids),
                ids,
                len(ids),
                after=same_prompt_as.seq if same_prompt_as is not None else None,
            ),
            params=params,
            max_tokens=params.max_tokens or room,
            detokenizer=IncrementalDetokenizer(self.tokenizer),
            stop_matcher=StopStringMatcher(params.stop),
            generator=params.make_generator(self.device),
            arrival_time=time.monotonic(),
            spec=self._spec_state() if speculate else None,
        )
        stream = RequestStream(self, request_id, req.seq, asyncio.get_running_loop())
        with self._cv:
            if self._stopping:
                raise RuntimeError("the engine is shut down")
            if request_id in self._streams:
                raise RequestRejected(f"request id {request_id!r} is already in use")
            self._streams[request_id] = stream
            self._pending.append(req)
            self._cv.notify()
        return stream

    def abort(self, request_id: str) -> None:
        with self._cv:
            if request_id in self._streams:
                self._aborted.add(request_id)
                self._cv.notify()

    def shutdown(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout=30)

    @property
    def num_unfinished(self) -> int:
        with self._cv:
            return len(self._streams)

    # ---- step loop (engine thread) -----------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not (
                    self._stopping
                    or self._pending
                    or self._aborted
                    or self.scheduler.has_unfinished
                ):
                    self._cv.wait()
                if self._stopping:
                    self._fail_all(RuntimeError("the engine shut down"))
                    return
                for req in self._pending:
                    self._requests[req.seq.seq_id] = req
                    self.scheduler.add(req.seq)
                self._pending.clear()
                aborted, self._aborted = self._aborted, set()
            deltas: list[tuple[Request, Delta | BaseException]] = [
                self._finish(r, "abort") for r in self._requests_named(aborted)
            ]
            if self.scheduler.has_unfinished:
                deltas += self._step()
            self._publish(deltas)

    def _step(self) -> list[tuple[Request, Delta | BaseException]]:
        if self.spec is not None:
            self._propose()
        batch = self.scheduler.schedule()
        if not batch.seqs:
            return []
        self._note_first_scheduled(batch.seqs)
        try:
            if self.proposer is not None and self.proposer.lazy:
                guessing = [s for s in batch.seqs if s.draft]
                if guessing:  # placeholders -> guesses, now that their KV slots exist
                    self.proposer.fill(guessing)
            began = time.perf_counter()  # StepCost models the verify step, not the guessing
            out = self.runner.execute(batch)
            emitted = self._sample(out.logits, out.sampling, out.num_rows)
            self.step_cost.observe(batch.num_tokens, time.perf_counter() - began, out.attended)
            batch.num_rejected = {
                seq.seq_id: len(seq.draft) + 1 - len(results)
                for seq, results in zip(out.sampling, emitted, strict=True)
                if seq.draft
            }
            self.scheduler.after_step(batch)
        except Exception as exc:  # a failed step fails its requests, not the engine
            log.exception("engine step failed")
            failed = [self._requests[s.seq_id] for s in batch.seqs]
            for req in failed:
                self._release(req)
            return [(req, exc) for req in failed]
        finally:
            for seq in batch.seqs:
                seq.draft = []
        deltas: list[tuple[Request, Delta | BaseException]] = []
        now = time.monotonic()
        for seq, results in zip(out.sampling, emitted, strict=True):
            req = self._requests[seq.seq_id]
            drafted = len(results) - 1 + batch.num_rejected.get(seq.seq_id, 0)
            if req.spec is not None and drafted:
                accepted = len(results) - 1
                req.spec.tracker.record(drafted, accepted)
                req.spec.accepted += accepted
                req.spec.rejected += drafted - accepted
                self.metrics.on_verify(drafted, accepted)
            delta = self._emit(req, results)
            self.metrics.on_token(req, now, len(delta.token_ids))
            if delta.finish_reason is not None:
                self.metrics.on_finish(req, delta.finish_reason, now)
                self._release(req)
            elif drafted:
                self.blocks.trim(seq)  # slots of rejected guesses
            deltas.append((req, delta))
        return deltas

    def _sample(
        self, logits: torch.Tensor, seqs: list[Sequence], num_rows: list[int]
    ) -> list[list[SampleResult]]:
        """Per sequence, the tokens it emits: one sampled token, or for a sequence that
        fed guesses, the accepted guesses and one more (spec_verify.py)."""
        starts = list(itertools.accumulate(num_rows, initial=0))
        plain = [i for i, n in enumerate(num_rows) if n == 1]
        out: list[list[SampleResult]] = [[] for _ in seqs]
        if plain:
            rows = logits if len(plain) == len(seqs) else logits[[starts[i] for i in plain]]
            requests = [self._sample_request(self._requests[seqs[i].seq_id]) for i in plain]
            for i, result in zip(plain, sample_batch(rows, requests), strict=True):
                out[i] = [result]
        for i, n in enumerate(num_rows):
            if n > 1:
                row = self._sample_request(self._requests[seqs[i].seq_id])
                out[i] = verify_draft(logits[starts[i] : starts[i] + n], seqs[i].draft, row)
        return out

    def _emit(self, req: Request, results: list[SampleResult]) -> Delta:
        """Appends a step's tokens to the request, applying stop rules token by token;
        tokens after the one that finishes the request are dropped."""
        deltas = []
        for result in results:
            req.seq.append_token(result.token_id)
            deltas.append(self._advance(req, result))
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

    # ---- speculative decoding (engine thread) -------------------------------------------

    def _spec_state(self) -> SpecState:
        assert self.spec is not None
        ngram = None
        if self.spec.method == "ngram":
            ngram = NgramIndex(self.spec.ngram_min, self.spec.ngram_max)
        return SpecState(AcceptanceTracker(self.spec.prior_acceptance), ngram)

    def _propose(self) -> None:
        """Sets seq.draft for the running decodes whose guesses the planner finds worth
        their cost this step (speculative.py)."""
        assert self.spec is not None and self.proposer is not None
        reqs: list[Request] = []
        proposals: list[ProposalRequest] = []
        for seq in self.scheduler.running:
            req = self._requests[seq.seq_id]
            if req.spec is None or seq.num_uncomputed_tokens != 1:
                continue
            # Guesses past max_tokens or the context window could never be used.
            room = min(
                self.spec.max_draft_tokens,
                req.max_tokens - seq.num_output_tokens - 1,
                self.max_model_len - seq.num_tokens,
            )
            if room > 0:
                reqs.append(req)
                proposals.append(ProposalRequest(seq.token_ids, room, req.spec.ngram))
        if not reqs:
            return
        sched = self.scheduler
        base = min(
            sched.config.max_num_batched_tokens,
            sum(s.num_uncomputed_tokens for s in sched.running)
            + sum(s.num_uncomputed_tokens for s in sched.waiting),
        )
        attended = sum(s.num_tokens for s in sched.running if s.num_uncomputed_tokens == 1)
        if self.proposer.lazy:  # a model proposer: plan first, then guess what is planned
            candidates = [
                Candidate(r.spec.tracker.rate, p.max_tokens, r.seq.num_tokens)  # type: ignore[union-attr]
                for r, p in zip(reqs, proposals, strict=True)
            ]
            plan = self._plan(candidates, base, attended)
            chosen = [
                (r, p, k) for r, p, k in zip(reqs, proposals, plan.num_draft, strict=True) if k
            ]
            # Placeholders: the step is scheduled with them, then fill() guesses.
            drafts = {r.seq.seq_id: [0] * k for r, _, k in chosen}
        else:  # cheap guesses first, so the plan sees how many each sequence has
            guesses = self.proposer.propose(proposals)
            candidates = [
                Candidate(r.spec.tracker.rate, len(g), r.seq.num_tokens)  # type: ignore[union-attr]
                for r, g in zip(reqs, guesses, strict=True)
            ]
            plan = self._plan(candidates, base, attended)
            drafts = {
                r.seq.seq_id: g[:k]
                for r, g, k in zip(reqs, guesses, plan.num_draft, strict=True)
                if k
            }
        self.metrics.spec_plans.labels(reason=plan.reason).inc()
        for req in reqs:
            guess = drafts.get(req.seq.seq_id)
            req.seq.draft = list(guess) if guess else []
            if not guess:
                req.spec.tracker.idle()  # type: ignore[union-attr]

    def _plan(self, candidates: list[Candidate], base_tokens: int, attended: int) -> Plan:
        assert self.spec is not None
        if self.spec.adaptive:
            num_seqs = len(self.scheduler.running) + len(self.scheduler.waiting)
            assert self.proposer is not None
            return plan_drafts(
                candidates,
                base_tokens,
                self.step_cost,
                attended,
                num_seqs,
                self.proposer.pass_seconds,
            )
        return Plan([c.max_draft for c in candidates], "fixed")

    def _calibrate_step_cost(self) -> None:
        """Times forward steps of 1..128 tokens, and one-query rows over a short and a long
        context, back to back: the shape of this machine's cost (StepCost); real steps
        then only rescale it."""
        # Both sides of where the few-row matmul hands over to BLAS, where the curve jumps.
        edges = (SKINNY_MAX_ROWS, SKINNY_MAX_ROWS + 1)
        sizes = sorted({1, 2, 4, 8, 12, *edges, 24, 32, 48, 64, 128})
        sizes = [n for n in sizes if n <= self.max_model_len]
        self.runner.time_forward(sizes[-1])  # warm-up: first calls allocate and pick kernels
        for n in sizes:
            best = min(self.runner.time_forward(n) for _ in range(3))
            self.step_cost.calibrate(n, best)
        rows, short, long = 8, 16, min(1024, self.max_model_len)
        if long > 4 * short:
            t_short, t_long = (
                min(self.runner.time_forward(rows, ctx) for _ in range(3)) for ctx in (short, long)
            )
            self.step_cost.attention = max(t_long - t_short, 0.0) / (rows * (long - short))
        calibrate = getattr(self.proposer, "calibrate", None)
        if calibrate is not None:
            calibrate()

    @staticmethod
    def _sample_request(req: Request) -> SampleRequest:
        if req.params.needs_history:  # penalties look at the tokens so far
            return SampleRequest(
                req.params, req.generator, req.prompt_token_ids, req.output_token_ids
            )
        return SampleRequest(req.params, req.generator)

    def _advance(self, req: Request, result: SampleResult) -> Delta:
        """Applies stop rules to a freshly sampled token and builds the delta."""
        params, token = req.params, result.token_id
        text, matched, finish = "", False, None
        if (token in self.tokenizer.eos_token_ids and not params.ignore_eos) or (
            token in params.stop_token_ids
        ):
            finish = "stop"
        else:
            text, matched = req.stop_matcher.feed(req.detokenizer.add(token))
            if matched:
                finish = "stop"
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

    def _note_first_scheduled(self, seqs: list[Sequence]) -> None:
        """Queue time: from arrival to the first step that works on the request."""
        now = time.monotonic()
        for seq in seqs:
            req = self._requests[seq.seq_id]
            if req.scheduled_time is None:
                req.scheduled_time = now
                self.metrics.queue_time.observe(now - req.arrival_time)

    def _requests_named(self, request_ids: set[str]) -> list[Request]:
        if not request_ids:  # the common case, every step
            return []
        return [r for r in self._requests.values() if r.request_id in request_ids]

    def _finish(self, req: Request, reason: str) -> tuple[Request, Delta]:
        """Ends a request early (abort); its blocks are freed at once."""
        self.metrics.on_finish(req, reason, time.monotonic())
        self._release(req)
        seq = req.seq
        return req, Delta(
            req.request_id, "", [], reason, seq.num_prompt_tokens, seq.num_output_tokens
        )

    def _release(self, req: Request) -> None:
        self.scheduler.finish(req.seq)
        del self._requests[req.seq.seq_id]

    def _publish(self, deltas: list[tuple[Request, Delta | BaseException]]) -> None:
        with self._cv:
            for req, item in deltas:
                stream = self._streams.get(req.request_id)
                if stream is None:
                    continue
                if isinstance(item, BaseException) or item.finish_reason is not None:
                    del self._streams[req.request_id]
                    self._aborted.discard(req.request_id)
                stream.put(item)

    def _fail_all(self, exc: BaseException) -> None:
        for stream in self._streams.values():
            stream.put(exc)
        self._streams.clear()
        self._pending.clear()


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
