from gateway.upstreams.base import Upstream

__all__ = ["Upstream"]
