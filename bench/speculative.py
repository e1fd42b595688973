"""Speculative decoding on vs off: decode tokens/s per workload, and a concurrency sweep.

Same process, same model, same prompts, interleaved round after round (off, each
speculative method, then Hugging Face transformers plain and with its prompt lookup)
so machine noise hits all alike. Greedy throughout, so every mode must produce the
same tokens (checked: a mode that changes the output is reported as WRONG).

    python bench/speculative.py [--rounds 3] [--methods ngram] [--sweep 1,4,16,64]

Workloads (chat-templated, greedy, natural end or --max-tokens):
  repeat  repeat a passage verbatim (HF's best case for prompt lookup)
  edit    rewrite a passage with small changes          (issue target: >= 2.5x)
  rag     answer from a given document                  (>= 1.5x)
  chat    open-ended chat, nothing to look up           (>= 0.95x: no slowdown)
Decode tokens/s = (output tokens - 1) / (time after the first token).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.engine import Engine, EngineConfig
from backend.loading.model_store import default_model_path
from backend.loading.weights import LoadedModel, load_model
from backend.sampling_params import SamplingParams
from backend.speculative import SpeculativeConfig
from bench.decode import load_hf
from bench.output import write_results
from gateway.config import engine_environment

PASSAGE = (
    "The old lighthouse stood at the end of the harbour wall. Every evening at six the "
    "keeper climbed its spiral stairs, wound the clockwork that turned the lens, trimmed "
    "the wick and polished the glass until it shone. Ships far out at sea saw the beam "
    "sweep across the water and knew that the rocks were near. In winter the storms came "
    "from the north, and the keeper stayed awake through the night, listening to the "
    "waves break against the stones below."
)
DOCUMENT = (
    "Harbour Authority notice, March 2024. The north pier will be closed for repairs "
    "from 4 March to 29 March. During the closure, the ferry to Alder Island departs from "
    "the south pier at 7:15, 11:40 and 16:20 on weekdays, and at 9:00 and 15:00 on "
    "weekends. Tickets bought for the north pier remain valid. Passengers with bicycles "
    "must board ten minutes before departure. The harbour café on the north pier is "
    "closed during the works; a temporary kiosk operates next to the south pier ticket "
    "office from 6:30 to 18:00. Parking on Quay Road is limited to two hours. For "
    "questions, contact the harbour office at the south pier, open daily from 8:00 to "
    "17:00."
)
WORKLOADS = {
    "repeat": f"Repeat the following passage exactly, word for word:\n\n{PASSAGE}",
    "edit": (
        "Rewrite the following passage, replacing 'keeper' with 'guardian' and "
        f"'ships' with 'boats', and change nothing else:\n\n{PASSAGE}"
    ),
    "rag": (
        f"Document:\n{DOCUMENT}\n\nUsing only the document, answer: where and when does "
        "the ferry to Alder Island leave during the closure, and where can passengers buy "
        "food? Quote the document."
    ),
    "chat": "Write a short story about a fox who learns to play the violin.",
}


def chat_ids(loaded: LoadedModel, text: str) -> list[int]:
    tok = loaded.tokenizer
    return tok.encode(tok.apply_chat_template([{"role": "user", "content": text}]))


async def _one(engine: Engine, ids: list[int], max_tokens: int) -> tuple[list[int], float, float]:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    start = time.perf_counter()
    first = 0.0
    tokens: list[int] = []
    async for delta in engine.add_request(ids, params):
        if not tokens and delta.token_ids:
            first = time.perf_counter()
        tokens += delta.token_ids
    return tokens, first - start, time.perf_counter() - first


def ours(engine: Engine, ids: list[int], max_tokens: int) -> tuple[list[int], float]:
    tokens, _, after_first = asyncio.run(_one(engine, ids, max_tokens))
    return tokens, (len(tokens) - 1) / after_first


def hf(model: Any, ids: list[int], max_tokens: int, lookup: int) -> tuple[list[int], float]:
    """transformers generate, plain or with prompt_lookup_num_tokens; decode tokens/s from
    (total - time of a 1-token run)."""
    x = torch.tensor([ids])
    kwargs: dict[str, Any] = {"do_sample": False, "pad_token_id": 0}
    if lookup:
        kwargs["prompt_lookup_num_tokens"] = lookup
    with torch.inference_mode():
        t0 = time.perf_counter()
        model.generate(x, max_new_tokens=1, **kwargs)
        ttft = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = model.generate(x, max_new_tokens=max_tokens, **kwargs)
        total = time.perf_counter() - t0
    tokens = out[0, len(ids) :].tolist()
    return tokens, (len(tokens) - 1) / max(total - ttft, 1e-9)


async def _many(engine: Engine, prompts: list[list[int]], max_tokens: int) -> tuple[int, float]:
    start = time.perf_counter()
    results = await asyncio.gather(*(_one(engine, p, max_tokens) for p in prompts))
    return sum(len(r[0]) for r in results), time.perf_counter() - start


def sweep_point(engine: Engine, prompts: list[list[int]], max_tokens: int) -> float:
    tokens, seconds = asyncio.run(_many(engine, prompts, max_tokens))
    return tokens / seconds


def _arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--methods", default="ngram", help="comma-separated speculative methods")
    ap.add_argument("--k", type=int, default=8, help="most guesses per step")
    ap.add_argument("--hf-lookup", type=int, default=10, help="HF prompt_lookup_num_tokens")
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--sweep", default="1,4,16,64", help="concurrency levels ('' to skip)")
    ap.add_argument("--sweep-max-tokens", type=int, default=96)
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="('' to skip)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/speculative.json"))
    return ap.parse_args()


def _batch_one(
    args: argparse.Namespace,
    engines: dict[str, Engine],
    hf_model: Any,
    chosen: dict[str, list[int]],
) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, list[int]]]]:
    """Each workload alone, every engine (and transformers), `rounds` times interleaved:
    (tokens/s per workload and engine, the first output of each)."""
    rates: dict[str, dict[str, list[float]]] = {w: {} for w in chosen}
    outputs: dict[str, dict[str, list[int]]] = {w: {} for w in chosen}
    for r in range(args.rounds if chosen else 0):
        for w, ids in chosen.items():
            for name, engine in engines.items():
                tokens, rate = ours(engine, ids, args.max_tokens)
                rates[w].setdefault(name, []).append(rate)
                outputs[w].setdefault(name, tokens)
            if hf_model is not None:
                for name, lookup in (("hf", 0), ("hf-lookup", args.hf_lookup)):
                    tokens, rate = hf(hf_model, ids, args.max_tokens, lookup)
                    rates[w].setdefault(name, []).append(rate)
                    outputs[w].setdefault(name, tokens)
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    return rates, outputs


def _sweep(
    args: argparse.Namespace, engines: dict[str, Engine], mix: list[list[int]]
) -> dict[str, dict[int, float]]:
    """Every level, all engines, `rounds` times interleaved; the median per engine and level."""
    sweep_runs: dict[str, dict[int, list[float]]] = {}
    levels = [int(v) for v in args.sweep.split(",") if v]
    for r in range(args.rounds if levels else 0):
        for level in levels:
            batch = [mix[i % len(mix)] for i in range(level)]
            for name, engine in engines.items():
                rate = sweep_point(engine, batch, args.sweep_max_tokens)
                sweep_runs.setdefault(name, {}).setdefault(level, []).append(rate)
        print(f"sweep round {r + 1}/{args.rounds} done", flush=True)
    return {
        name: {level: statistics.median(v) for level, v in per.items()}
        for name, per in sweep_runs.items()
    }


def main() -> None:
    args = _arguments()
    torch.set_num_threads(args.threads)
    env = engine_environment()  # LLM_GATEWAY_CPU_KERNELS=0, CXX, LLM_GATEWAY_HOME
    path = args.model or default_model_path(home=env.home)
    loaded = load_model(path, torch.float32, "cpu")
    engines = {"off": Engine(loaded, env.apply(EngineConfig()))}
    for method in filter(None, args.methods.split(",")):
        spec = SpeculativeConfig(method=method, num_speculative_tokens=args.k)
        engines[method] = Engine(loaded, env.apply(EngineConfig(speculative=spec)))
    hf_model = None if args.no_hf else load_hf(path, torch.float32)
    prompts = {name: chat_ids(loaded, text) for name, text in WORKLOADS.items()}
    chosen = {w: prompts[w] for w in filter(None, args.workloads.split(","))}
    rates, outputs = _batch_one(args, engines, hf_model, chosen)
    sweep = _sweep(args, engines, list(prompts.values()))
    counters = {
        name: {
            "accepted": engine.metrics.spec_accepted_tokens._value.get(),
            "drafted": engine.metrics.spec_draft_tokens._value.get(),
        }
        for name, engine in engines.items()
        if name != "off"
    }
    for engine in engines.values():
        engine.shutdown()
    result = {
        "setup": {
            "model": path.name,
            "cpu": platform.processor() or platform.machine(),
            "threads": args.threads,
            "torch": torch.__version__,
            "rounds": args.rounds,
            "max_tokens": args.max_tokens,
            "k": args.k,
            "hf_prompt_lookup_num_tokens": args.hf_lookup,
        },
        "decode_tokens_per_s": {
            w: {name: statistics.median(v) for name, v in per.items()} for w, per in rates.items()
        },
        "output_tokens": {w: {n: len(t) for n, t in per.items()} for w, per in outputs.items()},
        "same_output_as_off": {
            w: {n: t == per["off"] for n, t in per.items()} for w, per in outputs.items()
        },
        "sweep_total_tokens_per_s": sweep,
        "spec_counters": counters,
    }
    print_report(result)
    write_results(args.out, result)


def print_report(res: dict[str, Any]) -> None:
    rates, same = res["decode_tokens_per_s"], res["same_output_as_off"]
    names = list(next(iter(rates.values()))) if rates else []
    if rates:
        print("\nbatch-1 decode tokens/s (median), speed-up vs the same stack without speculation")
        print(f"{'workload':<9}" + "".join(f"{n:>18}" for n in names))
    for w, per in rates.items():
        cells = []
        for n in names:
            base = per["hf"] if n.startswith("hf") else per["off"]
            ok = "" if same[w].get(n, True) or n.startswith("hf") else " WRONG"
            cells.append(f"{per[n]:7.1f} ({per[n] / base:4.2f}x){ok}")
        print(f"{w:<9}" + "".join(f"{c:>18}" for c in cells))
    tokens = res["output_tokens"]
    if tokens:
        print("output tokens: " + ", ".join(f"{w} {per['off']}" for w, per in tokens.items()))
    sweep = res["sweep_total_tokens_per_s"]
    if sweep:
        print("\nconcurrency sweep: total output tokens/s (ratio vs off)")
        for name, per in sweep.items():
            cells = [f"{lvl}: {v:6.1f} ({v / sweep['off'][lvl]:4.2f}x)" for lvl, v in per.items()]
            print(f"  {name:<8} " + "   ".join(cells))
    for name, c in res["spec_counters"].items():
        rate = c["accepted"] / c["drafted"] if c["drafted"] else 0.0
        print(f"{name}: {c['accepted']:.0f} of {c['drafted']:.0f} guesses accepted ({rate:.0%})")


if __name__ == "__main__":
    main()
