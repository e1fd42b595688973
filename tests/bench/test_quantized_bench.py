"""bench/quantized.py: its dry run (tiny sizes, no llama.cpp) goes end to end through the
three parts (speed, quality against the float reference, memory) and writes them. No
figure is asserted beyond what must hold whatever the machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench.run import run_bench


@pytest.mark.slow
def test_dry_run_writes_speed_quality_and_memory(smollm2_gguf: Path, tmp_path: Path) -> None:
    res = run_bench(
        "bench/quantized.py", tmp_path / "q.json", "--dry-run", "--model", str(smollm2_gguf)
    )
    speeds = {row["system"]: row["decode_tok_s"]["median"] for row in res["speed"]["rows"]}
    assert speeds["ours packed"] > 0 and speeds["ours float32"] > 0
    quality = {row["variant"]: row for row in res["quality"]["rows"]}
    assert quality["none"]["top1_agreement"] == 1.0  # the reference against itself
    assert 0.5 < quality["auto"]["top1_agreement"] <= 1.0
    weights = {row["system"]: row["bytes"] for row in res["memory"]["weights"]}
    assert weights["ours packed"] < res["memory"]["gguf_bytes"] < weights["ours float32"]
