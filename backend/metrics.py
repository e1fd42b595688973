"""Engine metrics for Prometheus, named and labelled as vLLM names them (`vllm:*`, every
series with `model_name`), so vLLM's Grafana dashboards, autoscaling rules and
inference schedulers read this engine unchanged. Our own extras are `llm_engine:*`.

Latency histograms and token counters are recorded by the step loop as tokens come
out; queue lengths, KV usage and prefix-cache counters are read from the engine's state
when Prometheus scrapes, so they cost nothing per step.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from backend.engine import Engine
    from backend.request import Request

PREFIX = "vllm:"
OURS = "llm_engine:"  # metrics vLLM has no counterpart for
MODEL = ["model_name"]
_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
                    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000)


class EngineMetrics:
    """One engine's series; `model_name` is the name clients use for it."""

    def __init__(self, engine: Engine, registry: CollectorRegistry, model_name: str) -> None:
        self.registry = registry
        self.model_name = model_name

        def histogram(
            name: str, doc: str, buckets: tuple[float, ...] = _LATENCY_BUCKETS
        ) -> Histogram:
            return Histogram(PREFIX + name, doc, MODEL, buckets=buckets, registry=registry)

        def counter(
            name: str, doc: str, labels: tuple[str, ...] = (), prefix: str = PREFIX
        ) -> Counter:
            return Counter(prefix + name, doc, [*MODEL, *labels], registry=registry)

        m = model_name
        self.ttft = histogram("time_to_first_token_seconds", "Arrival to first token.").labels(m)
        self.itl = histogram(
            "inter_token_latency_seconds", "Time between consecutive output tokens."
        ).labels(m)
        self.queue_time = histogram(
            "request_queue_time_seconds", "Arrival to the first step that works on it."
        ).labels(m)
        self.prefill_time = histogram(
            "request_prefill_time_seconds", "First step to first token."
        ).labels(m)
        self.decode_time = histogram(
            "request_decode_time_seconds", "First token to last token."
        ).labels(m)
        self.inference_time = histogram(
            "request_inference_time_seconds", "First step to last token."
        ).labels(m)
        self.e2e = histogram("e2e_request_latency_seconds", "Arrival to last token.").labels(m)
        self.request_prompt_tokens = histogram(
            "request_prompt_tokens", "Prompt tokens per finished request.", _TOKEN_BUCKETS
        ).labels(m)
        self.request_generation_tokens = histogram(
            "request_generation_tokens", "Generated tokens per finished request.", _TOKEN_BUCKETS
        ).labels(m)
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens of finished requests.").labels(
            m
        )
        self.generation_tokens = counter("generation_tokens", "Generated tokens.").labels(m)
        self.request_success = counter(
            "request_success", "Finished requests by finish reason.", ("finished_reason",)
        )
        # Speculative decoding (vLLM's spec_decode_* counters).
        self.spec_drafts = counter(
            "spec_decode_num_drafts", "Sequence-steps that fed speculative guesses."
        ).labels(m)
        self.spec_draft_tokens = counter(
            "spec_decode_num_draft_tokens", "Speculative guesses fed to the model."
        ).labels(m)
        self.spec_accepted_tokens = counter(
            "spec_decode_num_accepted_tokens", "Speculative guesses accepted."
        ).labels(m)
        self.spec_accepted_per_pos = counter(
            "spec_decode_num_accepted_tokens_per_pos",
            "Speculative guesses accepted, by position in the guess (0 = first).",
            ("position",),
        )
        self.spec_drafted_per_pos = counter(
            "spec_decode_num_draft_tokens_per_pos",
            "Speculative guesses fed, by position in the guess (0 = first).",
            ("position",),
        )
        self.spec_plans = counter(
            "spec_decode_plans",
            "Steps by why speculation stopped where it did: max_draft (all it could), "
            "not_worth_it (a guess would lower expected tokens/s), no_proposal, probe (every "
            "16th declined plan of few rows: one sequence fed all its guesses, to check the "
            "step cost).",
            ("reason",),
            prefix=OURS,
        )
        registry.register(_StateCollector(engine, model_name))

    def on_token(self, req: Request, now: float, count: int = 1) -> None:
        """`count` tokens of req came out of one step (more than one when speculating)."""
        if req.last_token_time is None:
            req.first_token_time = now
            self.ttft.observe(now - req.arrival_time)
        else:
            self.itl.observe((now - req.last_token_time) / count)
        req.last_token_time = now
        self.generation_tokens.inc(count)

    def on_verify(self, num_drafted: int, num_accepted: int) -> None:
        self.spec_drafts.inc()
        self.spec_draft_tokens.inc(num_drafted)
        self.spec_accepted_tokens.inc(num_accepted)
        for pos in range(num_drafted):
            self.spec_drafted_per_pos.labels(self.model_name, str(pos)).inc()
            if pos < num_accepted:
                self.spec_accepted_per_pos.labels(self.model_name, str(pos)).inc()

    def on_plan(self, reason: str) -> None:
        self.spec_plans.labels(self.model_name, reason).inc()

    def on_finish(self, req: Request, reason: str, now: float) -> None:
        self.e2e.observe(now - req.arrival_time)
        if req.scheduled_time is not None:
            self.inference_time.observe(now - req.scheduled_time)
            if req.first_token_time is not None:
                self.prefill_time.observe(req.first_token_time - req.scheduled_time)
        if req.first_token_time is not None:
            self.decode_time.observe(now - req.first_token_time)
        self.prompt_tokens.inc(req.seq.num_prompt_tokens)
        self.request_prompt_tokens.observe(req.seq.num_prompt_tokens)
        self.request_generation_tokens.observe(req.seq.num_tokens - req.seq.num_prompt_tokens)
        self.request_success.labels(self.model_name, reason).inc()


class _StateCollector(Collector):
    def __init__(self, engine: Engine, model_name: str) -> None:
        self.engine = engine
        self.model_name = model_name

    def collect(self) -> Iterator[Metric]:
        sched, blocks = self.engine.scheduler, self.engine.blocks
        m = self.model_name
        yield _gauge(
            "num_requests_running", "Requests in the running batch.", m, len(sched.running)
        )
        yield _gauge(
            "num_requests_waiting", "Requests waiting to be scheduled.", m, len(sched.waiting)
        )
        yield _gauge("kv_cache_usage_perc", "Fraction of KV blocks in use (0-1).", m, blocks.usage)
        yield _counter(
            "prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", m,
            blocks.prefix_cache_queries,
        )  # fmt: skip
        yield _counter(
            "prefix_cache_hits", "Prompt tokens found in the prefix cache.", m,
            blocks.prefix_cache_hits,
        )  # fmt: skip
        yield _counter("num_preemptions", "Sequences preempted.", m, sched.num_preemptions)


def _gauge(name: str, doc: str, model_name: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(PREFIX + name, doc, labels=MODEL)
    family.add_metric([model_name], value)
    return family


def _counter(name: str, doc: str, model_name: str, value: float) -> CounterMetricFamily:
    family = CounterMetricFamily(PREFIX + name, doc, labels=MODEL)
    family.add_metric([model_name], value)
    return family
