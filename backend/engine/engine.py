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
import itertools
import logging
import threading
import time
import uuid

import torch
from prometheus_client import CollectorRegistry

from backend.blocks import BlockManager
from backend.engine.attention_kernels import attention_kernels
from backend.engine.config import EngineConfig
from backend.engine.speculation import Speculation
from backend.engine.stop_rules import emit_tokens
from backend.engine.validation import (
    RequestRejected,
    check_speculative,
    completion_room,
    prompt_token_ids,
)
from backend.kernels import attach_cpu_kernels, load_cpu_kernels
from backend.loading.weights import LoadedModel, load_model
from backend.metrics import EngineMetrics
from backend.request import Delta, Request, RequestStream
from backend.runner import ModelRunner
from backend.sampler import SampleRequest, SampleResult, sample_batch
from backend.sampling_params import SamplingParams
from backend.scheduler import ScheduledBatch, Scheduler, SchedulerConfig
from backend.sequence import Sequence
from backend.speculative.verify import verify_draft
from backend.structured import GrammarError
from backend.structured.grammars import Grammars
from backend.structured.masks import GrammarMasks, PendingMasks
from backend.tokenizer import IncrementalDetokenizer, StopStringMatcher, Tokenizer

log = logging.getLogger(__name__)


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
        self.device = loaded.model.device
        self.dtype = loaded.model.dtype
        ctx = loaded.config.max_position_embeddings
        if config.int8_decode:
            if self.device.type != "cpu":
                raise ValueError("int8_decode is implemented for CPU only")
            if self.model.packed_layers():
                log.warning(
                    "int8_decode copies float layers only: the packed ones (quantization "
                    "auto) decode with int8 activations already; quantization none + "
                    "int8_decode is the float model with int8 copies"
                )
            self.model.enable_int8_decode()
        num_blocks = config.num_kv_blocks or self._blocks_that_fit(config)
        # A sequence must fit in the cache on its own, or it could never be scheduled.
        self.max_model_len = min(config.max_model_len or ctx, ctx, num_blocks * config.block_size)
        self.blocks = BlockManager(num_blocks, config.block_size, config.prefix_caching)
        self.scheduler = Scheduler(
            SchedulerConfig(config.max_num_seqs, config.max_num_batched_tokens), self.blocks
        )
        kernels = None
        if config.kernels == "auto" and self.device.type == "cpu":
            kernels = load_cpu_kernels(config.compiler, config.home)
        if kernels is not None:
            attach_cpu_kernels(self.model, kernels)
        elif self.model.packed_layers():
            log.info("no CPU kernels: expanding the packed quantized weights to %s", self.dtype)
            self.model.unpack()
        decode_kernel, prefill_kernel = attention_kernels(self.device, config.kernels, kernels)
        self.runner = ModelRunner(
            self.model,
            num_blocks,
            config.block_size,
            self.dtype,
            self.device,
            decode_kernel,
            prefill_kernel,
        )
        self.metrics = EngineMetrics(
            self, registry or CollectorRegistry(), config.served_model_name or loaded.name
        )
        self.grammars = Grammars(self.tokenizer, loaded.config.vocab_size)
        self.masks = GrammarMasks(loaded.config.vocab_size)
        self.speculation: Speculation | None = None
        if config.speculative is not None:
            self.speculation = Speculation(
                config.speculative, self.runner, self.scheduler, self.metrics, self.max_model_len
            )
            if config.speculative.adaptive_speculation:
                self.speculation.calibrate()
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
        loaded = load_model(config.model, config.resolve_dtype(device), device, config.quantization)
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
        ids = prompt_token_ids(prompt, self.tokenizer)
        room = completion_room(len(ids), params, self.max_model_len)
        check_speculative(params, enabled=self.speculation is not None)
        try:
            grammar = self.grammars.matcher(params.grammar) if params.grammar else None
        except GrammarError as exc:
            raise RequestRejected(f"the grammar cannot be used: {exc}", "invalid_grammar") from exc
        spec = None
        if self.speculation is not None and self.speculation.wants(params):
            spec = self.speculation.new_state()
        request_id = request_id or uuid.uuid4().hex
        req = Request(
            request_id=request_id,
            seq=Sequence(
                next(self._seq_ids),
                ids,
                len(ids),
                after=same_prompt_as.seq if same_prompt_as is not None else None,
                prompt_logprobs=params.prompt_logprobs,
            ),
            params=params,
            max_tokens=room if params.max_tokens is None else params.max_tokens,
            detokenizer=IncrementalDetokenizer(self.tokenizer),
            stop_matcher=StopStringMatcher(params.stop),
            generator=params.make_generator(self.device),
            arrival_time=time.monotonic(),
            spec=spec,
            prompt_scores=[] if params.prompt_logprobs is not None else None,
            grammar=grammar,
        )
        stream = RequestStream(self, request_id, req.seq, asyncio.get_running_loop())
        with self._cv:
            if self._stopping:
                raise RuntimeError("the engine is shut down")  # or its loop died
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
        if not self._thread.is_alive():
            self.runner.release()
        self.masks.close()

    @property
    def num_unfinished(self) -> int:
        with self._cv:
            return len(self._streams)

    # ---- step loop (engine thread) -----------------------------------------------------

    @property
    def alive(self) -> bool:
        """Whether the step loop runs: False after shutdown, or once it has died."""
        return self._thread.is_alive() and not self._stopping

    def _loop(self) -> None:
        """The step loop. A failed step fails its own requests and the loop goes on; an
        error anywhere else ends the loop: every request waiting on it fails at once (it
        would otherwise wait forever), new ones are refused, and `alive` turns False so
        the server's /health says so."""
        try:
            self._run()
        except BaseException as exc:
            log.critical("the engine's step loop died", exc_info=True)
            with self._cv:
                self._stopping = True
                self._fail_all(RuntimeError(f"the engine's step loop died: {exc!r}"))

    def _run(self) -> None:
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
        if self.speculation is not None:
            self.speculation.propose(self._requests)
        batch = self.scheduler.schedule()
        if not batch.seqs:
            return []
        self._note_first_scheduled(batch.seqs)
        try:
            if self.speculation is not None:
                self.speculation.fill(batch.seqs)  # placeholders -> guesses (model proposers)
            masks = self._start_masks(batch)  # built while the model runs
            began = time.perf_counter()  # StepCost models the verify step, not the guessing
            out = self.runner.execute(batch)
            if masks is not None:
                masks.apply(out.logits, out.sampling, out.num_rows)
            for seq, first, scores in out.prompt_scores:
                self._requests[seq.seq_id].keep_prompt_scores(first, scores)
            emitted = self._sample(out.logits, out.sampling, out.num_rows)
            if self.speculation is not None:
                seconds = time.perf_counter() - began
                self.speculation.step_cost.observe(batch.num_tokens, seconds, out.attended)
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
        return self._deltas(out.sampling, emitted, batch.num_rejected)

    def _deltas(
        self, seqs: list[Sequence], emitted: list[list[SampleResult]], rejected: dict[int, int]
    ) -> list[tuple[Request, Delta | BaseException]]:
        """The step's output, request by request; finished requests leave at once."""
        deltas: list[tuple[Request, Delta | BaseException]] = []
        now = time.monotonic()
        for seq, results in zip(seqs, emitted, strict=True):
            req = self._requests[seq.seq_id]
            drafted = len(results) - 1 + rejected.get(seq.seq_id, 0)
            if self.speculation is not None and req.max_tokens:
                self.speculation.record(req, drafted, len(results) - 1)
            delta = emit_tokens(req, results, self.tokenizer.eos_token_ids)
            if delta.token_ids:
                self.metrics.on_token(req, now, len(delta.token_ids))
            if delta.finish_reason is not None:
                self.metrics.on_finish(req, delta.finish_reason, now)
                self._release(req)
            elif drafted:
                self.blocks.trim(seq)  # slots of rejected guesses
            deltas.append((req, delta))
        return deltas

    def _start_masks(self, batch: ScheduledBatch) -> PendingMasks | None:
        """The masks of the sequences that sample under a grammar this step, started."""
        sampling = [s for s, last in zip(batch.seqs, batch.sampling, strict=True) if last]
        return self.masks.start({s: self._requests[s.seq_id] for s in sampling}, self.tokenizer)

    def _sample(
        self, logits: torch.Tensor, seqs: list[Sequence], num_rows: list[int]
    ) -> list[list[SampleResult]]:
        """Per sequence, the tokens it emits: one sampled token, or for a sequence that
        fed guesses, the accepted guesses and one more (speculative/verify.py)."""
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

    @staticmethod
    def _sample_request(req: Request) -> SampleRequest:
        if req.params.needs_history:  # penalties look at the tokens so far
            return SampleRequest(
                req.params, req.generator, req.prompt_token_ids, req.output_token_ids
            )
        return SampleRequest(req.params, req.generator)

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
