"""The engine's async front and its step loop.

`add_request()` returns an async iterator of `Delta`s; `abort()` stops a request. The
model runs on one background thread (torch releases the GIL inside kernels), so the
event loop serving HTTP never blocks on a forward pass. This version runs one request
at a time, first come first served; the paged, continuously batched scheduler slots in
behind the same front.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch

from backend.kv_cache import SequenceKVCache
from backend.request import Delta, Request, RequestStream
from backend.sampler import SamplingParams, sample
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
    model: str | Path
    dtype: str = "auto"  # "auto": bfloat16 on CUDA, float32 on CPU
    device: str = "auto"  # "auto": cuda when available, else cpu
    max_model_len: int | None = None  # default: the model's own context length

    def __post_init__(self) -> None:
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be auto or one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError("max_model_len must be at least 2")

    def resolve_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolve_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        return DTYPES[self.dtype]


class Engine:
    def __init__(self, loaded: LoadedModel, max_model_len: int | None = None) -> None:
        self.model = loaded.model
        self.tokenizer: Tokenizer = loaded.tokenizer
        self.model_name = loaded.name
        self.device = loaded.model.embed_tokens.weight.device
        self.dtype = loaded.model.embed_tokens.weight.dtype
        ctx = loaded.config.max_position_embeddings
        if max_model_len is not None and max_model_len < 2:
            raise ValueError("max_model_len must be at least 2")
        self.max_model_len = min(max_model_len or ctx, ctx)
        self._waiting: deque[Request] = deque()
        self._streams: dict[str, RequestStream] = {}
        self._aborted: set[str] = set()
        self._cv = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="engine-step-loop", daemon=True)
        self._thread.start()

    @classmethod
    def from_config(cls, config: EngineConfig) -> Engine:
        device = config.resolve_device()
        loaded = load_model(config.model, config.resolve_dtype(device), device)
        return cls(loaded, config.max_model_len)

    # ---- front -------------------------------------------------------------------------

    def add_request(
        self,
        prompt: str | list[int],
        params: SamplingParams,
        request_id: str | None = None,
    ) -> RequestStream:
        """Queues a request; must be called from the event loop that will read the stream."""
        ids = (
            self.tokenizer.encode(prompt, add_special_tokens=True)
            if isinstance(prompt, str)
            else list(prompt)
        )
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
        request_id = request_id or uuid.uuid4().hex
        req = Request(
            request_id=request_id,
            prompt_token_ids=ids,
            params=params,
            max_tokens=params.max_tokens or room,
            detokenizer=IncrementalDetokenizer(self.tokenizer),
            stop_matcher=StopStringMatcher(params.stop),
            generator=params.make_generator(self.device),
        )
        stream = RequestStream(self, request_id, asyncio.get_running_loop())
        with self._cv:
            if self._stopping:
                raise RuntimeError("the engine is shut down")
            if request_id in self._streams:
                raise RequestRejected(f"request id {request_id!r} is already in use")
            self._streams[request_id] = stream
            self._waiting.append(req)
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
        running: Request | None = None
        with torch.inference_mode():
            while True:
                with self._cv:
                    while not self._stopping and running is None and not self._waiting:
                        self._cv.wait()
                    if self._stopping:
                        self._fail_all(running, RuntimeError("the engine shut down"))
                        return
                    if running is None:
                        running = self._waiting.popleft()
                    for req in [r for r in self._waiting if r.request_id in self._aborted]:
                        self._waiting.remove(req)
                        self._finish(req, "abort")
                    if running.request_id in self._aborted:
                        self._finish(running, "abort")
                        running = None
                        continue
                try:
                    delta = self._step(running)
                except Exception as exc:  # a failed forward must not kill the loop
                    log.exception("request %s failed", running.request_id)
                    with self._cv:
                        self._release(running)
                        self._streams.pop(running.request_id).put(exc)
                    running = None
                    continue
                with self._cv:
                    stream = self._streams[running.request_id]
                    if delta.finish_reason is not None:
                        self._release(running)
                        del self._streams[running.request_id]
                        running = None
                stream.put(delta)

    def _step(self, req: Request) -> Delta:
        if req.cache is None:
            capacity = len(req.prompt_token_ids) + req.max_tokens
            req.cache = SequenceKVCache(self.model.config, capacity, self.dtype, self.device)
            new_ids = req.prompt_token_ids
        else:
            new_ids = req.output_token_ids[-1:]
        start = req.cache.length
        input_ids = torch.tensor(new_ids, dtype=torch.long, device=self.device)
        positions = torch.arange(start, start + len(new_ids), device=self.device)
        hidden = self.model(input_ids, positions, req.cache)
        logits = self.model.compute_logits(hidden[-1:])[0]
        token = sample(logits, req.params, req.generator)
        req.output_token_ids.append(token)
        return self._advance(req, token)

    def _advance(self, req: Request, token: int) -> Delta:
        """Applies stop rules to a freshly sampled token and builds the delta."""
        params = req.params
        text, matched, finish = "", False, None
        if (token in self.tokenizer.eos_token_ids and not params.ignore_eos) or (
            token in params.stop_token_ids
        ):
            finish = "stop"
        else:
            text, matched = req.stop_matcher.feed(req.detokenizer.add(token))
            if matched:
                finish = "stop"
            elif len(req.output_token_ids) >= req.max_tokens:
                finish = "length"
        if finish is not None and not matched:
            # Nothing more will come: text held back for a possible stop string is final.
            more, matched = req.stop_matcher.feed(req.detokenizer.flush())
            text += more if matched else more + req.stop_matcher.flush()
        req.finish_reason = finish
        return Delta(
            req.request_id,
            text,
            [token],
            finish,
            len(req.prompt_token_ids),
            len(req.output_token_ids),
        )

    def _finish(self, req: Request, reason: str) -> None:
        """Ends a request that did not run to completion (caller holds the lock)."""
        self._release(req)
        self._aborted.discard(req.request_id)
        stream = self._streams.pop(req.request_id, None)
        if stream is not None:
            stream.put(
                Delta(
                    req.request_id,
                    "",
                    [],
                    reason,
                    len(req.prompt_token_ids),
                    len(req.output_token_ids),
                )
            )

    def _release(self, req: Request) -> None:
        req.cache = None
        self._aborted.discard(req.request_id)

    def _fail_all(self, running: Request | None, exc: BaseException) -> None:
        for stream in self._streams.values():
            stream.put(exc)
        self._streams.clear()
        self._waiting.clear()
