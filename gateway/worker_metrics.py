"""/metrics under `llm-gateway serve --workers N`: one view of all the workers.

The workers share one port and the kernel hands each connection to one of them, so a
scrape reaches one worker. prometheus-client's multiprocess mode makes that answer
right: each worker keeps its counters, histograms and gauges in files of a directory the
parent gives them all (PROMETHEUS_MULTIPROC_DIR, set before the workers start), and
`MultiProcessCollector` sums the files at scrape time. Gauges say how they combine
(GatewayMetrics: `livesum` for requests in flight, `livemin` for a backend's up, ...);
`live*` ones leave with their worker (`close`).

What multiprocess mode cannot read are collectors that compute at scrape time from one
process's state (admission, the embedder: gateway/metrics.py). `Mirror` copies them
into ordinary multiprocess metrics of the same names, refreshed every second in each
worker and at each scrape: gauges as `livesum`, counters by what they grew since."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest, multiprocess
from prometheus_client.core import Metric

from gateway.runtime import Gateway


class Collector(Protocol):
    def collect(self) -> Iterable[Metric]: ...


def clear_directory(path: Path) -> None:
    """The workers' files of an earlier run go: counters must start at zero (the
    directory may be one the operator named, reused across restarts)."""
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("*.db"):
        old.unlink()


class Mirror:
    """Scrape-time collectors' families as this worker's multiprocess metrics."""

    def __init__(self, collectors: Iterable[Collector]) -> None:
        self.collectors = list(collectors)
        self.registry = CollectorRegistry()  # where the mirrors are made (never rendered)
        self._metrics: dict[str, Any] = {}
        self._counted: dict[tuple[str, tuple[str, ...]], float] = {}

    def update(self) -> None:
        for collector in self.collectors:
            for family in collector.collect():
                for sample in family.samples:
                    self._copy(family, sample.labels, sample.value)

    def _copy(self, family: Metric, labels: dict[str, str], value: float) -> None:
        metric: Any = self._metrics.get(family.name)
        if metric is None:
            names = list(labels)
            if family.type == "counter":
                metric = Counter(family.name, family.documentation, names, registry=self.registry)
            else:
                metric = Gauge(
                    family.name, family.documentation, names, registry=self.registry,
                    multiprocess_mode="livesum",
                )  # fmt: skip
            self._metrics[family.name] = metric
        child = metric.labels(**labels) if labels else metric
        if family.type != "counter":
            child.set(value)
            return
        key = (family.name, tuple(labels.values()))
        grew = value - self._counted.get(key, 0.0)
        if grew > 0:
            child.inc(grew)
            self._counted[key] = value


class WorkerMetrics:
    """One worker's /metrics: every worker's metrics, summed from the shared directory."""

    def __init__(self, gateway: Gateway, collectors: Iterable[Collector]) -> None:
        self.gateway = gateway
        self.mirror = Mirror(collectors)
        self.exposition = CollectorRegistry()
        multiprocess.MultiProcessCollector(self.exposition)  # type: ignore[no-untyped-call]

    def refresh(self) -> None:
        """This worker's gauges of state kept elsewhere, and its mirrored collectors."""
        if self.gateway.metrics is not None:
            self.gateway.metrics.refresh(self.gateway)
        self.mirror.update()

    def render(self) -> bytes:
        self.refresh()
        return generate_latest(self.exposition)

    async def keep_fresh(self, every_s: float = 1.0) -> None:
        """Other workers answer scrapes too: this one's gauges stay at most `every_s` old
        for them. Cancelled when the worker stops: its live gauges leave the sums."""
        try:
            while True:
                self.refresh()
                await asyncio.sleep(every_s)
        finally:
            self.close()

    def close(self) -> None:
        """This worker's live gauges leave the sums."""
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
