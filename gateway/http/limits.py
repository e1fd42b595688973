"""What one client may send the gateway, checked before anything expensive happens.

Sizes and timeouts of the HTTP exchange itself: the request head (bytes and header
count, and how long it may take to arrive), the body (bytes, and the longest silence
while it arrives), and how long an idle keep-alive connection is kept. A client over a
limit gets the HTTP status that names it (413, 431, 408) and its connection closed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    max_body_bytes: int = 32 * 2**20  # JSON routes (chat, completions, responses, ...)
    max_upload_bytes: int = 100 * 2**20  # forwarded routes (audio and file uploads)
    max_header_bytes: int = 64 * 2**10  # the request line and every header together
    max_headers: int = 100
    header_timeout_s: float = 10.0  # from the connection (or the request's first byte)
    body_timeout_s: float = 30.0  # the longest silence while a body arrives

    def body_limit(self, json_route: bool) -> int:
        return self.max_body_bytes if json_route else self.max_upload_bytes

    @classmethod
    def from_config(cls, server: Any) -> EdgeLimits:
        """From the config's [server] section."""
        return cls(
            max_body_bytes=int(server.max_body_mb * 2**20),
            max_upload_bytes=int(server.max_upload_mb * 2**20),
            max_header_bytes=int(server.max_header_kb * 2**10),
            max_headers=server.max_headers,
            header_timeout_s=server.header_timeout_s,
            body_timeout_s=server.body_timeout_s,
        )
