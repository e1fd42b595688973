"""The adaptive speculation planner over many engine start-ups, quiet and under a
background CPU load present from before each start-up: adaptive vs fixed k vs off, same
process, same prompts, interleaved.

    python bench/speculation_load.py [--startups 4] [--load 0,1] [--set heldout]

Each start-up builds a fresh adaptive engine (so its start-up calibration runs under the
load of that moment) beside fixed-k and off engines, then runs every prompt of the set
`--repeats` times per mode, the modes interleaved, greedy (outputs must match off).
Reported per prompt and start-up: ratios of the median decode tokens/s, adaptive/off,
fixed/off and adaptive/fixed, and the planner's reasons. The issue's bar: adaptive
within 10% of fixed k at batch 1 on each prompt, quiet and loaded.

Prompt sets: `tune` (what the planner may be tuned on), `heldout` (written apart, used
to find the start-up collapse this bench was made for) and `report` (written after the
last change to the planner, for the report only). `--load N` starts N processes
spinning on a core each before the engine starts, kept for the whole start-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.engine import Engine, EngineConfig
from backend.loading.model_store import default_model_path
from backend.loading.weights import load_model
from backend.speculative import SpeculativeConfig
from bench.speculative import chat_ids, ours
from gateway.config import engine_environment

TUNE = {
    "copy": "Copy this sentence exactly: The quick brown fox jumps over the lazy dog near "
    "the quiet river bank while the farmer watches from the old wooden gate.",
    "list": "List the days of the week, then list them again in reverse order.",
    "story": "Tell me a two-sentence story about a robot.",
}
HELDOUT = {
    "rename": (
        "Rewrite this Python function, renaming the variable `total` to `running_sum`, "
        "and change nothing else:\n\n"
        "def mean_of_positive(values):\n"
        "    total = 0\n"
        "    count = 0\n"
        "    for v in values:\n"
        "        if v > 0:\n"
        "            total += v\n"
        "            count += 1\n"
        "    if count == 0:\n"
        "        return 0.0\n"
        "    return total / count\n"
    ),
    "verbatim": (
        "Copy the following paragraph word for word:\n\n"
        "Bees leave the hive at first light and fly to the clover fields beyond the "
        "orchard. Each one visits hundreds of flowers before it returns, heavy with "
        "pollen, to the same small door in the wooden box. Inside, other bees fan their "
        "wings to keep the honey cool, and the queen lays her eggs in the dark."
    ),
    "poem": "Write a short poem about autumn rain on a city street.",
}
# Written after the planner's last change, used for nothing but the report.
REPORT = {
    "sql": (
        "Rewrite this SQL query with the table `orders` renamed to `purchases`, and change "
        "nothing else:\n\n"
        "SELECT customer_id, COUNT(*) AS n, SUM(amount) AS total\n"
        "FROM orders\n"
        "WHERE created_at >= '2024-01-01' AND status = 'paid'\n"
        "GROUP BY customer_id\n"
        "HAVING SUM(amount) > 100\n"
        "ORDER BY total DESC\n"
        "LIMIT 20;"
    ),
    "steps": (
        "Repeat these instructions exactly as written:\n\n"
        "1. Turn off the water at the main valve under the sink.\n"
        "2. Place a bucket under the trap and loosen both slip nuts by hand.\n"
        "3. Remove the trap, empty it, and clean it with a bottle brush.\n"
        "4. Refit the trap, tighten the nuts, and turn the water back on.\n"
        "5. Run the tap for a minute and check the joints for drips."
    ),
    "limerick": "Write a limerick about a cat who sleeps on a piano.",
}
SETS = {"tune": TUNE, "heldout": HELDOUT, "report": REPORT}
SPIN = "while True:\n    pass\n"


def engines(loaded: Any, env: Any, k: int) -> dict[str, Engine]:
    def spec(adaptive: bool) -> SpeculativeConfig:
        return SpeculativeConfig(num_speculative_tokens=k, adaptive_speculation=adaptive)

    return {
        "off": Engine(loaded, env.apply(EngineConfig())),
        "fixed": Engine(loaded, env.apply(EngineConfig(speculative=spec(False)))),
        "adaptive": Engine(loaded, env.apply(EngineConfig(speculative=spec(True)))),
    }


def plan_reasons(engine: Engine) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in engine.metrics.registry.collect():
        for s in family.samples:
            if s.name.endswith("spec_decode_plans_total"):
                out[s.labels["reason"]] = out.get(s.labels["reason"], 0) + s.value
    return out


def one_startup(loaded: Any, env: Any, args: argparse.Namespace, load: int) -> dict[str, Any]:
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(load)]
    try:
        time.sleep(0.5 if load else 0.0)  # the load is there before the engines start
        built = engines(loaded, env, args.k)
        prompts = {n: chat_ids(loaded, t) for n, t in SETS[args.set].items()}
        rates: dict[str, dict[str, float]] = {}
        same: dict[str, bool] = {}
        for name, ids in prompts.items():
            outs, timed = {}, {mode: [] for mode in built}
            for _ in range(args.repeats):  # modes interleaved: a burst falls on all alike
                for mode, engine in built.items():
                    outs[mode], rate = ours(engine, ids, args.max_tokens)
                    timed[mode].append(rate)
            rates[name] = {mode: statistics.median(r) for mode, r in timed.items()}
            same[name] = outs["adaptive"] == outs["off"] == outs["fixed"]
        reasons = plan_reasons(built["adaptive"])
        for engine in built.values():
            engine.shutdown()
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    return {"load": load, "rates": rates, "same_output": same, "plan_reasons": reasons}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--startups", type=int, default=4, help="per load level")
    ap.add_argument("--load", default="0,1", help="background spinners, per level")
    ap.add_argument("--set", choices=sorted(SETS), default="heldout")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="runs per prompt and mode (median)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench/results/speculation_load.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    env = engine_environment()
    loaded = load_model(default_model_path(home=env.home), torch.float32, "cpu")
    runs = []
    for load in [int(v) for v in args.load.split(",")]:
        for i in range(args.startups):
            run = one_startup(loaded, env, args, load)
            runs.append(run)
            print(_line(i, run), flush=True)
    worst = min(
        r["rates"][p]["adaptive"] / r["rates"][p]["fixed"] for r in runs for p in r["rates"]
    )
    print(f"\nworst adaptive/fixed over {len(runs)} start-ups and every prompt: {worst:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "runs": runs}))
    print(f"wrote {args.out}")


def _line(i: int, run: dict[str, Any]) -> str:
    cells = []
    for name, r in run["rates"].items():
        cells.append(
            f"{name} a/off {r['adaptive'] / r['off']:.2f} k/off {r['fixed'] / r['off']:.2f}"
            f" a/k {r['adaptive'] / r['fixed']:.2f}"
        )
    med = statistics.median(r["adaptive"] / r["fixed"] for r in run["rates"].values())
    return (
        f"load {run['load']} start-up {i + 1}: "
        + "; ".join(cells)
        + f" | median a/k {med:.2f} | plans {run['plan_reasons']}"
        + ("" if all(run["same_output"].values()) else " | OUTPUT DIFFERS")
    )


if __name__ == "__main__":
    main()
