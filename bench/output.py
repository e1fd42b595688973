"""Where a benchmark's figures go: JSON under bench/results/ (git-ignored), one file a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_results(out: Path, results: Any) -> None:
    """Writes `results` as indented JSON to `out` (its folder made) and says where."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")
