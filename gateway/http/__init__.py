"""The HTTP edge (ASGI): `create_app(gateway, registry)` is what uvicorn serves."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, generate_latest

from gateway.http.edge import Edge
from gateway.http.limits import EdgeLimits
from gateway.runtime import Gateway

__all__ = ["Edge", "EdgeLimits", "create_app"]


def create_app(
    gateway: Gateway,
    registry: CollectorRegistry | None = None,
    limits: EdgeLimits | None = None,
    admin_key: str | None = None,
    access_log: bool = True,
) -> Edge:
    """The app over `gateway`; `registry` (Prometheus) is served on /metrics when given."""
    if registry is None:
        return Edge(gateway, limits=limits, admin_key=admin_key, access_log=access_log)

    def render() -> bytes:
        if gateway.metrics is not None:
            gateway.metrics.refresh(gateway.backends(), time.monotonic())
            store = gateway.store
            gateway.metrics.store_degraded.labels(store.kind).set(int(store.degraded))
        return generate_latest(registry)

    return Edge(gateway, render, limits, admin_key, access_log)
