"""Constrained decoding: what a JSON schema costs the engine's decode throughput, and
structured outputs through the official OpenAI SDK against a real server, in one run.

    python bench/structured.py [--rounds 3] [--concurrency 1,16] [--skip-sdk]

1. Engine in-process (default settings: packed weights, CPU kernels). Per concurrency
   level c: `--requests` requests at least (the Order model's prompts of
   tests/gateway/sdk/structured_models.py, chat-templated, seed = request index,
   temperature 0.8), sent in waves of c. Each round runs WITH the Order model's strict
   schema (GrammarSpec.json_schema) first, then WITHOUT a grammar: every request the
   same prompt and seed, max_tokens = the completion tokens its constrained answer had
   in that round, ignore_eos, so both modes decode the same tokens per request in the
   same batch shapes. Rounds alternate the modes (A,B,A,B) after an untimed warm-up
   pair per level (it also puts the prompts' full blocks in the prefix cache, for
   every timed run alike: their outputs are then the same round after round).
   Decode tokens/s = the tokens that arrive after a wave's last first token / (the
   wave's last token - that moment), summed over waves: from then on every request of
   the wave decodes and nothing prefills (prompts admitted a step apart: the spread of
   first-token times is reported). Whole-wave wall tokens/s is reported beside it (it
   includes the prefill, the same work in both modes: identical prompts). Reported per
   level: median tokens/s per mode, the median over rounds of with/without, and the
   share of constrained answers that parse as an Order (pydantic). The issue's bar:
   the grammar costs at most 10% at 16 concurrent. Where the grammar's time goes:
   timers wrapped around the engine's step, the model, the sampler, the mask fill
   (worker thread), the wait for the masks, their application and the stop rules
   (in this process only, on in both modes, a few us a step; no backend code changed),
   per step, median of rounds.
2. Through the SDK: `python -m gateway.cli serve` (the model, a 0.25 GB KV cache, as
   the tests' server) on a free port; `chat.completions.parse` with each pydantic model
   of structured_models.MODELS for its 20 prompts (16 at a time, temperature 0.8,
   seed = prompt index, max_completion_tokens 600). Reported per model: answers parsed
   into the model (the issue's bar: 20/20 each), finish reasons, median completion
   tokens. Then 20 `response_format={"type": "json_object"}` requests ("Describe X in
   JSON."): how many parse with json.loads, how many hit max_tokens (600) and how many
   of those still parse (the engine closes a JSON answer as its budget ends). Every SDK
   request carries `cache-control: no-cache` (no replay from the gateway's cache). With
   that KV cache the gateway admits ~11 such requests at a time and answers the rest
   503 with Retry-After; the SDK retries them (`--sdk-retries`), and they are counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import backend.engine.stop_rules as stop_rules
from backend.engine import Engine, EngineConfig
from backend.loading.model_store import default_model_path
from backend.loading.weights import LoadedModel, load_model
from backend.sampling_params import SamplingParams
from backend.structured import GrammarSpec
from backend.structured.masks import GrammarMasks, PendingMasks
from bench.output import write_results
from bench.overhead import free_port
from bench.speculative import chat_ids
from gateway.config import engine_environment
from gateway.testing.processes import wait_until_up
from tests.gateway.sdk.structured_models import MODELS, Order

ROOT = Path(__file__).resolve().parents[1]
MODEL_ID = "SmolLM2-135M-Instruct"
MAX_TOKENS = 600  # a constrained answer's limit, in-process and through the SDK
# What the tests' server runs with (tests/serving.py). At max_completion_tokens 600 its
# admission takes ~11 requests at a time; the others get 503s, which the SDK retries.
KV_CACHE_GB = 0.25
NO_CACHE = {"cache-control": "no-cache"}
JSON_PROMPTS = [
    f"Describe {x} in JSON."
    for x in (
        "a cat", "the city of Paris", "a red bicycle", "a rainy day", "a cup of coffee",
        "a famous painting", "a mountain lake", "a chess game", "a school bus",
        "a birthday party", "a lighthouse", "an apple tree", "a train journey",
        "a smartphone", "a football match", "a desert island", "a jazz band",
        "a winter morning", "a bakery", "the planet Mars",
    )
]  # fmt: skip


# ---- part 1: the engine in-process ------------------------------------------------------


@dataclass
class Answer:
    tokens: list[int]
    text: str
    finish: str | None
    times: list[float]  # perf_counter at each token's arrival

    @property
    def first(self) -> float:
        return self.times[0]

    @property
    def last(self) -> float:
        return self.times[-1]


async def _answer(engine: Engine, ids: list[int], params: SamplingParams) -> Answer:
    tokens: list[int] = []
    times: list[float] = []
    text, finish = "", None
    async for delta in engine.add_request(ids, params):
        tokens += delta.token_ids
        times += [time.perf_counter()] * len(delta.token_ids)
        text += delta.text
        finish = delta.finish_reason
    return Answer(tokens, text, finish, times)


async def _wave(
    engine: Engine, work: list[tuple[list[int], SamplingParams]]
) -> tuple[list[Answer], float]:
    start = time.perf_counter()
    answers = await asyncio.gather(*(_answer(engine, ids, p) for ids, p in work))
    return list(answers), time.perf_counter() - start


def run_point(
    engine: Engine,
    prompts: list[list[int]],
    concurrency: int,
    n: int,
    temperature: float,
    spec: GrammarSpec,
    counts: list[int] | None,
) -> dict[str, Any]:
    """n requests in waves of `concurrency`: under `spec` when `counts` is None, else
    unconstrained, request i decoding exactly counts[i] tokens."""
    answers: list[Answer] = []
    decode_tokens, decode_s, tokens, wall_s, spread = 0, 0.0, 0, 0.0, 0.0
    for start in range(0, n, concurrency):
        work = []
        for i in range(start, min(n, start + concurrency)):
            params = SamplingParams(
                max_tokens=MAX_TOKENS if counts is None else counts[i],
                temperature=temperature,
                seed=i,
                grammar=spec if counts is None else None,
                ignore_eos=counts is not None,
            )
            work.append((prompts[i % len(prompts)], params))
        wave, wall = asyncio.run(_wave(engine, work))
        decoding = max(a.first for a in wave)  # from here on, every request decodes
        decode_tokens += sum(t > decoding for a in wave for t in a.times)
        decode_s += max(a.last for a in wave) - decoding
        tokens += sum(len(a.tokens) for a in wave)
        wall_s += wall
        spread = max(spread, decoding - min(a.first for a in wave))
        answers += wave
    return {
        "answers": answers,
        "decode_tok_s": decode_tokens / decode_s,
        "wall_tok_s": tokens / wall_s,
        "decode_s": decode_s,
        "first_token_spread_s": spread,
    }


def parses(text: str) -> bool:
    try:
        Order.model_validate_json(text)
    except ValueError:  # pydantic's ValidationError is a ValueError
        return False
    return True


class Timers:
    """Seconds and calls per name, from wrappers put around engine internals (this
    process only) by `install`, removed by `remove`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.rows = 0  # grammar rows whose masks were filled
        self._lock = threading.Lock()
        self._undo: list[tuple[Any, str, Any]] = []

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self.seconds[name] += seconds
            self.calls[name] += 1

    def reset(self) -> None:
        with self._lock:
            self.seconds.clear()
            self.calls.clear()
            self.rows = 0

    def _timed(self, owner: Any, attr: str, name: str) -> None:
        original = getattr(owner, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - began)

        self._replace(owner, attr, timed)

    def _replace(self, owner: Any, attr: str, new: Callable[..., Any]) -> None:
        self._undo.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, new)

    def install(self, engine: Engine) -> None:
        self._timed(Engine, "_step", "step")
        self._timed(type(engine.runner), "execute", "model")
        self._timed(Engine, "_sample", "sample")
        self._timed(stop_rules, "_advance", "stop_rules")
        fill = GrammarMasks._fill

        def timed_fill(masks: GrammarMasks, matchers: list[Any]) -> torch.Tensor:
            began = time.perf_counter()
            try:
                return fill(masks, matchers)
            finally:
                self.add("mask_fill", time.perf_counter() - began)
                with self._lock:
                    self.rows += len(matchers)

        self._replace(GrammarMasks, "_fill", timed_fill)
        apply = PendingMasks.apply

        def timed_apply(pending: PendingMasks, *args: Any) -> None:
            began = time.perf_counter()
            pending.bitmask.result()  # the fill's end; apply's own call then returns at once
            ready = time.perf_counter()
            apply(pending, *args)
            self.add("mask_wait", ready - began)
            self.add("mask_apply", time.perf_counter() - ready)

        self._replace(PendingMasks, "apply", timed_apply)

    def remove(self) -> None:
        while self._undo:
            owner, attr, original = self._undo.pop()
            setattr(owner, attr, original)

    def per_step(self) -> dict[str, Any]:
        steps = self.calls["step"] or 1
        out: dict[str, Any] = {"steps": self.calls["step"], "grammar_rows": self.rows}
        for name in ("step", "model", "sample", "stop_rules", "mask_fill", "mask_wait"):
            out[f"{name}_ms"] = 1e3 * self.seconds[name] / steps
        out["mask_apply_ms"] = 1e3 * self.seconds["mask_apply"] / steps
        parts = ("model", "sample", "stop_rules", "mask_wait", "mask_apply")
        out["other_ms"] = 1e3 * (self.seconds["step"] - sum(self.seconds[k] for k in parts)) / steps
        out["mask_fill_us_per_row"] = 1e6 * self.seconds["mask_fill"] / max(1, self.rows)
        return out


def _median_fields(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def engine_part(args: argparse.Namespace, loaded: LoadedModel, env: Any) -> dict[str, Any]:
    from openai.lib._pydantic import to_strict_json_schema

    engine = Engine(loaded, env.apply(EngineConfig()))
    spec = GrammarSpec.json_schema(to_strict_json_schema(Order))
    prompts = [chat_ids(loaded, p) for p in dict(MODELS)[Order]]
    levels = [int(c) for c in args.concurrency.split(",") if c]
    n_of = {c: max(c, args.requests) for c in levels}
    keys = ("with", "without", "ratio", "ratio_wall", "spread_s", "decode_s", "tokens")
    point: dict[int, dict[str, list[Any]]] = {c: {k: [] for k in keys} for c in levels}
    steps: dict[int, dict[str, list[dict[str, Any]]]] = {
        c: {"with": [], "without": []} for c in levels
    }
    finish: dict[int, Counter[str | None]] = {c: Counter() for c in levels}
    texts: dict[int, list[str]] = {c: [] for c in levels}
    outputs: dict[int, list[list[list[int]]]] = {c: [] for c in levels}
    matched = True
    timers = Timers()

    def pair(c: int) -> tuple[dict[str, Any], dict[str, Any]]:
        timers.reset()
        with_g = run_point(engine, prompts, c, n_of[c], args.temperature, spec, None)
        with_g["steps"] = timers.per_step()
        counts = [len(a.tokens) for a in with_g["answers"]]
        timers.reset()
        without = run_point(engine, prompts, c, n_of[c], args.temperature, spec, counts)
        without["steps"] = timers.per_step()
        nonlocal matched
        matched &= counts == [len(a.tokens) for a in without["answers"]]
        return with_g, without

    # The timers (a few us a step, both modes alike) stay on through every round.
    timers.install(engine)
    try:
        for c in levels:
            t0 = time.perf_counter()
            pair(c)  # warm-up: the grammar compiled, the prompts' blocks cached
            print(f"warm-up c={c}: {time.perf_counter() - t0:.1f} s", flush=True)
        for r in range(args.rounds):
            for c in levels:
                with_g, without = pair(c)
                p = point[c]
                p["with"].append(with_g["decode_tok_s"])
                p["without"].append(without["decode_tok_s"])
                p["ratio"].append(with_g["decode_tok_s"] / without["decode_tok_s"])
                p["ratio_wall"].append(with_g["wall_tok_s"] / without["wall_tok_s"])
                p["spread_s"].append(
                    max(with_g["first_token_spread_s"], without["first_token_spread_s"])
                )
                p["decode_s"].append([with_g["decode_s"], without["decode_s"]])
                p["tokens"].append([len(a.tokens) for a in with_g["answers"]])
                steps[c]["with"].append(with_g["steps"])
                steps[c]["without"].append(without["steps"])
                finish[c].update(a.finish for a in with_g["answers"])
                texts[c] += [a.text for a in with_g["answers"]]
                outputs[c].append([a.tokens for a in with_g["answers"]])
                print(
                    f"round {r + 1} c={c}: with {with_g['decode_tok_s']:.1f} tok/s, without "
                    f"{without['decode_tok_s']:.1f} tok/s, ratio {p['ratio'][-1]:.3f} "
                    f"(wall {p['ratio_wall'][-1]:.3f}); step ms with "
                    f"{with_g['steps']['step_ms']:.2f} without {without['steps']['step_ms']:.2f}",
                    flush=True,
                )
    finally:
        timers.remove()
        engine.shutdown()
    profile = {
        str(c): {mode: _median_fields(runs) for mode, runs in steps[c].items()}
        | {"per_round": steps[c]}
        for c in levels
        if args.rounds
    }
    results: dict[str, Any] = {"levels": {}, "token_counts_matched": matched}
    for c in levels:
        p = point[c]
        tokens = [t for run in p["tokens"] for t in run]
        results["levels"][str(c)] = {
            "requests": n_of[c],
            "with_tok_s": statistics.median(p["with"]),
            "without_tok_s": statistics.median(p["without"]),
            "ratio": statistics.median(p["ratio"]),
            "ratio_wall": statistics.median(p["ratio_wall"]),
            "per_round": {k: p[k] for k in ("with", "without", "ratio", "ratio_wall")},
            "decode_s_per_round": p["decode_s"],
            "max_first_token_spread_s": max(p["spread_s"]),
            "parsed": sum(parses(t) for t in texts[c]),
            "answers": len(texts[c]),
            "finish_reasons": {str(k): v for k, v in finish[c].items()},
            "median_completion_tokens": statistics.median(tokens),
            "same_outputs_every_round": all(o == outputs[c][0] for o in outputs[c]),
        }
    results["profile"] = profile
    return results


# ---- part 2: the SDK against a real server ----------------------------------------------


def _parse_one(client: Any, model: type, prompt: str, seed: int) -> dict[str, Any]:
    import openai

    try:
        r = client.chat.completions.parse(
            model=MODEL_ID, messages=[{"role": "user", "content": prompt}],
            response_format=model, max_completion_tokens=MAX_TOKENS, temperature=0.8,
            seed=seed, extra_headers=NO_CACHE,
        )  # fmt: skip
    except openai.LengthFinishReasonError as exc:  # the SDK refuses to parse a cut answer
        usage = exc.completion.usage
        return {"ok": False, "finish": "length", "tokens": usage and usage.completion_tokens}
    except Exception as exc:  # a ValidationError, an API error: counted, named
        error = f"{type(exc).__name__}: {str(exc)[:300]}"
        return {"ok": False, "finish": None, "tokens": None, "error": error}
    choice = r.choices[0]
    return {
        "ok": isinstance(choice.message.parsed, model),
        "finish": choice.finish_reason,
        "tokens": r.usage.completion_tokens if r.usage else None,
    }


def _json_one(client: Any, prompt: str, seed: int) -> dict[str, Any]:
    try:
        r = client.chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": prompt}],
            response_format={"type": "json_object"}, max_completion_tokens=MAX_TOKENS,
            temperature=0.8, seed=seed, extra_headers=NO_CACHE,
        )  # fmt: skip
    except Exception as exc:  # an API error: counted, named
        error = f"{type(exc).__name__}: {str(exc)[:300]}"
        return {"ok": False, "finish": None, "tokens": None, "error": error, "content": None}
    choice = r.choices[0]
    try:
        ok = isinstance(json.loads(choice.message.content or ""), dict)
    except ValueError:
        ok = False
    return {
        "ok": ok,
        "finish": choice.finish_reason,
        "tokens": r.usage.completion_tokens if r.usage else None,
        "content": choice.message.content,
    }


def _summary(outcomes: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    tokens = [o["tokens"] for o in outcomes if o["tokens"] is not None]
    return {
        "ok": sum(o["ok"] for o in outcomes),
        "requests": len(outcomes),
        "finish_reasons": dict(Counter(str(o["finish"]) for o in outcomes)),
        "errors": dict(Counter(o["error"].split(":")[0] for o in outcomes if o.get("error"))),
        "error_messages": [o["error"] for o in outcomes if o.get("error")],
        "median_completion_tokens": statistics.median(tokens) if tokens else None,
        "hit_max_tokens": sum(o["finish"] == "length" for o in outcomes),
        "hit_max_tokens_parsed": sum(o["finish"] == "length" and o["ok"] for o in outcomes),
        "seconds": seconds,
    }


class Refusals:
    """Counts the gateway's 503s (admission: the engine's KV budget is taken), which
    the SDK retries after the Retry-After they carry."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def hook(self, response: Any) -> None:
        if response.status_code == 503:
            with self._lock:
                self.count += 1


def sdk_part(args: argparse.Namespace, model_path: Path) -> dict[str, Any]:
    import openai

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = Path(tempfile.mkdtemp(prefix="bench-structured-")) / "serve.log"
    cmd = [
        sys.executable, "-m", "gateway.cli", "serve", "--host", "127.0.0.1",
        "--port", str(port), "--model", str(model_path), "--served-model-name", MODEL_ID,
        "--log-level", "warning", "--kv-cache-gb", str(args.kv_cache_gb),
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy(), cwd=ROOT
        )
    results: dict[str, Any] = {"server_log": str(log)}
    try:
        t0 = time.perf_counter()
        wait_until_up(proc, url + "/health", 180, "server", log)
        print(f"server up in {time.perf_counter() - t0:.1f} s", flush=True)
        refusals = Refusals()
        client = openai.OpenAI(
            base_url=url + "/v1",
            api_key="unused",
            max_retries=args.sdk_retries,  # a 503 "at capacity" says retry-after 1 s
            timeout=900,
            http_client=openai.DefaultHttpxClient(event_hooks={"response": [refusals.hook]}),
        )
        with ThreadPoolExecutor(args.sdk_concurrency) as pool:
            for model, prompts in MODELS:
                t0, refusals.count = time.perf_counter(), 0
                outcomes = list(
                    pool.map(
                        lambda i, m=model, ps=prompts: _parse_one(client, m, ps[i], i),
                        range(len(prompts)),
                    )
                )
                results[model.__name__] = _summary(outcomes, time.perf_counter() - t0)
                results[model.__name__]["refused_503_retried"] = refusals.count
                print(f"parse {model.__name__}: {_sdk_line(results[model.__name__])}", flush=True)
            t0, refusals.count = time.perf_counter(), 0
            outcomes = list(
                pool.map(lambda i: _json_one(client, JSON_PROMPTS[i], i), range(len(JSON_PROMPTS)))
            )
        results["json_object"] = _summary(outcomes, time.perf_counter() - t0)
        results["json_object"]["refused_503_retried"] = refusals.count
        results["json_object"]["contents"] = [o["content"] for o in outcomes]
        print(f"json_object: {_sdk_line(results['json_object'])}", flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return results


def _sdk_line(s: dict[str, Any]) -> str:
    return (
        f"{s['ok']}/{s['requests']} parsed, finish {s['finish_reasons']}, median completion "
        f"tokens {s['median_completion_tokens']}, hit max_tokens {s['hit_max_tokens']}"
        + (f" ({s['hit_max_tokens_parsed']} of them parse)" if s["hit_max_tokens"] else "")
        + (f", errors {s['errors']}" if s["errors"] else "")
        + (f", 503s retried {s['refused_503_retried']}" if s.get("refused_503_retried") else "")
        + f" ({s['seconds']:.1f} s)"
    )


# ---- the run ----------------------------------------------------------------------------


def _arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="timed pairs per level (median)")
    ap.add_argument("--concurrency", default="1,16", help="levels, comma-separated")
    ap.add_argument("--requests", type=int, default=4, help="per level at least, in waves")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-sdk", action="store_true", help="the engine part only")
    ap.add_argument("--sdk-concurrency", type=int, default=16, help="SDK requests at a time")
    ap.add_argument("--sdk-retries", type=int, default=100, help="the SDK's max_retries")
    ap.add_argument("--kv-cache-gb", type=float, default=KV_CACHE_GB, help="the server's")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/structured.json")
    return ap.parse_args()


def main() -> None:
    args = _arguments()
    began = time.perf_counter()
    torch.set_num_threads(args.threads)
    env = engine_environment()
    model_path = default_model_path(home=env.home)
    loaded = load_model(model_path, torch.float32, "cpu")
    engine = engine_part(args, loaded, env)
    sdk = None if args.skip_sdk else sdk_part(args, model_path)
    seconds = time.perf_counter() - began
    print("\n" + "\n".join(summary(engine, sdk)) + f"\n\nrun time {seconds:.0f} s")
    write_results(
        args.out,
        {
            "args": vars(args) | {"out": str(args.out)},
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
            "torch_threads": torch.get_num_threads(),
            "engine": engine,
            "sdk": sdk,
            "run_seconds": seconds,
        },
    )


def summary(engine: dict[str, Any], sdk: dict[str, Any] | None) -> list[str]:
    lines = ["grammar cost on decode throughput (Order schema, in-process, median of rounds):"]
    for c, r in engine["levels"].items():
        lines.append(
            f"  c={c:>2}: with {r['with_tok_s']:7.1f} tok/s  without {r['without_tok_s']:7.1f}"
            f" tok/s  with/without {r['ratio']:.3f} (wall {r['ratio_wall']:.3f})  parsed "
            f"{r['parsed']}/{r['answers']}  median tokens {r['median_completion_tokens']}"
            f"  finish {r['finish_reasons']}"
        )
    if engine["levels"]:
        top = engine["levels"][max(engine["levels"], key=int)]
        verdict = "meets" if top["ratio"] >= 0.9 else "MISSES"
        lines.append(f"  bar (grammar costs <= 10% at the top level): {verdict}")
    if not engine["token_counts_matched"]:
        lines.append("  WARNING: an unconstrained run did not decode its constrained count")
    for c, p in engine["profile"].items():
        lines.append(f"where the time goes at c={c} (ms per step, median of rounds):")
        for mode in ("with", "without"):
            s = p[mode]
            lines.append(
                f"  {mode:>7}: step {s['step_ms']:.2f} = model {s['model_ms']:.2f} + sample "
                f"{s['sample_ms']:.2f} + stop rules {s['stop_rules_ms']:.2f} + mask wait "
                f"{s['mask_wait_ms']:.2f} + mask apply {s['mask_apply_ms']:.2f} + other "
                f"{s['other_ms']:.2f} ({s['steps']} steps)"
            )
        w = p["with"]
        lines.append(
            f"  mask fill (worker thread, overlapped with the model): {w['mask_fill_ms']:.2f}"
            f" ms a step, {w['mask_fill_us_per_row']:.0f} us a grammar row"
        )
    if sdk is not None:
        lines.append("through the OpenAI SDK (chat.completions.parse, 20 prompts a model):")
        for model, _ in MODELS:
            lines.append(f"  {model.__name__:>8}: {_sdk_line(sdk[model.__name__])}")
        lines.append(f"  json_object: {_sdk_line(sdk['json_object'])}")
    return lines


if __name__ == "__main__":
    main()
