"""The HTTP edge (ASGI): `create_app(gateway, registry)` is what uvicorn serves."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest

from gateway.http.edge import Edge
from gateway.http.limits import EdgeLimits
from gateway.runtime import Gateway

if TYPE_CHECKING:
    from gateway.worker_metrics import WorkerMetrics

__all__ = ["Edge", "EdgeLimits", "create_app"]


def create_app(
    gateway: Gateway,
    registry: CollectorRegistry | None = None,
    limits: EdgeLimits | None = None,
    admin_key: str | None = None,
    access_log: bool = True,
    worker_metrics: WorkerMetrics | None = None,
) -> Edge:
    """The app over `gateway`; `registry` (Prometheus) is served on /metrics when given,
    or, in a worker of several, `worker_metrics` (all the workers' metrics)."""
    if worker_metrics is not None:
        edge = Edge(gateway, worker_metrics.render, limits, admin_key, access_log)
        edge.background.append(worker_metrics.keep_fresh)
        return edge
    if registry is None:
        return Edge(gateway, limits=limits, admin_key=admin_key, access_log=access_log)

    def render() -> bytes:
        if gateway.metrics is not None:
            gateway.metrics.refresh(gateway)
        return generate_latest(registry)

    return Edge(gateway, render, limits, admin_key, access_log)
