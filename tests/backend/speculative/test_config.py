"""SpeculativeConfig checks its fields."""

from __future__ import annotations

import pytest

from backend.speculative import SpeculativeConfig


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="method"):
        SpeculativeConfig(method="eagle")
    with pytest.raises(ValueError, match="max_draft_tokens"):
        SpeculativeConfig(max_draft_tokens=0)
