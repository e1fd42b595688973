"""Packed quantized weights (GGUF Q4_1/Q8_0 blocks, our int8-activation kernel) against
llama.cpp on the same GGUF, and against our own float32 expansion of the same weights.

    python bench/quantized.py [--llama-python /path/to/venv/bin/python] [--threads 2]
        [--rounds 5] [--new-tokens 128] [--quality-tokens 2000] [--window 512]
        [--variants auto,int8] [--ctx 8192] [--skip-speed] [--skip-quality]
        [--skip-memory] [--dry-run] [--out bench/results/quantized.json]

A dry run (tiny sizes, no llama.cpp) writes bench/results/quantized.dry-run.json instead.

Three questions, one run, one machine, one thread count:

speed    batch-1 greedy decode of a held-out story prompt, interleaved rounds of ours
         packed ("auto": the GGUF's blocks), ours float32 ("none": the same weights
         expanded) and llama.cpp (llama-cpp-python's create_completion, fed the same token
         ids, in a long-lived worker process so rounds do not reload it). Decode tokens/s =
         (new tokens - 1) / (time after the first token).
quality  bench/data/quality_text.txt teacher-forced one token per decode step (few-row
         steps are the ones that run the packed kernel; a prefill of > 16 rows would run
         dense weights), in windows with a fresh KV cache: perplexity of each variant, and
         top-1 agreement and mean KL(ref || variant) against the float32 reference.
memory   weight bytes resident against the GGUF file, and the idle RSS of a process that
         loaded the model with a `--ctx` context and answered one 32-token request: ours
         and llama.cpp's, each in a fresh process.

llama-cpp-python lives in its own virtual environment and never loads into this one: its
interpreter runs bench/llama_cpp_worker.py, which talks JSON lines over stdin/stdout. The
quality part is bench/quantized_quality.py.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.engine import Engine, EngineConfig
from backend.loading.model_config import ModelConfig
from backend.loading.model_store import default_model_path
from backend.loading.weights import load_model
from backend.sampling_params import SamplingParams
from bench.decode import add_decode_args, summary
from bench.llama_cpp_worker import PROC_STATUS_FIELDS, LlamaPeer, proc_memory
from bench.output import write_results
from bench.quantized_quality import BLOCK_SIZE, measure_quality, print_quality
from gateway.config import engine_environment

NO_LLAMA = (
    "llama-cpp-python not found: pip install llama-cpp-python in a separate venv and "
    "pass --llama-python"
)
SPEED_WEIGHTS = {"ours packed": "auto", "ours float32": "none"}  # row -> quantization
MEMORY_ANSWER_TOKENS = 32
OUT = Path("bench/results/quantized.json")

# Held out: nothing here was tuned on it, and it is about neither caches nor serving.
PROMPT = (
    "A heavy fog had settled over the harbour town of Kellmouth by the time the last "
    "fishing boat came in. Old Tamsin stood at the end of the stone pier with a lantern, "
    "counting the masts as they slid out of the grey, and when she reached eleven she "
    "frowned, because twelve boats had gone out that morning. Her grandson, who was "
    "supposed to be mending nets in the shed, came running along the pier with a crumpled "
    "letter in his hand and mud on his boots. Continue the story:"
)


def common_prefix(a: str, b: str) -> int:
    """Characters two texts share from the start."""
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


# ---- llama.cpp peer ----------------------------------------------------------------------


def find_llama(args: argparse.Namespace) -> tuple[str | None, str]:
    """(the llama venv's interpreter, or None if it cannot import llama_cpp; a status line)."""
    if args.dry_run:
        return None, "skipped (--dry-run)"
    python = args.llama_python or os.environ.get("LLAMA_CPP_PYTHON")
    if not python:
        return None, NO_LLAMA
    try:
        probe = subprocess.run(
            [python, "-c", "import llama_cpp; print(llama_cpp.__version__)"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    except OSError:  # no such interpreter
        return None, NO_LLAMA
    if probe.returncode != 0:
        return None, NO_LLAMA
    return python, f"llama-cpp-python {probe.stdout.strip()} ({python})"


# ---- speed -------------------------------------------------------------------------------


async def _ours_run(engine: Engine, ids: list[int], new_tokens: int) -> dict[str, Any]:
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    start = time.perf_counter()
    ttft = 0.0
    out: list[int] = []
    async for delta in engine.add_request(ids, params):
        out += delta.token_ids
        if ttft == 0.0:
            ttft = time.perf_counter() - start
    assert len(out) == new_tokens, len(out)
    total = time.perf_counter() - start
    return {"ttft": ttft, "total": total, "text": engine.tokenizer.decode(out)}


def ours_complete(engine: Engine, ids: list[int], new_tokens: int) -> dict[str, Any]:
    return asyncio.run(_ours_run(engine, ids, new_tokens))


def speed_engine(path: Path, quantization: str) -> Engine:
    loaded = load_model(path, torch.float32, "cpu", quantization)
    # Every round repeats the prompt: with prefix caching the prefill would be a hit.
    config = EngineConfig(prefix_caching=False, kv_cache_gb=0.25)
    return Engine(loaded, engine_environment().apply(config))


def measure_speed(path: Path, args: argparse.Namespace, python: str | None) -> dict[str, Any]:
    engines = {name: speed_engine(path, q) for name, q in SPEED_WEIGHTS.items()}
    ids = next(iter(engines.values())).tokenizer.encode(PROMPT)
    systems: dict[str, Callable[[int], dict[str, Any]]] = {
        name: partial(ours_complete, e, ids) for name, e in engines.items()
    }
    peer = LlamaPeer(python, path, args.threads, 2048) if python else None
    if peer is not None:
        systems["llama.cpp"] = partial(peer.complete, ids)
    for run in systems.values():  # warm-up
        run(8)
    samples: dict[str, dict[str, list[float]]] = {s: {"decode": [], "ttft": []} for s in systems}
    texts: dict[str, str] = {}
    finish: dict[str, str | None] = {}
    for _ in range(args.rounds):
        for name, run in systems.items():
            r = run(args.new_tokens)
            samples[name]["decode"].append((args.new_tokens - 1) / (r["total"] - r["ttft"]))
            samples[name]["ttft"].append(r["ttft"] * 1e3)
            texts[name] = r["text"]
            finish[name] = r.get("finish_reason", "length")  # ours: ignore_eos
    peer_info: dict[str, Any] = {}
    if peer is not None:
        peer_info["same_ids"] = peer.request(cmd="tokenize", text=PROMPT)["ids"] == ids
        peer.close()
    for e in engines.values():
        e.shutdown()
    ref = texts["ours float32"]
    return {
        "prompt_tokens": len(ids),
        "peer": peer_info,
        "rows": [
            {
                "system": name,
                "decode_tok_s": summary(s["decode"]),
                "ttft_ms": summary(s["ttft"]),
                # "stop": llama.cpp met EOS early (no ignore_eos there): its rate is void.
                "finish_reason": finish[name],
                "same_text_as_float32": texts[name] == ref,
                "common_prefix_chars": common_prefix(texts[name], ref),
            }
            for name, s in samples.items()
        ],
    }


# ---- memory ------------------------------------------------------------------------------


def weight_rows(path: Path) -> tuple[list[dict[str, Any]], ModelConfig]:
    """Weight bytes of each of our variants; the model's config."""
    rows = []
    for name, quantization in SPEED_WEIGHTS.items():
        loaded = load_model(path, torch.float32, "cpu", quantization)
        rows.append({"system": name, "bytes": loaded.model.weight_bytes()})
        config = loaded.config
        del loaded
        gc.collect()
    return rows, config


def ours_memory_worker(argv: list[str]) -> None:
    """In a fresh process: load with a ctx-token context, answer once, report RSS."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--ctx", type=int, required=True)
    ap.add_argument("--quantization", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    before_load = proc_memory()
    loaded = load_model(args.model, torch.float32, "cpu", args.quantization)
    # A KV cache for one sequence of ctx tokens: what llama.cpp's n_ctx holds.
    config = EngineConfig(num_kv_blocks=args.ctx // BLOCK_SIZE, max_model_len=args.ctx)
    engine = Engine(loaded, engine_environment().apply(config))
    after_load = proc_memory()
    ours_complete(engine, loaded.tokenizer.encode(PROMPT), MEMORY_ANSWER_TOKENS)
    gc.collect()
    idle = proc_memory()
    # Diagnosis, not the figure: how much of the idle RSS is freed heap that glibc kept
    # (a prefill's float32 scratch copies of packed weights land there).
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    trimmed = proc_memory()
    print(
        json.dumps(
            {
                "before_load": before_load,
                "after_load": after_load,
                **idle,
                "after_malloc_trim": trimmed,
            }
        )
    )
    engine.shutdown()


def ours_memory(path: Path, args: argparse.Namespace, quantization: str) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--memory-worker", "--model", str(path)]
    argv += ["--threads", str(args.threads), "--ctx", str(args.ctx)]
    argv += ["--quantization", quantization]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    reply: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return reply


def llama_memory(path: Path, args: argparse.Namespace, python: str) -> dict[str, Any]:
    peer = LlamaPeer(python, path, args.threads, args.ctx)
    prompt = peer.request(cmd="tokenize", text=PROMPT)["ids"]
    peer.complete(prompt, MEMORY_ANSWER_TOKENS)
    memory = peer.request(cmd="memory")
    peer.close()
    return {
        "before_load": peer.hello["before_load"],
        "after_load": peer.hello["after_load"],
        **memory,
    }


def measure_memory(path: Path, args: argparse.Namespace, python: str | None) -> dict[str, Any]:
    rss = [
        {"system": name, **ours_memory(path, args, quantization)}
        for name, quantization in SPEED_WEIGHTS.items()
    ]
    if python:
        rss.append({"system": "llama.cpp", **llama_memory(path, args, python)})
    weights, cfg = weight_rows(path)
    kv_bytes = cfg.num_layers * 2 * args.ctx * cfg.num_kv_heads * cfg.head_dim * 4  # float32
    return {"gguf_bytes": path.stat().st_size, "weights": weights, "kv_bytes": kv_bytes, "rss": rss}


# ---- report ------------------------------------------------------------------------------


def print_table(results: dict[str, Any]) -> None:
    w = results["workload"]
    print(
        f"model {w['model']} ({w['gguf_bytes'] / 1e6:.1f} MB) | cpu {w['cpu']}, "
        f"{w['threads']} threads | torch {w['torch']} | llama.cpp: {w['llama.cpp']}"
    )
    print(
        f"1-minute load average: {w['load_average_start']:.2f} at start, "
        f"{w['load_average_end']:.2f} at end ({os.cpu_count()} CPUs)"
    )
    if "speed" in results:
        print_speed(results["speed"], w)
    if "quality" in results:
        print_quality(results["quality"], w["window"])
    if "memory" in results:
        print_memory(results["memory"], w)


def print_speed(speed: dict[str, Any], w: dict[str, Any]) -> None:
    print(
        f"\nspeed: batch 1, greedy, {speed['prompt_tokens']}-token prompt, {w['new_tokens']} "
        f"new tokens, {w['rounds']} interleaved rounds, median [min-max]"
    )
    print(f"{'system':<14} {'decode tok/s':>22} {'TTFT ms':>20}  same text as float32")
    for r in speed["rows"]:
        d, t = r["decode_tok_s"], r["ttft_ms"]
        same = "yes" if r["same_text_as_float32"] else f"first {r['common_prefix_chars']} chars"
        flag = "" if r["finish_reason"] == "length" else f"  (finished: {r['finish_reason']})"
        print(
            f"{r['system']:<14} {d['median']:>8.1f} [{d['min']:.1f}-{d['max']:.1f}] "
            f"{t['median']:>8.1f} [{t['min']:.0f}-{t['max']:.0f}]  {same}{flag}"
        )
    medians = {r["system"]: r["decode_tok_s"]["median"] for r in speed["rows"]}
    for peer in ("llama.cpp", "ours float32"):
        if peer in medians:
            print(
                f"ratio ours packed / {peer}: decode {medians['ours packed'] / medians[peer]:.2f}x"
            )
    if "same_ids" in speed["peer"]:
        print(f"llama.cpp tokenizes the prompt to the same ids: {speed['peer']['same_ids']}")


def print_memory(memory: dict[str, Any], w: dict[str, Any]) -> None:
    gguf = memory["gguf_bytes"]
    print(f"\nmemory: weights resident (KV cache excluded) vs the GGUF file ({gguf / 1e6:.1f} MB)")
    for r in memory["weights"]:
        print(f"{r['system']:<14} {r['bytes'] / 1e6:>8.1f} MB  {r['bytes'] / gguf:.2f}x the file")
    print(
        f"KV cache for {w['ctx']} tokens: ours (float32) {memory['kv_bytes'] / 1e6:.1f} MB; "
        "llama.cpp's default f16 cache holds half that"
    )
    print(
        f"RSS of a fresh process, context {w['ctx']}, MB: after imports, after load, "
        f"idle after one {MEMORY_ANSWER_TOKENS}-token answer (anonymous + file-backed), peak"
    )
    for r in memory["rss"]:
        mb = {k: r[k] / 1e6 for k in PROC_STATUS_FIELDS}
        print(
            f"{r['system']:<14} {r['before_load']['VmRSS'] / 1e6:>7.1f} "
            f"{r['after_load']['VmRSS'] / 1e6:>7.1f} {mb['VmRSS']:>7.1f} "
            f"({mb['RssAnon']:.1f} + {mb['RssFile']:.1f}) {mb['VmHWM']:>7.1f}"
        )
    for r in memory["rss"]:
        if "after_malloc_trim" in r:
            trimmed = r["after_malloc_trim"]["VmRSS"] / 1e6
            print(
                f"{r['system']}: {trimmed:.1f} MB idle after malloc_trim(0) (freed heap glibc kept)"
            )
    rss = {r["system"]: r["VmRSS"] for r in memory["rss"]}
    if "llama.cpp" in rss:
        print(
            f"ratio ours packed / llama.cpp idle RSS: {rss['ours packed'] / rss['llama.cpp']:.2f}x"
        )


# ---- main --------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_decode_args(ap)
    ap.add_argument("--llama-python", default=None, help="python of a venv with llama_cpp")
    ap.add_argument("--quality-tokens", type=int, default=2000)
    ap.add_argument("--window", type=int, default=512, help="tokens per fresh KV cache")
    ap.add_argument("--variants", default="auto,int8", help="scored against float32")
    ap.add_argument("--ctx", type=int, default=8192, help="context length for the RSS check")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument(
        "--dry-run", action="store_true",
        help="tiny sizes, no llama.cpp: 1 round, 16 new tokens, 64 quality tokens, ctx 256",
    )  # fmt: skip
    ap.add_argument("--out", type=Path, default=None, help=f"default: {OUT}")
    args = ap.parse_args()
    if args.dry_run:
        args.rounds, args.new_tokens, args.quality_tokens, args.ctx = 1, 16, 64, 256
    # A dry run's figures must not overwrite a real run's.
    args.out = args.out or (OUT.with_suffix(".dry-run.json") if args.dry_run else OUT)
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    path = args.model or default_model_path(home=engine_environment().home)
    python, llama_status = find_llama(args)
    results: dict[str, Any] = {
        "workload": {
            "model": path.name,
            "gguf_bytes": path.stat().st_size,
            "device": "cpu",
            "threads": args.threads,
            "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "llama.cpp": llama_status,
            "new_tokens": args.new_tokens,
            "rounds": args.rounds,
            "sampling": "greedy; ours ignore_eos",
            "quality_tokens": args.quality_tokens,
            "window": args.window,
            "ctx": args.ctx,
            # Other work on a shared machine: a spin-waiting thread pool (llama.cpp's)
            # suffers far more from it than the figures' medians show.
            "load_average_start": os.getloadavg()[0],
        },
    }
    if llama_status == NO_LLAMA:
        print(NO_LLAMA)
    if not args.skip_speed:
        results["speed"] = measure_speed(path, args, python)
    if not args.skip_quality:
        variants = args.variants.split(",")
        results["quality"] = measure_quality(path, variants, args.quality_tokens, args.window)
    if not args.skip_memory:
        results["memory"] = measure_memory(path, args, python)
    results["workload"]["load_average_end"] = os.getloadavg()[0]

    print_table(results)
    write_results(args.out, results)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--memory-worker"]:
        ours_memory_worker(sys.argv[2:])
    else:
        main()
