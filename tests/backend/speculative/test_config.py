"""SpeculativeConfig checks its fields."""

from __future__ import annotations

import pytest

from backend.speculative import SpeculativeConfig


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="method"):
        SpeculativeConfig(method="eagle")
    with pytest.raises(ValueError, match="num_speculative_tokens"):
        SpeculativeConfig(num_speculative_tokens=0)
