"""Soak: mixed traffic against a real stack for a while, sampling every minute whether
the gateway's memory, file descriptors and upstream connections level off.

    python bench/soak.py [--minutes 30] [--out bench/results/soak.json]

Stack, on this machine: the bundled engine as a backend (`gateway.cli backend`,
SmolLM2-135M-Instruct, 16 sequences per batch) behind the gateway (`gateway.cli serve`,
default chain: context, exact_cache, routing; head and body timeouts 5 s, bodies up to
1 MB). Traffic: bench/soak_traffic.py (well-behaved chat, cache hits, streams,
conversations, slow readers, hang-ups, bad bodies, half-sent requests).

Every minute, from /proc: the gateway's VmRSS, open descriptors, ESTABLISHED TCP
connections to the backend's port (its socket inodes found in /proc/net/tcp{,6}),
ESTABLISHED client connections and sockets in CLOSE_WAIT; the backend's VmRSS and
descriptors; CPU; and the minute's request outcomes. Once more after the traffic stops
and the keep-alive timeouts have passed ("settled"), and again after one more request
(does the gateway let go of sockets the backend closed meanwhile?). Per series, the
verdict is the growth from the first to the last sample of the second half (minutes
ceil(N/2)..N). There is no peer: the process is compared with itself over time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import soak_traffic as traffic
from bench.output import write_results
from bench.proc_sample import sample

ROOT = Path(__file__).resolve().parents[1]
HOST = traffic.HOST
SERVED = "SmolLM2-135M-Instruct"
BACKEND_FLAGS = ["--max-num-seqs", "16", "--log-level", "warning"]
TIMEOUT_S = 5.0  # [server] header_timeout_s and body_timeout_s
SETTLE_S = 15.0  # after the traffic: past keep-alive (5 s) on both hops
SEED = 0


# ---- the stack ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def start(cmd: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[3]} exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(f"http://{HOST}:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"{cmd[3]} did not answer /health on port {port}; see {log}")


def gateway_config(backend_port: int) -> str:
    return f"""[server]
header_timeout_s = {TIMEOUT_S}
body_timeout_s = {TIMEOUT_S}
max_body_mb = 1

[[groups]]
name = "engine"
backends = [{{url = "http://{HOST}:{backend_port}/v1"}}]

[[models]]
name = "{traffic.MODEL}"
groups = ["engine"]
upstream_model = "{SERVED}"
"""


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# ---- the run -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stack:
    procs: dict[str, subprocess.Popen[bytes]]  # "backend", "gateway"
    gw_port: int
    up_port: int

    def sample(self) -> dict[str, Any]:
        pid = {k: p.pid for k, p in self.procs.items()}
        return sample(pid["gateway"], pid["backend"], self.gw_port, self.up_port)

    def dead(self) -> list[str]:
        return [k for k, p in self.procs.items() if p.poll() is not None]


@dataclass(slots=True)
class Run:
    samples: list[dict[str, Any]] = field(default_factory=list)
    settled: dict[str, Any] | None = None
    after_probe: dict[str, Any] | None = None
    totals: dict[str, dict[str, int]] = field(default_factory=dict)
    traffic_s: float = 0.0
    stopped: str = ""  # why the run ended early, if it did


async def soak(run: Run, minutes: int, stack: Stack) -> None:
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=16)
    timeout = httpx.Timeout(traffic.CLIENT_TIMEOUT_S, connect=10)
    base = f"http://{HOST}:{stack.gw_port}"
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout) as client:
        tally = traffic.Tally()
        ctx = traffic.Ctx(stack.gw_port, client, tally, wait_s=3 * TIMEOUT_S)
        run.samples.append({"minute": 0, "t_s": 0.0, **stack.sample()})
        print_row(run.samples[0])
        began = time.monotonic()
        tasks = traffic.start(ctx, SEED)
        try:
            for minute in range(1, minutes + 1):
                await asyncio.sleep(max(0.0, began + 60 * minute - time.monotonic()))
                if dead := stack.dead():
                    run.stopped = f"{', '.join(dead)} exited before minute {minute}"
                    break
                by_kind, cache = tally.take()
                now = {"minute": minute, "t_s": round(time.monotonic() - began, 1),
                       **stack.sample(), "outcomes": merged(by_kind), "by_kind": by_kind,
                       "greedy_x_cache": cache}  # fmt: skip
                for proc in ("gateway", "backend"):  # the share of one core, this minute
                    used = now[proc]["cpu_s"] - run.samples[-1][proc]["cpu_s"]
                    now[proc]["cpu_pct"] = round(100 * used / (now["t_s"] - run.samples[-1]["t_s"]))
                run.samples.append(now)
                print_row(now)
        finally:
            run.traffic_s = time.monotonic() - began
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            run.totals = {k: dict(v) for k, v in sorted(tally.total.items())}
        if not run.stopped:
            await settle(run, client, stack)


async def settle(run: Run, client: httpx.AsyncClient, stack: Stack) -> None:
    """After the traffic: a sample once the keep-alive timeouts have passed, and another
    after one uncached request (does the gateway let go of sockets the backend closed?)."""
    await asyncio.sleep(SETTLE_S)
    run.settled = stack.sample()
    try:
        r = await client.post(traffic.CHAT, json=traffic.chat("Say hi.", 8, 0.7))
        status = str(r.status_code)
    except httpx.HTTPError as exc:
        status = traffic.failure(exc)
    await asyncio.sleep(0.5)
    run.after_probe = {"status": status, **stack.sample()}


def merged(by_kind: dict[str, dict[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for outcomes in by_kind.values():
        total.update(outcomes)
    return dict(sorted(total.items()))


SERIES = [
    ("gateway", "rss_mb"), ("gateway", "fds"), ("gateway", "upstream_conns"),
    ("gateway", "client_conns"), ("gateway", "close_wait"),
    ("backend", "rss_mb"), ("backend", "fds"),
]  # fmt: skip


def verdicts(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Per series: growth over the first half (warm-up included) and over the second
    half (first to last sample of minutes ceil(N/2)..N), and the second half's range."""
    minutes = [s for s in samples if s["minute"] > 0]
    if len(minutes) < 2:
        return {}
    half = minutes[(len(minutes) - 1) // 2 :]
    out = {}
    for proc, key in SERIES:
        values = [s[proc][key] for s in half]
        first, last = values[0], values[-1]
        out[f"{proc}.{key}"] = {
            "baseline": samples[0][proc][key],
            "first_half_growth": round(first - minutes[0][proc][key], 2),
            "second_half": {"from_minute": half[0]["minute"], "to_minute": half[-1]["minute"]},
            "first": first,
            "last": last,
            "growth": round(last - first, 2),
            "growth_per_minute": round((last - first) / max(1, len(half) - 1), 3),
            "min": min(values),
            "max": max(values),
        }
    return out


# ---- report ------------------------------------------------------------------------------

COLUMNS = ["gw MB", "gw fd", "gw up", "gw cli", "gw cw", "be MB", "be fd", "gw cpu%", "be cpu%"]
OUTCOME_COLUMNS = ["reqs", "200", "4xx", "5xx", "cut", "disc", "t/o", "other"]


def outcome_cells(outcomes: dict[str, int]) -> list[int]:
    cells = Counter[str]()
    for outcome, n in outcomes.items():
        col = {"200": "200", "cut": "cut", "disconnected": "disc", "timeout": "t/o"}.get(outcome)
        if col is None and outcome[:3].isdigit() and outcome[0] in "45":
            col = f"{outcome[0]}xx"
        cells[col or "other"] += n
    return [sum(outcomes.values())] + [cells[c] for c in OUTCOME_COLUMNS[1:]]


def cell(v: object, width: int) -> str:
    return f"{v:>{width}.1f}" if isinstance(v, float) else f"{v!s:>{width}}"


def header() -> None:
    print(f"{'min':>4}" + "".join(f"{c:>8}" for c in COLUMNS + OUTCOME_COLUMNS), flush=True)


def print_row(s: dict[str, Any]) -> None:
    vals = [s[proc][key] for proc, key in SERIES]
    vals += [s[proc].get("cpu_pct", "") for proc in ("gateway", "backend")]
    cells = [cell(v, 8) for v in vals]
    outs = outcome_cells(s["outcomes"]) if "outcomes" in s else [""] * len(OUTCOME_COLUMNS)
    print(f"{s['minute']:>4}" + "".join(cells) + "".join(f"{v:>8}" for v in outs), flush=True)


def report(res: dict[str, Any]) -> None:
    settled = res["settled"]
    if settled is not None:
        print_row({"minute": "set", **settled})
    probe = res["after_probe"]
    if probe is not None:
        print_row({"minute": "+1", **probe})
        print(f"(set: {SETTLE_S:.0f} s after the traffic stopped; +1: then one uncached "
              f"request, answered {probe['status']})")  # fmt: skip
    print("\ncolumns: gw/be = gateway/backend; MB = VmRSS; fd = open descriptors; up = "
          "ESTABLISHED to the backend; cli = ESTABLISHED clients; cw = CLOSE_WAIT; "
          "cpu% = one core's share over the minute")  # fmt: skip
    if res["verdicts"]:
        v0 = next(iter(res["verdicts"].values()))["second_half"]
        print(f"\ngrowth, second half (minute {v0['from_minute']} -> {v0['to_minute']}):")
        print(f"{'series':<24}{'base':>9}{'1st half':>9}{'first':>9}{'last':>9}"
              f"{'growth':>9}{'/min':>9}{'min':>9}{'max':>9}")  # fmt: skip
        keys = ("baseline", "first_half_growth", "first", "last", "growth",
                "growth_per_minute", "min", "max")  # fmt: skip
        for name, v in res["verdicts"].items():
            print(f"{name:<24}" + "".join(cell(v[k], 9) for k in keys))
    print("\noutcomes over the run, by client:")
    for kind, outcomes in res["totals"].items():
        print(f"  {kind:<20} " + ", ".join(f"{o}: {n}" for o, n in outcomes.items()))
    if res["stopped"]:
        print(f"\nSTOPPED EARLY: {res['stopped']}")
    for name, lines in res["log_problems"].items():
        if lines:
            print(f"\n{name} log: {len(lines)} warning/error lines, first: {lines[0]}")


def log_problems(log: Path) -> list[str]:
    text = log.read_text(errors="replace").splitlines() if log.exists() else []
    return [ln for ln in text if any(w in ln for w in ("WARNING", "ERROR", "Traceback"))]


def machine() -> dict[str, Any]:
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return {
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "mem_gb": round(int(mem) / 2**20, 1),
        "python": platform.python_version(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=int, default=30)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/soak.json")
    args = ap.parse_args()

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop the stack as Ctrl-C does
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    logs = {"backend": tmp / "backend.log", "gateway": tmp / "gateway.log"}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    run = Run()
    model = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "models", "path"],
        capture_output=True, text=True, cwd=ROOT, check=True,
    ).stdout.strip()  # fmt: skip
    up_port, gw_port = free_port(), free_port()
    cfg = tmp / "gateway.toml"
    cfg.write_text(gateway_config(up_port))
    cli = [sys.executable, "-m", "gateway.cli"]
    try:
        procs["backend"] = start(
            [*cli, "backend", "--port", str(up_port), *BACKEND_FLAGS], up_port, logs["backend"]
        )
        gw_cmd = [*cli, "serve", "--config", str(cfg), "--port", str(gw_port)]
        procs["gateway"] = start([*gw_cmd, "--log-level", "warning"], gw_port, logs["gateway"])
        setup_s = time.monotonic() - t0
        print(f"stack up in {setup_s:.0f} s (logs in {tmp}); {args.minutes} min of traffic\n")
        header()
        try:
            asyncio.run(soak(run, args.minutes, Stack(procs, gw_port, up_port)))
        except KeyboardInterrupt:
            run.stopped = "interrupted (Ctrl-C or SIGTERM)"
    finally:
        stop(list(procs.values())[::-1])

    result = {
        "setup": {
            "machine": machine(),
            "model": {"path": model, "served_name": SERVED, "backend_flags": BACKEND_FLAGS},
            "gateway_config": cfg.read_text(),
            "minutes": args.minutes,
            "setup_s": round(setup_s, 1),
            "traffic_s": round(run.traffic_s, 1),
            "settle_s": SETTLE_S,
            "total_s": round(time.monotonic() - t0, 1),
            "seed": SEED,
            "traffic": traffic.describe(),
        },
        "samples": run.samples,
        "settled": run.settled,
        "after_probe": run.after_probe,
        "verdicts": verdicts(run.samples),
        "totals": run.totals,
        "stopped": run.stopped,
        "log_problems": {k: log_problems(p)[:20] for k, p in logs.items()},
    }
    report(result)
    write_results(args.out, result)


if __name__ == "__main__":
    main()
