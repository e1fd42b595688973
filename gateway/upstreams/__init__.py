from gateway.upstreams.base import ChatResult, CompletionResult, Upstream

__all__ = ["ChatResult", "CompletionResult", "Upstream"]
