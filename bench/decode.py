"""Batch-1 decode and prefill throughput: the bundled engine vs Hugging Face transformers.

Same GGUF file, same dtype, same thread count, measured interleaved in one run (ours,
then the peer, round after round) so machine noise hits both alike. Prints a table and
writes the same figures as JSON.

    python bench/decode.py [--dtypes float32,bfloat16] [--rounds 5] [--threads 2]

Decode tokens/s = (new tokens - 1) / (time after the first token); prefill tokens/s =
prompt tokens / time to first token (one token generated). Ours is timed through the
engine's public front (add_request -> deltas), so its step loop and thread hand-off are
included; transformers is timed around `generate` (TTFT from a 1-token run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.engine import Engine, EngineConfig
from backend.loading.model_store import default_model_path
from backend.loading.weights import load_model
from backend.sampling_params import SamplingParams
from bench.output import write_results
from gateway.config import engine_environment

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def make_prompt_ids(tokenizer: Any, n: int, seed: int) -> list[int]:
    """n token ids of seeded English-like text (real words, so attention is realistic)."""
    rng = random.Random(seed)
    words = "the model serves many users at once while the cache keeps shared prefixes warm".split()
    ids: list[int] = []
    while len(ids) < n:
        ids += tokenizer.encode(" " + " ".join(rng.choice(words) for _ in range(64)))
    return ids[:n]


async def _ours_run(engine: Engine, ids: list[int], new_tokens: int) -> tuple[float, float]:
    """Returns (ttft, total) seconds for one greedy request."""
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    start = time.perf_counter()
    ttft = 0.0
    count = 0
    async for delta in engine.add_request(ids, params):
        count += len(delta.token_ids)
        if ttft == 0.0:
            ttft = time.perf_counter() - start
    assert count == new_tokens, count
    return ttft, time.perf_counter() - start


def ours_measure(engine: Engine, ids: list[int], new_tokens: int) -> tuple[float, float]:
    ttft, total = asyncio.run(_ours_run(engine, ids, new_tokens))
    return ttft, total


def hf_measure(model: Any, ids: list[int], new_tokens: int) -> tuple[float, float]:
    x = torch.tensor([ids])
    kwargs = {"do_sample": False, "pad_token_id": 0}
    with torch.inference_mode():
        t0 = time.perf_counter()
        model.generate(x, max_new_tokens=1, **kwargs)
        ttft = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = model.generate(x, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
        total = time.perf_counter() - t0
    assert out.shape[1] - len(ids) == new_tokens
    return ttft, total


def load_hf(path: Path, dtype: torch.dtype) -> Any:
    os.environ["HF_HUB_OFFLINE"] = "1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        return AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=dtype
        ).eval()


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def add_decode_args(ap: argparse.ArgumentParser) -> None:
    """The flags of a batch-1 greedy decode run, shared with bench/quantized.py."""
    ap.add_argument("--model", type=Path, default=None, help="a GGUF (default: the bundled one)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=128)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_decode_args(ap)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--prompt-tokens", type=int, default=128, help="prompt length for decode")
    ap.add_argument("--prefill-tokens", type=int, default=512)
    ap.add_argument(
        "--int8-decode", action="store_true",
        help="also measure the engine with int8 weight copies for small steps (fp32 only)",
    )  # fmt: skip
    ap.add_argument("--out", type=Path, default=Path("bench/results/decode.json"))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    path = args.model or default_model_path(home=engine_environment().home)
    results: dict[str, Any] = {
        "workload": {
            "model": str(path.name),
            "device": "cpu",
            "threads": args.threads,
            "decode_prompt_tokens": args.prompt_tokens,
            "new_tokens": args.new_tokens,
            "prefill_prompt_tokens": args.prefill_tokens,
            "rounds": args.rounds,
            "batch": 1,
            "sampling": "greedy, ignore_eos",
            "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__,
        },
        "peers": {"llama.cpp": llama_cpp_status()},
        "rows": [],
    }
    for name in args.dtypes.split(","):
        results["rows"] += measure(path, name, args)

    print_table(results)
    write_results(args.out, results)


def measure(path: Path, dtype_name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    dtype = DTYPES[dtype_name]
    loaded = load_model(path, dtype, "cpu")
    # Every round repeats the same prompts: without this, prefill would be a cache hit.
    env = engine_environment()  # LLM_GATEWAY_CPU_KERNELS=0, CXX, LLM_GATEWAY_HOME
    no_cache = env.apply(EngineConfig(prefix_caching=False))
    engine = Engine(loaded, no_cache)
    hf = load_hf(path, dtype)
    decode_ids = make_prompt_ids(loaded.tokenizer, args.prompt_tokens, seed=1)
    prefill_ids = make_prompt_ids(loaded.tokenizer, args.prefill_tokens, seed=2)
    systems = {
        "llm-gateway engine": lambda ids, n: ours_measure(engine, ids, n),
        "transformers": lambda ids, n: hf_measure(hf, ids, n),
    }
    engines = [engine]
    if args.int8_decode and dtype == torch.float32:
        # A second copy of the model: int8 weight copies are attached to it in place.
        int8_config = env.apply(EngineConfig(prefix_caching=False, int8_decode=True))
        int8_engine = Engine(load_model(path, dtype, "cpu"), int8_config)
        engines.append(int8_engine)
        systems["llm-gateway int8-decode"] = lambda ids, n: ours_measure(int8_engine, ids, n)
    samples = {s: {"decode": [], "prefill": []} for s in systems}
    for fn in systems.values():  # warm-up
        fn(decode_ids, 8)
        fn(prefill_ids, 1)
    for _ in range(args.rounds):
        for sys_name, fn in systems.items():
            ttft, total = fn(decode_ids, args.new_tokens)
            samples[sys_name]["decode"].append((args.new_tokens - 1) / (total - ttft))
            ttft, _ = fn(prefill_ids, 1)
            samples[sys_name]["prefill"].append(len(prefill_ids) / ttft)
    for e in engines:
        e.shutdown()
    return [
        {
            "system": sys_name,
            "dtype": dtype_name,
            "decode_tok_s": summary(s["decode"]),
            "prefill_tok_s": summary(s["prefill"]),
        }
        for sys_name, s in samples.items()
    ]


def llama_cpp_status() -> str:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return "not installed (llama-cpp-python compiles ~6 min; not part of this run)"
    return "installed but not wired into this benchmark yet"


def print_table(results: dict[str, Any]) -> None:
    w = results["workload"]
    print(
        f"model {w['model']} | cpu, {w['threads']} threads | batch 1 | decode: "
        f"{w['decode_prompt_tokens']}-token prompt, {w['new_tokens']} new tokens | prefill: "
        f"{w['prefill_prompt_tokens']} tokens | {w['rounds']} rounds, median [min-max]"
    )
    print(f"{'system':<24} {'dtype':<9} {'decode tok/s':>22} {'prefill tok/s':>24}")
    base: dict[str, dict[str, float]] = {}  # transformers' medians per dtype
    for r in results["rows"]:
        if r["system"] == "transformers":
            base[r["dtype"]] = {"d": r["decode_tok_s"]["median"], "p": r["prefill_tok_s"]["median"]}
    for r in results["rows"]:
        d, p = r["decode_tok_s"], r["prefill_tok_s"]
        print(
            f"{r['system']:<24} {r['dtype']:<9} "
            f"{d['median']:>8.1f} [{d['min']:.1f}-{d['max']:.1f}] "
            f"{p['median']:>10.1f} [{p['min']:.0f}-{p['max']:.0f}]"
        )
    for r in results["rows"]:
        b = base[r["dtype"]]
        if r["system"] != "transformers":
            decode = r["decode_tok_s"]["median"] / b["d"]
            prefill = r["prefill_tok_s"]["median"] / b["p"]
            print(
                f"ratio {r['system']} / transformers ({r['dtype']}): "
                f"decode {decode:.2f}x, prefill {prefill:.2f}x"
            )
    print(f"llama.cpp: {results['peers']['llama.cpp']}")


if __name__ == "__main__":
    main()
