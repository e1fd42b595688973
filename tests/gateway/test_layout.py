"""The shape of gateway/, plugins/ and policies/: the process environment is read in one
module (gateway/config/environment.py), and files and functions stay small (STYLE.md)."""

from __future__ import annotations

from pathlib import Path

from tests.layout import environment_reads, oversized

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(
    p for top in ("gateway", "plugins", "policies") for p in (ROOT / top).rglob("*.py")
)
ENVIRONMENT = ROOT / "gateway" / "config" / "environment.py"


def test_only_the_config_reads_the_environment() -> None:
    others = [p for p in SOURCES if p != ENVIRONMENT]
    assert [found for path in others for found in environment_reads(path)] == []


def test_files_and_functions_stay_small() -> None:
    assert [found for path in SOURCES for found in oversized(path)] == []
