"""Engine metrics for Prometheus, named as vLLM names them so its dashboards map over.

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

PREFIX = "llm_engine:"
_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
                    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip


class EngineMetrics:
    def __init__(self, engine: Engine, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.ttft = Histogram(
            PREFIX + "time_to_first_token_seconds", "Time from arrival to the first token.",
            buckets=_LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.itl = Histogram(
            PREFIX + "inter_token_latency_seconds", "Time between consecutive output tokens.",
            buckets=_LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.queue_time = Histogram(
            PREFIX + "request_queue_time_seconds", "Time from arrival to the first step.",
            buckets=_LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.e2e = Histogram(
            PREFIX + "e2e_request_latency_seconds", "Time from arrival to the last token.",
            buckets=_LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.prompt_tokens = Counter(
            PREFIX + "prompt_tokens", "Prompt tokens of finished requests.", registry=registry
        )
        self.generation_tokens = Counter(
            PREFIX + "generation_tokens", "Generated tokens.", registry=registry
        )
        self.request_success = Counter(
            PREFIX + "request_success", "Finished requests by finish reason.",
            ["finished_reason"], registry=registry,
        )  # fmt: skip
        # Speculative decoding (vLLM's spec_decode_* counters).
        self.spec_drafts = Counter(
            PREFIX + "spec_decode_num_drafts", "Sequence-steps that fed speculative guesses.",
            registry=registry,
        )  # fmt: skip
        self.spec_draft_tokens = Counter(
            PREFIX + "spec_decode_num_draft_tokens", "Speculative guesses fed to the model.",
            registry=registry,
        )  # fmt: skip
        self.spec_accepted_tokens = Counter(
            PREFIX + "spec_decode_num_accepted_tokens", "Speculative guesses accepted.",
            registry=registry,
        )  # fmt: skip
        self.spec_accepted_per_pos = Counter(
            PREFIX + "spec_decode_num_accepted_tokens_per_pos",
            "Speculative guesses accepted, by position in the guess (0 = first).",
            ["position"], registry=registry,
        )  # fmt: skip
        self.spec_drafted_per_pos = Counter(
            PREFIX + "spec_decode_num_draft_tokens_per_pos",
            "Speculative guesses fed, by position in the guess (0 = first).",
            ["position"], registry=registry,
        )  # fmt: skip
        self.spec_plans = Counter(
            PREFIX + "spec_decode_plans",
            "Steps by why speculation stopped where it did: max_draft (all it could), "
            "not_worth_it (a guess would lower expected tokens/s), no_proposal.",
            ["reason"], registry=registry,
        )  # fmt: skip
        registry.register(_StateCollector(engine))

    def on_token(self, req: Request, now: float, count: int = 1) -> None:
        """`count` tokens of req came out of one step (more than one when speculating)."""
        if req.last_token_time is None:
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
            self.spec_drafted_per_pos.labels(position=str(pos)).inc()
            if pos < num_accepted:
                self.spec_accepted_per_pos.labels(position=str(pos)).inc()

    def on_finish(self, req: Request, reason: str, now: float) -> None:
        self.e2e.observe(now - req.arrival_time)
        self.prompt_tokens.inc(req.seq.num_prompt_tokens)
        self.request_success.labels(finished_reason=reason).inc()


class _StateCollector(Collector):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        sched, blocks = self.engine.scheduler, self.engine.blocks
        yield _gauge("num_requests_running", "Requests in the running batch.", len(sched.running))
        yield _gauge(
            "num_requests_waiting", "Requests waiting to be scheduled.", len(sched.waiting)
        )
        yield _gauge("kv_cache_usage_perc", "Fraction of KV blocks in use (0-1).", blocks.usage)
        yield _counter(
            "prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
            blocks.prefix_cache_queries,
        )  # fmt: skip
        yield _counter(
            "prefix_cache_hits",
            "Prompt tokens found in the prefix cache.",
            blocks.prefix_cache_hits,
        )
        yield _counter("num_preemptions", "Sequences preempted.", sched.num_preemptions)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, doc, value=value)
