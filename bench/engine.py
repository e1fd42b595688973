"""Engine throughput, prefix-cache TTFT and batch-1 decode: ours vs Hugging Face transformers.

Each question runs against transformers `generate` on the same GGUF, dtype and thread
count, interleaved in one run (ours, then the peer, round after round):

(a) offline throughput: N requests with seeded random prompt/output lengths (ignore_eos),
    all submitted at once to one Engine, vs transformers in static batches (sorted by
    prompt length, left padding, best of several batch sizes). Useful output tokens/s
    counts each request's requested output tokens only; transformers' raw tokens/s
    (padding and over-generation included) is shown too.
(b) prefix caching: TTFT (add_request -> first delta) of a long real-word system prompt +
    a short question, cold (a unique head in front, so no block is cached) vs warm (the
    same prefix after one request cached it); transformers' TTFT as a reference.
(c) batch-1 decode tokens/s, measured as bench/decode.py does.

    python bench/engine.py [--num-requests 64] [--rounds 3] [--dtype float32]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.engine import Engine, EngineConfig
from backend.loading.model_store import default_model_path
from backend.loading.weights import load_model
from backend.sampling_params import SamplingParams
from bench.decode import (
    DTYPES,
    hf_measure,
    llama_cpp_status,
    load_hf,
    make_prompt_ids,
    ours_measure,
    summary,
)
from bench.output import write_results
from gateway.config import engine_environment

PAD = 0  # transformers' padding id (masked out by attention_mask), as in bench/decode.py
Req = tuple[list[int], int]  # (prompt ids, requested output tokens)
WORKLOAD_ARGS = "dtype threads rounds num_requests prompt_len output_len hf_batch_sizes \
prefix_tokens ttft_samples decode_prompt_tokens decode_new_tokens"
ENGINE_ARGS = "block_size max_num_seqs max_num_batched_tokens kv_cache_gb quantization"


def offline_workload(tokenizer: Any, n: int, plens: list[int], olens: list[int]) -> list[Req]:
    rng = random.Random(0)
    lens = [(rng.randint(*plens), rng.randint(*olens)) for _ in range(n)]
    return [(make_prompt_ids(tokenizer, p, seed=1000 + i), o) for i, (p, o) in enumerate(lens)]


async def _ours_offline(engine: Engine, reqs: list[Req]) -> float:
    async def drain(stream: Any, want: int) -> None:
        got = 0
        async for delta in stream:
            got += len(delta.token_ids)
        assert got == want, (got, want)

    start = time.perf_counter()
    streams = [
        engine.add_request(ids, SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True))
        for ids, n in reqs
    ]
    await asyncio.gather(*(drain(s, n) for s, (_, n) in zip(streams, reqs, strict=True)))
    return time.perf_counter() - start


def ours_offline(engine: Engine, reqs: list[Req]) -> float:
    """Wall seconds for all requests, submitted at once; the prefix cache starts empty."""
    engine.blocks.reset_prefix_cache()  # the engine is idle here: rounds reuse prompts
    return asyncio.run(_ours_offline(engine, reqs))


def hf_offline(model: Any, reqs: list[Req], batch_size: int) -> tuple[float, int]:
    """(wall seconds, raw generated tokens incl. padding rows' over-generation)."""
    ordered = sorted(reqs, key=lambda r: len(r[0]))
    raw = 0
    start = time.perf_counter()
    for i in range(0, len(ordered), batch_size):
        batch = ordered[i : i + batch_size]
        width, new = max(len(ids) for ids, _ in batch), max(n for _, n in batch)
        x = torch.tensor([[PAD] * (width - len(ids)) + ids for ids, _ in batch])
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids, _ in batch])
        with torch.inference_mode():
            out = model.generate(
                x,
                attention_mask=mask,
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=PAD,
            )
        assert out.shape[1] == width + new
        raw += len(batch) * new
    return time.perf_counter() - start, raw


def counters(engine: Engine) -> dict[str, int]:
    b = engine.blocks
    return {
        "preemptions": engine.scheduler.num_preemptions,
        "prefix_cache_hits": b.prefix_cache_hits,
        "prefix_cache_queries": b.prefix_cache_queries,
    }


def since(engine: Engine, before: dict[str, int]) -> dict[str, int]:
    return {k: v - before[k] for k, v in counters(engine).items()}


def offline(engine: Engine, hf: Any, tok: Any, args: argparse.Namespace) -> dict[str, Any]:
    reqs = offline_workload(tok, args.num_requests, args.prompt_len, args.output_len)
    k = min(args.hf_requests or len(reqs), len(reqs))
    hf_reqs = [reqs[i] for i in sorted(random.Random(1).sample(range(len(reqs)), k))]
    ours_offline(engine, [(ids, min(n, 8)) for ids, n in reqs[:4]])  # warm-up
    hf_offline(hf, [(ids, min(n, 8)) for ids, n in hf_reqs[:2]], 2)
    before = counters(engine)
    ours: dict[str, list[float]] = {"useful": [], "total": []}
    peer = {bs: {"useful": [], "raw": [], "total": []} for bs in args.hf_batch_sizes}
    out_n, prompt_n = sum(n for _, n in reqs), sum(len(ids) for ids, _ in reqs)
    hf_out, hf_prompt = sum(n for _, n in hf_reqs), sum(len(ids) for ids, _ in hf_reqs)
    for r in range(args.rounds):
        wall = ours_offline(engine, reqs)
        ours["useful"].append(out_n / wall)
        ours["total"].append((out_n + prompt_n) / wall)
        for bs in args.hf_batch_sizes:
            wall, raw = hf_offline(hf, hf_reqs, bs)
            peer[bs]["useful"].append(hf_out / wall)
            peer[bs]["raw"].append(raw / wall)
            peer[bs]["total"].append((hf_out + hf_prompt) / wall)
        print(f"  (a) round {r + 1}/{args.rounds} done", file=sys.stderr)
    hf_rows = {bs: {m: summary(v) for m, v in s.items()} for bs, s in peer.items()}
    best = max(hf_rows, key=lambda bs: hf_rows[bs]["useful"]["median"])
    ours_row = {m: summary(v) for m, v in ours.items()}
    ratio = ours_row["useful"]["median"] / hf_rows[best]["useful"]["median"]
    return {
        "ours": ours_row,
        "transformers": {f"batch {bs}": row for bs, row in hf_rows.items()},
        "hf_best_batch": best,
        "hf_requests": k,
        "hf_est_wall_all_s": out_n / hf_rows[best]["useful"]["median"],
        "ratio_useful_ours_vs_hf_best": ratio,
        "engine_counters": since(engine, before),
    }


def prefix(engine: Engine, hf: Any, tok: Any, args: argparse.Namespace) -> dict[str, Any]:
    system = make_prompt_ids(tok, args.prefix_tokens, seed=7)
    warm_head = make_prompt_ids(tok, 8, seed=8)

    def prompt(head_seed: int | None, i: int) -> list[int]:
        head = warm_head if head_seed is None else make_prompt_ids(tok, 8, seed=head_seed)
        return head + system + tok.encode(f" Question {i}: which prefixes stay warm, and why?")

    ours_measure(engine, prompt(None, -1), 1)  # caches the shared prefix (and warms up)
    hf_measure(hf, prompt(9, -1), 1)
    before = counters(engine)
    ttft: dict[str, list[float]] = {"cold": [], "warm": [], "transformers": []}
    for i in range(args.ttft_samples):
        ttft["cold"].append(ours_measure(engine, prompt(10_000 + i, i), 1)[0])
        ttft["warm"].append(ours_measure(engine, prompt(None, i), 1)[0])
        ttft["transformers"].append(hf_measure(hf, prompt(20_000 + i, i), 1)[0])
    rows = {k: summary([t * 1000 for t in v]) for k, v in ttft.items()}
    return {
        "prompt_tokens": len(prompt(None, 0)),
        "ttft_ms": rows,
        "ratio_cold_vs_warm": rows["cold"]["median"] / rows["warm"]["median"],
        "ratio_hf_vs_warm": rows["transformers"]["median"] / rows["warm"]["median"],
        "engine_counters": since(engine, before),
    }


def decode(engine: Engine, hf: Any, tok: Any, args: argparse.Namespace) -> dict[str, Any]:
    ids, n = make_prompt_ids(tok, args.decode_prompt_tokens, seed=1), args.decode_new_tokens
    systems = {
        "ours": lambda: ours_measure(engine, ids, n),
        "transformers": lambda: hf_measure(hf, ids, n),
    }
    ours_measure(engine, ids, 8)  # warm-up
    hf_measure(hf, ids, 8)
    rates: dict[str, list[float]] = {s: [] for s in systems}
    for _ in range(args.rounds):
        for name, fn in systems.items():
            ttft, total = fn()
            rates[name].append((n - 1) / (total - ttft))
    rows = {s: summary(v) for s, v in rates.items()}
    return {"tok_s": rows, "ratio": rows["ours"]["median"] / rows["transformers"]["median"]}


def lo_hi(text: str) -> list[int]:
    lo, hi = (int(v) for v in text.split(","))
    return [lo, hi]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--num-requests", type=int, default=64)
    ap.add_argument("--prompt-len", type=lo_hi, default=[50, 500], help="min,max tokens")
    ap.add_argument("--output-len", type=lo_hi, default=[20, 200], help="min,max tokens")
    ap.add_argument("--hf-requests", type=int, default=None, help="HF on a seeded subset")
    ap.add_argument(
        "--hf-batch-sizes", type=lambda s: [int(v) for v in s.split(",")], default=[8, 16, 32]
    )
    ap.add_argument("--prefix-tokens", type=int, default=1500)
    ap.add_argument("--ttft-samples", type=int, default=5)
    ap.add_argument("--decode-prompt-tokens", type=int, default=128)
    ap.add_argument("--decode-new-tokens", type=int, default=128)
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--max-num-batched-tokens", type=int, default=1024)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--kv-cache-gb", type=float, default=None, help="default: the engine's")
    ap.add_argument(
        "--quantization", choices=["auto", "none"], default="auto",
        help="auto: a GGUF's quantized blocks stay packed (the engine's default); none: float",
    )  # fmt: skip
    ap.add_argument("--out", type=Path, default=Path("bench/results/engine.json"))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    env = engine_environment()  # LLM_GATEWAY_CPU_KERNELS=0, CXX, LLM_GATEWAY_HOME
    path = args.model or default_model_path(home=env.home)
    dtype = DTYPES[args.dtype]
    loaded = load_model(path, dtype, "cpu", args.quantization)
    config = env.apply(
        EngineConfig(
            block_size=args.block_size,
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            kv_cache_gb=args.kv_cache_gb,
        )
    )
    engine = Engine(loaded, config)
    hf = load_hf(path, dtype)
    tok = loaded.tokenizer
    workload = {k: getattr(args, k) for k in WORKLOAD_ARGS.split()}
    workload |= {
        "model": path.name,
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "length_seed": "random.Random(0)",
        "sampling": "greedy, ignore_eos",
        "hf_requests": min(args.hf_requests or args.num_requests, args.num_requests),
        "engine": {k: getattr(args, k) for k in ENGINE_ARGS.split()}
        | {"num_kv_blocks": engine.blocks.num_blocks, "prefix_caching": True},
    }
    results: dict[str, Any] = {
        "workload": workload,
        "peers": {"llama.cpp": llama_cpp_status()},
    }
    results["offline"] = offline(engine, hf, tok, args)
    results["prefix_ttft"] = prefix(engine, hf, tok, args)
    results["decode_batch1"] = decode(engine, hf, tok, args)
    results["engine_counters_total"] = counters(engine)
    engine.shutdown()
    print_report(results)
    write_results(args.out, results)


def print_report(res: dict[str, Any]) -> None:
    w, a, b, c = res["workload"], res["offline"], res["prefix_ttft"], res["decode_batch1"]
    e = w["engine"]
    print(
        f"model {w['model']} | {w['dtype']} | cpu, {w['threads']} threads | torch {w['torch']}\n"
        f"(a) {w['num_requests']} requests, prompt {w['prompt_len'][0]}-{w['prompt_len'][1]}, "
        f"output {w['output_len'][0]}-{w['output_len'][1]} tokens ({w['length_seed']}), "
        f"{w['sampling']}; engine block {e['block_size']}, max_num_seqs {e['max_num_seqs']}, "
        f"max_num_batched_tokens {e['max_num_batched_tokens']}, {e['num_kv_blocks']} KV blocks;"
        f" transformers batch sizes {w['hf_batch_sizes']}, sorted by length, left padding\n"
        f"(b) {b['prompt_tokens']}-token prompt ({w['prefix_tokens']}-token shared prefix), "
        f"{w['ttft_samples']} samples | (c) batch 1, {w['decode_prompt_tokens']}-token prompt, "
        f"{w['decode_new_tokens']} new tokens | {w['rounds']} rounds, median [min-max]"
    )
    if a["hf_requests"] < w["num_requests"]:
        print(
            f"NOTE: transformers ran on a seeded subset of {a['hf_requests']} of "
            f"{w['num_requests']} requests; its tokens/s are measured on that subset "
            f"(est. {a['hf_est_wall_all_s']:.0f} s for all {w['num_requests']})"
        )
    rows: list[tuple[str, str, str, dict[str, float]]] = [
        ("(a) offline", "ours", "useful out tok/s", a["ours"]["useful"]),
        ("(a) offline", "ours", "total tok/s", a["ours"]["total"]),
    ]
    for name, r in a["transformers"].items():
        rows += [
            ("(a) offline", f"transformers {name}", "useful out tok/s", r["useful"]),
            ("(a) offline", f"transformers {name}", "raw out tok/s (padding incl.)", r["raw"]),
            ("(a) offline", f"transformers {name}", "total tok/s", r["total"]),
        ]
    rows += [
        ("(b) prefix TTFT", "ours cold", "TTFT ms", b["ttft_ms"]["cold"]),
        ("(b) prefix TTFT", "ours warm (cached)", "TTFT ms", b["ttft_ms"]["warm"]),
        ("(b) prefix TTFT", "transformers", "TTFT ms", b["ttft_ms"]["transformers"]),
        ("(c) decode bs=1", "ours", "decode tok/s", c["tok_s"]["ours"]),
        ("(c) decode bs=1", "transformers", "decode tok/s", c["tok_s"]["transformers"]),
    ]
    print(f"{'question':<16} {'system':<24} {'metric':<30} {'median [min-max]':>26}")
    for q, system, metric, s in rows:
        spread = f"{s['median']:.1f} [{s['min']:.1f}-{s['max']:.1f}]"
        print(f"{q:<16} {system:<24} {metric:<30} {spread:>26}")
    print(
        f"ratios: (a) ours / transformers batch {a['hf_best_batch']} (best), useful out tok/s: "
        f"{a['ratio_useful_ours_vs_hf_best']:.2f}x | (b) cold / warm TTFT: "
        f"{b['ratio_cold_vs_warm']:.1f}x (transformers / warm {b['ratio_hf_vs_warm']:.1f}x) | "
        f"(c) ours / transformers decode: {c['ratio']:.2f}x"
    )
    print(f"engine counters (a): {a['engine_counters']} | (b): {b['engine_counters']}")
    print(f"llama.cpp: {res['peers']['llama.cpp']}")


if __name__ == "__main__":
    main()
