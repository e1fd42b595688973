"""The engine: requests in, streamed tokens out, one batched step at a time.

    Engine            engine.py       async front (add_request, abort) and the step loop
    EngineConfig      config.py       its settings
    RequestRejected   validation.py   what a request must satisfy to be taken
    emit_tokens       stop_rules.py   EOS, stop tokens, stop strings, max_tokens
    Speculation       speculation.py  speculative decoding in the step (backend/speculative/)

What it drives sits beside it in backend/: scheduler.py and blocks.py (no torch),
runner.py and model.py, sampler.py, request.py, metrics.py.
"""

from __future__ import annotations

from backend.engine.config import EngineConfig
from backend.engine.engine import Engine
from backend.engine.validation import RequestRejected

__all__ = ["Engine", "EngineConfig", "RequestRejected"]
