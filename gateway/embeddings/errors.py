"""What an embedding request can fail with when the local model cannot take it.

503: the server's capacity, shared by every caller, not one caller's quota — OpenAI
answers its own overload with 503; the SDK retries it with back-off, and a load balancer
in front reads it as "try another replica".

    EmbeddingUnavailable    503 server_error
    ├── EmbeddingQueueFull  max_queue texts are waiting already
    └── EmbedderClosed      not started, or closed (requests still waiting get it too)
"""

from __future__ import annotations

from gateway.errors import OpenAIError


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
