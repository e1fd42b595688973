"""bench/gpu.py: its dry run (CPU, float32, tiny sizes) goes end to end and writes the JSON
a GPU run would, every section filled in; and the peak-bandwidth table names the cards it
should. The figures themselves are for a GPU machine: nothing here asserts a speed."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.gpu import peak_bandwidth
from tests.bench.run import run_bench


@pytest.mark.slow
def test_dry_run_writes_every_section(smollm2_gguf: Path, tmp_path: Path) -> None:
    res = run_bench(
        "bench/gpu.py", tmp_path / "gpu.json", "--dry-run", "--model", str(smollm2_gguf)
    )
    assert res["dry_run"] is True
    assert res["workload"]["device"] == "cpu"
    assert res["decode_batch1"]["tok_s"]["median"] > 0
    bw = res["bandwidth"]
    assert bw["bytes_per_step"] > bw["weight_bytes"] > 0  # weights plus the context's KV
    assert bw["achieved_bytes_per_s"] > 0
    assert bw["peak_bytes_per_s"] is None and bw["utilisation"] is None  # no peak lookup
    assert res["batched"]["output_tok_s"]["median"] > 0


@pytest.mark.parametrize(
    ("device_name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 3.35e12),
        ("NVIDIA H100 PCIe", 2.0e12),
        ("NVIDIA H200", 4.8e12),
        ("NVIDIA A100-SXM4-80GB", 2.0e12),
        ("NVIDIA A100-PCIE-40GB", 1.555e12),
        ("NVIDIA L4", 3.0e11),
        ("NVIDIA GeForce RTX 4090", 1.008e12),
        ("NVIDIA L40S", None),  # not an L4
        ("NVIDIA H100 NVL", None),  # neither SXM nor PCIe figures
        ("Tesla T4", None),
    ],
)
def test_peak_bandwidth_by_device_name(device_name: str, peak: float | None) -> None:
    assert peak_bandwidth(device_name) == peak
