"""The bundled engine on a GPU: batch-1 decode speed, the share of the card's memory
bandwidth a decode step uses, and batched throughput.

    python bench/gpu.py [--device cuda] [--dtype bfloat16] [--rounds 5] \
        [--peak-bandwidth 3.35e12] [--out bench/results/gpu.json]
    python bench/gpu.py --dry-run --out /tmp/gpu.json   # CPU, float32, tiny: runs end to end

(a) batch-1 decode tokens/s, greedy, ignore_eos, timed through the engine's public front
    as bench/decode.py does: (new tokens - 1) / (time after the first token); rounds, median.
(b) memory bandwidth: a decode step reads every weight once (the model's weight_bytes()) and
    the KV cache of its context (the run's mean: prompt + new / 2 tokens). Bytes per step /
    step time (1 / the median of (a), so the engine's own per-step work is in it) against
    the card's peak, from a table by torch.cuda.get_device_name() or --peak-bandwidth;
    null for a card the table does not know. The dry run skips the peak.
(c) batched throughput: N requests of P prompt and O new tokens, submitted at once to one
    engine; output tokens / wall time, rounds, median.

The roofline in (b) is the peer here: a memory-bound decode can at best read its bytes at
the card's peak, so the utilisation is the ratio to beat.
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.engine import Engine, EngineConfig
from backend.loading.model_store import default_model_path
from backend.loading.weights import load_model
from bench.decode import DTYPES, make_prompt_ids, ours_measure, summary
from bench.engine import Req, ours_offline
from bench.output import write_results
from gateway.config import engine_environment

# Peak memory bandwidth, bytes/s, by a pattern of torch.cuda.get_device_name(); first match.
PEAK_BANDWIDTH = [
    (r"H200", 4.8e12),
    (r"H100.*PCIe", 2.0e12),
    (r"H100.*(HBM3|SXM)", 3.35e12),  # SXM: "NVIDIA H100 80GB HBM3"
    (r"A100.*80GB", 2.0e12),
    (r"A100.*40GB", 1.555e12),
    (r"\bL4\b", 3.0e11),  # not L40
    (r"RTX 4090", 1.008e12),
]
DRY_RUN = {  # CPU-sized stand-ins for the flags below
    "device": "cpu",
    "dtype": "float32",
    "rounds": 1,
    "prompt_tokens": 16,
    "new_tokens": 8,
    "num_requests": 4,
    "batch_prompt_tokens": 16,
    "batch_new_tokens": 8,
    "kv_cache_gb": 0.05,
}
WORKLOAD_ARGS = "device dtype rounds prompt_tokens new_tokens num_requests batch_prompt_tokens \
batch_new_tokens max_num_seqs max_num_batched_tokens kv_cache_gb"


def peak_bandwidth(device_name: str) -> float | None:
    """The card's peak memory bandwidth in bytes/s; None for one not in the table."""
    for pattern, peak in PEAK_BANDWIDTH:
        if re.search(pattern, device_name, re.IGNORECASE):
            return peak
    return None


def decode_batch1(engine: Engine, ids: list[int], args: argparse.Namespace) -> dict[str, Any]:
    ours_measure(engine, ids, min(8, args.new_tokens))  # warm-up
    rates = []
    for _ in range(args.rounds):
        ttft, total = ours_measure(engine, ids, args.new_tokens)
        rates.append((args.new_tokens - 1) / (total - ttft))
    return {"tok_s": summary(rates)}


def bandwidth(
    engine: Engine, tok_s: float, peak: float | None, args: argparse.Namespace
) -> dict[str, Any]:
    model = engine.model
    cfg = model.config
    weights = model.weight_bytes() if hasattr(model, "weight_bytes") else _parameter_bytes(model)
    kv_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * engine.dtype.itemsize
    context = args.prompt_tokens + args.new_tokens / 2
    per_step = weights + kv_per_token * context
    achieved = per_step * tok_s  # bytes / (1 / tok_s seconds)
    return {
        "weight_bytes": weights,
        "kv_bytes_per_token": kv_per_token,
        "mean_context_tokens": context,
        "bytes_per_step": per_step,
        "step_ms": 1000 / tok_s,
        "achieved_bytes_per_s": achieved,
        "peak_bytes_per_s": peak,
        "utilisation": achieved / peak if peak else None,
    }


def _parameter_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def batched(engine: Engine, tokenizer: Any, args: argparse.Namespace) -> dict[str, Any]:
    n, plen, olen = args.num_requests, args.batch_prompt_tokens, args.batch_new_tokens
    reqs: list[Req] = [(make_prompt_ids(tokenizer, plen, seed=1000 + i), olen) for i in range(n)]
    ours_offline(engine, [(ids, min(8, olen)) for ids, _ in reqs[:4]])  # warm-up
    rates = [n * olen / ours_offline(engine, reqs) for _ in range(args.rounds)]
    return {"output_tok_s": summary(rates)}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prompt-tokens", type=int, default=128, help="(a), (b): prompt length")
    ap.add_argument("--new-tokens", type=int, default=128, help="(a), (b): tokens generated")
    ap.add_argument("--num-requests", type=int, default=64, help="(c)")
    ap.add_argument("--batch-prompt-tokens", type=int, default=128, help="(c)")
    ap.add_argument("--batch-new-tokens", type=int, default=128, help="(c)")
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--max-num-batched-tokens", type=int, default=1024)
    ap.add_argument("--kv-cache-gb", type=float, default=4.0)
    ap.add_argument("--peak-bandwidth", type=float, default=None, help="bytes/s; overrides")
    ap.add_argument("--dry-run", action="store_true", help="CPU, float32, tiny sizes")
    ap.add_argument("--out", type=Path, default=Path("bench/results/gpu.json"))
    args = ap.parse_args()
    if args.dry_run:
        vars(args).update(DRY_RUN)
    return args


def main() -> None:
    args = parse_args()
    env = engine_environment()  # LLM_GATEWAY_HOME (where the model lives)
    path = args.model or default_model_path(home=env.home)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu"
    peak = args.peak_bandwidth
    if peak is None and cuda and not args.dry_run:
        peak = peak_bandwidth(name)

    loaded = load_model(path, DTYPES[args.dtype], device, quantization="none")
    config = EngineConfig(
        device=args.device,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        kv_cache_gb=args.kv_cache_gb,
        prefix_caching=False,  # rounds repeat their prompts: no round may hit the cache
        # CUDA: the Triton attention kernels (backend/kernels/triton_attention.py); the dry
        # run on CPU keeps PyTorch's paths, as the GPU's matmuls are PyTorch's.
        kernels="auto" if cuda else "torch",
        home=env.home,
    )
    engine = Engine(loaded, config)
    workload = {k: getattr(args, k) for k in WORKLOAD_ARGS.split()}
    workload |= {
        "model": path.name,
        "device_name": name,
        "torch": torch.__version__,
        "sampling": "greedy, ignore_eos",
        "num_kv_blocks": engine.blocks.num_blocks,
    }
    results: dict[str, Any] = {"dry_run": args.dry_run, "workload": workload}
    try:
        ids = make_prompt_ids(loaded.tokenizer, args.prompt_tokens, seed=1)
        results["decode_batch1"] = decode_batch1(engine, ids, args)
        tok_s = results["decode_batch1"]["tok_s"]["median"]
        results["bandwidth"] = bandwidth(engine, tok_s, peak, args)
        results["batched"] = batched(engine, loaded.tokenizer, args)
    finally:
        engine.shutdown()
    print_report(results)
    write_results(args.out, results)


def print_report(res: dict[str, Any]) -> None:
    w, a, b, c = res["workload"], res["decode_batch1"], res["bandwidth"], res["batched"]
    print(
        f"model {w['model']} | {w['dtype']} | {w['device_name']} | torch {w['torch']}"
        f"{' | DRY RUN' if res['dry_run'] else ''}\n"
        f"(a), (b) batch 1, {w['prompt_tokens']}-token prompt, {w['new_tokens']} new tokens | "
        f"(c) {w['num_requests']} requests x {w['batch_prompt_tokens']} prompt / "
        f"{w['batch_new_tokens']} new tokens | {w['rounds']} rounds, median [min-max]"
    )
    for label, s in [
        ("(a) decode bs=1 tok/s", a["tok_s"]),
        ("(c) batched out tok/s", c["output_tok_s"]),
    ]:
        print(f"{label:<26} {s['median']:>10.1f} [{s['min']:.1f}-{s['max']:.1f}]")
    peak, util = b["peak_bytes_per_s"], b["utilisation"]
    print(
        f"(b) {b['bytes_per_step'] / 1e6:.1f} MB per step ({b['weight_bytes'] / 1e6:.1f} MB "
        f"weights + KV of {b['mean_context_tokens']:.0f} tokens) in {b['step_ms']:.2f} ms = "
        f"{b['achieved_bytes_per_s'] / 1e9:.1f} GB/s; peak "
        + (f"{peak / 1e9:.0f} GB/s: {util:.1%} of it" if peak else "unknown")
    )


if __name__ == "__main__":
    main()
