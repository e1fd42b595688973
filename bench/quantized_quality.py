"""bench/quantized.py's quality question: what packed weights cost in prediction.

bench/data/quality_text.txt is teacher-forced one token per decode step (few-row steps
are the ones that run the packed kernel; a prefill of > 16 rows would run dense weights),
in windows with a fresh KV cache: perplexity of each variant, and top-1 agreement and
mean KL(ref || variant) against the float32 reference ("none"), scored in lockstep.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from backend.attention import AttentionMetadata, DecodeKernel
from backend.kernels import CpuKernels, attach_cpu_kernels, load_cpu_kernels
from backend.loading.weights import LoadedModel, load_model
from backend.model import LlamaModel
from gateway.config import engine_environment

ROOT = Path(__file__).resolve().parents[1]
QUALITY_TEXT = ROOT / "bench" / "data" / "quality_text.txt"
BLOCK_SIZE = 16  # tokens per KV block, as the engine's default


@dataclass(slots=True)
class Scores:
    nll: float = 0.0  # summed -log p(next token)
    agree: int = 0  # positions whose argmax equals the reference's
    kl: float = 0.0  # summed KL(ref || this)
    count: int = 0

    def row(self, name: str, fused: bool) -> dict[str, Any]:
        return {
            "variant": name,
            "perplexity": math.exp(self.nll / self.count),
            "top1_agreement": self.agree / self.count,
            "mean_kl": self.kl / self.count,
            "fused_decode": fused,
        }


@dataclass(slots=True)
class Variant:
    name: str
    model: LlamaModel
    fused: bool  # whether its decode steps run the fused C++ layer
    scores: Scores = field(default_factory=Scores)


def scoring_variant(loaded: LoadedModel, name: str, kernels: CpuKernels) -> Variant:
    """The model as the engine sets it up on CPU: our kernels attached."""
    return Variant(name, loaded.model, attach_cpu_kernels(loaded.model, kernels))


@torch.inference_mode()
def score_window(variants: list[Variant], ids: torch.Tensor, kernel: DecodeKernel) -> None:
    """Feeds ids one decode step at a time to every variant in lockstep (so the
    reference's distribution need not be stored); variants[0] is the reference. Scores
    predictions of ids[1:]."""
    num_blocks = -(-len(ids) // BLOCK_SIZE)
    cpu = torch.device("cpu")
    caches = [
        v.model.allocate_kv_cache(num_blocks, BLOCK_SIZE, torch.float32, cpu) for v in variants
    ]
    for p in range(len(ids) - 1):
        meta = AttentionMetadata.single_decode(p, BLOCK_SIZE, kernel)
        target = int(ids[p + 1])
        ref: torch.Tensor | None = None
        for v, kv in zip(variants, caches, strict=True):
            hidden = v.model.forward(ids[p : p + 1], torch.tensor([p]), meta, kv)
            logp = F.log_softmax(v.model.compute_logits(hidden)[0], dim=-1)  # [vocab]
            ref = logp if ref is None else ref
            s = v.scores
            s.nll -= float(logp[target])
            s.agree += int(logp.argmax() == ref.argmax())
            s.kl += float((ref.exp() * (ref - logp)).sum())
            s.count += 1


def windows(ids: list[int], size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(ids), size):
        chunk = ids[start : start + size]
        if len(chunk) > 1:  # a window's first token is context only
            yield torch.tensor(chunk)


def measure_quality(path: Path, variants: list[str], tokens: int, window: int) -> dict[str, Any]:
    """Scores each quantization in `variants` against float32 over the first `tokens`
    tokens of the text, in windows of `window` tokens."""
    kernels = load_cpu_kernels(engine_environment().compiler, engine_environment().home)
    if kernels is None:
        raise SystemExit("quality needs our C++ kernels (the packed path); they did not build")
    names = ["none", *variants]  # the float32 reference first
    loaded = [load_model(path, torch.float32, "cpu", q) for q in names]
    scored = [scoring_variant(m, q, kernels) for m, q in zip(loaded, names, strict=True)]
    text_ids = loaded[0].tokenizer.encode(QUALITY_TEXT.read_text())[:tokens]
    began = time.perf_counter()
    count = 0
    for ids in windows(text_ids, window):
        score_window(scored, ids, kernels.paged_decode)
        count += 1
    return {
        "text": str(QUALITY_TEXT.relative_to(ROOT)),
        "tokens": len(text_ids),
        "windows": count,
        "scored_tokens": scored[0].scores.count,
        "seconds": time.perf_counter() - began,
        "rows": [v.scores.row(v.name, v.fused) for v in scored],
    }


def print_quality(quality: dict[str, Any], window: int) -> None:
    print(
        f"\nquality: {quality['text']}, {quality['scored_tokens']} tokens scored one decode "
        f"step each, {quality['windows']} windows of <= {window} (fresh cache each), "
        f"reference = float32 ('none'); {quality['seconds']:.0f} s"
    )
    print(f"{'weights':<10} {'perplexity':>10} {'top-1 agree':>12} {'mean KL':>10}  fused decode")
    for r in quality["rows"]:
        print(
            f"{r['variant']:<10} {r['perplexity']:>10.3f} {r['top1_agreement']:>11.1%} "
            f"{r['mean_kl']:>10.5f}  {r['fused_decode']}"
        )
