"""The gateway's Prometheus metrics (the engine's, vLLM's `vllm:*` names, share the
registry when it runs in process). Names follow Prometheus conventions under
`llm_gateway_`."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from gateway.embeddings.batcher import Embedder
    from gateway.runtime import Gateway

from gateway.call import RESPONSES, Call
from gateway.observe import CLOSED, watch
from gateway.payload import Chunk, DecodeErrors, Payload
from gateway.targets import Backend
from gateway.views import AnswerView, ResponseEventView, ResponseObjectView, UsageView

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_OVERHEAD = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        # labels() costs a lock and a tuple per call; the hot path looks children up here.
        self._children: dict[tuple[Any, ...], Any] = {}
        self.requests = Counter(
            "llm_gateway_requests",
            "Requests answered, by model, endpoint, HTTP status and tenant.",
            ["model", "endpoint", "status", "tenant"], registry=registry,
        )  # fmt: skip
        self.latency = Histogram(
            "llm_gateway_request_duration_seconds", "Request to last byte.",
            ["model", "endpoint"], buckets=_LATENCY, registry=registry,
        )  # fmt: skip
        self.ttft = Histogram(
            "llm_gateway_time_to_first_token_seconds", "Request to first streamed chunk.",
            ["model"], buckets=_LATENCY, registry=registry,
        )  # fmt: skip
        self.overhead = Histogram(
            "llm_gateway_overhead_seconds", "Time spent in the gateway itself per request.",
            ["model"], buckets=_OVERHEAD, registry=registry,
        )  # fmt: skip
        self.tokens = Counter(
            "llm_gateway_tokens", "Tokens reported by upstreams' usage, by kind and tenant.",
            ["model", "kind", "tenant"], registry=registry,
        )  # fmt: skip
        self.plugin_outcomes = Counter(
            "llm_gateway_plugin_outcomes", "Plugin hook runs: ok, error (failed the request) "
            "or skipped (an optional plugin failed; the request went on).",
            ["plugin", "hook", "outcome"], registry=registry,
        )  # fmt: skip
        self.upstream_requests = Counter(
            "llm_gateway_upstream_requests", "Calls to backends by outcome: ok, error, refused "
            "(admission: never sent), retry (routing tried another backend after it).",
            ["backend", "outcome"], registry=registry,
        )  # fmt: skip
        self.upstream_up = Gauge(
            "llm_gateway_upstream_up", "1 while the backend's circuit breaker is closed or "
            "probing, 0 while it is open (ejected).",
            ["backend"], registry=registry, multiprocess_mode="livemin",  # any worker's 0
        )  # fmt: skip
        self.upstream_outstanding = Gauge(
            "llm_gateway_upstream_outstanding", "Requests in flight per backend.",
            ["backend"], registry=registry, multiprocess_mode="livesum",
        )  # fmt: skip

        self.cache_lookups = Counter(
            "llm_gateway_cache_lookups", "Cache lookups by cache and outcome (hit, miss, "
            "bypass: the request was not cacheable or asked not to be served from cache; "
            "explore: a semantic candidate the error bound held back, answered upstream).",
            ["cache", "outcome"], registry=registry,
        )  # fmt: skip
        self.store_bypasses = Counter(
            "llm_gateway_store_bypasses", "Store operations skipped because the store was "
            "down, slow or cooling down after a failure (the request went on without it).",
            ["store", "op"], registry=registry,
        )  # fmt: skip
        self.store_degraded = Gauge(
            "llm_gateway_store_degraded", "1 while the store is failing and being bypassed.",
            ["store"], registry=registry, multiprocess_mode="livemax",
        )  # fmt: skip
        self.shadow_checks = Counter(
            "llm_gateway_semantic_shadow_checks", "Semantic cache hits also answered by the "
            "backend and compared: agree, disagree (a false hit) or error.",
            ["outcome"], registry=registry,
        )  # fmt: skip
        self.false_hit_rate = Gauge(
            "llm_gateway_semantic_false_hit_rate", "Share of shadow-checked semantic hits "
            "whose fresh answer disagreed with the cached one (since start).",
            registry=registry, multiprocess_mode="livemax",  # the worst worker's
        )  # fmt: skip
        self.semantic_explorations = Counter(
            "llm_gateway_semantic_explorations", "Verified semantic candidates the error "
            "bound held back, answered by the backend and compared: agree, disagree or error.",
            ["outcome"], registry=registry,
        )  # fmt: skip
        self.semantic_band_served = Gauge(
            "llm_gateway_semantic_band_served", "1 where the semantic cache's error bound "
            "serves hits in this similarity band now, 0 while the evidence is short.",
            ["band"], registry=registry, multiprocess_mode="livemin",  # every worker's
        )  # fmt: skip

    def upstream_outcome(self, backend: str, outcome: str) -> None:
        _child(self._children, self.upstream_requests, backend, outcome).inc()

    def cache_outcome(self, cache: str, outcome: str) -> None:
        _child(self._children, self.cache_lookups, cache, outcome).inc()

    def store_bypass(self, store: str, op: str) -> None:
        _child(self._children, self.store_bypasses, store, op).inc()

    def refresh(self, gateway: Gateway) -> None:
        """The gauges of state kept elsewhere (backends, store), read at scrape time."""
        now = time.monotonic()
        for b in gateway.backends():
            self.upstream_up.labels(b.id).set(0 if not b.breaker.available(now) else 1)
            self.upstream_outstanding.labels(b.id).set(b.outstanding)
        store = gateway.store
        self.store_degraded.labels(store.kind).set(int(store.degraded))

    def observe_overhead(self, model: str, seconds: float) -> None:
        _child(self._children, self.overhead, model).observe(seconds)

    # ChainObserver
    def plugin_outcome(self, plugin: str, hook: str, outcome: str, seconds: float) -> None:
        _child(self._children, self.plugin_outcomes, plugin, hook, outcome).inc()

    def answered(self, call: Call, status: int, body: Payload | None = None) -> None:
        usage = None if body is None else body_usage(call, body)
        self._answered(call, status, usage)

    def _answered(self, call: Call, status: int, usage: UsageView | None) -> None:
        c, model, endpoint, tenant = self._children, call.model, call.endpoint, call.tenant
        _child(c, self.requests, model, endpoint, str(status), tenant).inc()
        _child(c, self.latency, model, endpoint).observe(time.perf_counter() - call.started)
        if usage is not None:
            _child(c, self.tokens, model, "prompt", tenant).inc(usage.prompt)
            _child(c, self.tokens, model, "completion", tenant).inc(usage.completion)

    def watch_stream(self, call: Call, stream: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
        """The stream, watched for TTFT, usage and how it ended (gateway/observe.py)."""
        return watch(stream, _StreamMetrics(self, call))


class _StreamMetrics:
    """Records a stream's first-chunk time, its usage, and its end: 200 when it ended,
    599 when it failed mid-way (the client got an error event), 499 when the client
    closed it first."""

    __slots__ = ("call", "first", "metrics", "usage")

    def __init__(self, metrics: GatewayMetrics, call: Call) -> None:
        self.metrics, self.call = metrics, call
        self.first = True
        self.usage: UsageView | None = None

    def chunk(self, chunk: Chunk) -> None:
        if self.first:
            self.first = False
            ttft = _child(self.metrics._children, self.metrics.ttft, self.call.model)
            ttft.observe(time.perf_counter() - self.call.started)
        if b'"usage"' in chunk.raw:
            self.usage = chunk_usage(self.call, chunk) or self.usage

    def end(self, error: BaseException | None) -> None:
        status = 200 if error is None else 499 if error is CLOSED else 599
        self.metrics._answered(self.call, status, self.usage)


def body_usage(call: Call, body: Payload) -> UsageView | None:
    """The token counts a complete answer reports (None when it reports none)."""
    try:
        if call.endpoint == RESPONSES:
            return body.view(ResponseObjectView).usage
        return body.view(AnswerView).usage
    except DecodeErrors:
        return None


def chunk_usage(call: Call, chunk: Chunk) -> UsageView | None:
    try:
        if call.endpoint == RESPONSES:
            response = chunk.view(ResponseEventView).response
            return None if response is None else response.usage
        return chunk.view(AnswerView).usage
    except DecodeErrors:
        return None


def _child(cache: dict[tuple[Any, ...], Any], metric: Any, *labels: str) -> Any:
    key = (id(metric), *labels)
    child = cache.get(key)
    if child is None:
        child = cache[key] = metric.labels(*labels)
    return child


def scrape_time_collectors(gateway: Gateway) -> list[EmbedderCollector | AdmissionCollector]:
    """What /metrics computes from the gateway's state when scraped."""
    return [EmbedderCollector(lambda: gateway.embedder), AdmissionCollector(gateway.backends)]


class EmbedderCollector:
    """The embedder's own counters, read at scrape time (the embedder is loaded on first
    use, so it may not exist yet): batches, texts, model busy time and queue length."""

    def __init__(self, embedder: Callable[[], Embedder | None]) -> None:
        self._embedder = embedder

    def collect(self) -> Iterator[Metric]:
        e = self._embedder()
        if e is None:
            return
        yield CounterMetricFamily(
            "llm_gateway_embedding_batches", "Embedding model calls.", value=e.batches
        )
        yield CounterMetricFamily(
            "llm_gateway_embedding_texts", "Texts embedded (batches x their sizes).",
            value=e.batched_texts,
        )  # fmt: skip
        yield CounterMetricFamily(
            "llm_gateway_embedding_busy_seconds", "Time the embedding model spent computing.",
            value=e.busy_s,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "llm_gateway_embedding_queued", "Texts waiting for a batch.", value=e.queued
        )


class AdmissionCollector:
    """Each backend's admission state, read at scrape time: requests and tokens in
    flight, and requests refused (by reason: global = the backend was full, tenant = the
    tenant was over its share)."""

    def __init__(self, backends: Callable[[], Sequence[Backend]]) -> None:
        self._backends = backends

    def collect(self) -> Iterator[Metric]:
        requests = GaugeMetricFamily(
            "llm_gateway_admission_in_flight", "Requests a backend holds now.", labels=["backend"]
        )
        tokens = GaugeMetricFamily(
            "llm_gateway_admission_in_flight_tokens",
            "Prompt + output tokens of the requests a backend holds now.", labels=["backend"],
        )  # fmt: skip
        refused = CounterMetricFamily(
            "llm_gateway_admission_refused", "Requests refused at once with Retry-After.",
            labels=["backend", "reason"],
        )  # fmt: skip
        for b in self._backends():
            if b.gate is None:
                continue
            requests.add_metric([b.id], b.gate.admission.requests)
            tokens.add_metric([b.id], b.gate.admission.tokens)
            for reason, count in b.gate.refused.items():
                refused.add_metric([b.id, reason], count)
        yield requests
        yield tokens
        yield refused
