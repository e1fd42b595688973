"""Gateway overhead against a fast mock upstream on loopback: direct vs llm-gateway
(empty chain, default chain) vs LiteLLM's proxy, in the same run.

    python bench/overhead.py [--rounds 3] [--no-litellm] [--no-rps] [--cells stream]
        [--peer NAME=SOURCE_TREE ...] [--clients httpx,aiohttp]

Every target proxies the same mock OpenAI server (gateway/testing/mock_upstream.py,
8 chunks per answer). Rounds interleave the targets so machine noise hits all alike;
each cell (non-streaming / streaming x 1 / 16 concurrent clients) reports the added
latency: the target's p50 (p99) minus direct's p50 (p99) in the same round, median over
rounds. Then, per target, an open-loop step test: the highest request rate whose p99
stays within twice its p99 at the lowest rate. LiteLLM runs from its own virtualenv
(.venv-litellm, created with `pip install 'litellm[proxy]'` when missing); if it cannot
be installed the report says so. `--peer` adds the gateway of another source tree (a
git worktree of an earlier commit, say) as one more target, run with this tree's
virtualenv and the default chain: before/after figures from one run. Client:
bench/loadgen.py (raw asyncio HTTP/1.1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import Result, build_request, closed_loop, open_loop
from bench.output import write_results

ROOT = Path(__file__).resolve().parents[1]
# LiteLLM refuses to start without a master key; every target gets the same header.
API_KEY = "sk-bench-7f3a9c2e5b814d6a0e9f1c3b5a7d2e4f"
LITELLM_VENV = ROOT / ".venv-litellm"
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_http(port: int, path: str, proc: subprocess.Popen[bytes], seconds: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            httpx.get(f"http://{HOST}:{port}{path}", timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing answered on port {port}")


def start(
    cmd: list[str],
    port: int,
    path: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=cwd
    )
    wait_http(port, path, proc)
    return proc


def ensure_litellm() -> tuple[Path | None, str]:
    exe = LITELLM_VENV / "bin" / "litellm"
    if exe.exists():
        return exe, ""
    try:
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run(
            [str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"],
            check=True, capture_output=True, timeout=900,
        )  # fmt: skip
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"cannot install litellm[proxy] in {LITELLM_VENV}: {exc}"
    return (exe, "") if exe.exists() else (None, "litellm installed but its CLI is missing")


def litellm_version() -> str:
    out = subprocess.run(
        [str(LITELLM_VENV / "bin" / "pip"), "show", "litellm"], capture_output=True, text=True
    ).stdout
    return next(
        (ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Version:")),
        "?",
    )


def pct(r: Result, p: int) -> float:
    return (
        statistics.quantiles(r.latencies, n=100)[p - 1] * 1e3
        if len(r.latencies) > 1
        else float("nan")
    )


async def highest_rps(port: int, raw: bytes, seconds: float, top: float) -> dict[str, Any]:
    rate, base, best, steps = 200.0, None, 0.0, []
    while rate <= top:
        r = await open_loop(HOST, port, raw, rate, seconds)
        p99 = pct(r, 99)
        achieved = len(r.latencies) / r.elapsed
        steps.append({"rate": rate, "p99_ms": p99, "achieved": achieved, "errors": r.errors})
        base = p99 if base is None else base
        if r.errors or p99 > 2 * base or achieved < 0.9 * rate:
            break
        best = rate
        rate *= 1.5
    return {"highest_rps": best, "base_p99_ms": base, "steps": steps}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=400, help="per client count 1 cell")
    ap.add_argument("--requests-16", type=int, default=3200)
    ap.add_argument("--no-litellm", action="store_true")
    ap.add_argument("--no-rps", action="store_true")
    ap.add_argument("--rps-seconds", type=float, default=2.0)
    ap.add_argument("--rps-top", type=float, default=20000)
    ap.add_argument("--cells", choices=["all", "json", "stream"], default="all")
    ap.add_argument(
        "--clients", default="",
        help="also run the default chain with these upstream HTTP clients, comma-separated "
        "(httpx, aiohttp: see gateway/upstreams/clients.py); the plain targets use lean",
    )  # fmt: skip
    ap.add_argument(
        "--peer", action="append", default=[], metavar="NAME=DIR",
        help="also run the gateway from source tree DIR (default chain), labelled NAME",
    )  # fmt: skip
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/overhead.json")
    return ap.parse_args()


def gateway_config(upstream: str, extra: str = "", group: str = "") -> str:
    return (
        f'{extra}[[groups]]\nname = "mock"\nbackends = [{{url = "{upstream}"}}]\n{group}'
        '[[models]]\nname = "m"\ngroups = ["mock"]\n'
    )


def start_gateway(
    tmp: Path, config: str, tree: Path | None = None, log_level: str = "warning"
) -> tuple[subprocess.Popen[bytes], int]:
    """`llm-gateway serve` with `config`, from this tree or from `tree`. At `warning` the
    access log is off; at `info` (the default) it writes a line per request."""
    port = free_port()
    cfg = tmp / f"gw{port}.toml"
    cfg.write_text(config)
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(cfg)]
    cmd += ["--port", str(port), "--log-level", log_level]
    if tree is None:
        return start(cmd, port, "/health"), port
    root = tree.resolve()  # `-m` imports from the working directory first
    env = os.environ | {"PYTHONPATH": str(root)}
    return start(cmd, port, "/health", env, cwd=root), port


def start_targets(
    args: argparse.Namespace, tmp: Path, upstream: str, procs: list[subprocess.Popen[bytes]]
) -> tuple[dict[str, int], str]:
    """label -> port of everything measured next to the mock (`direct`), and what became
    of LiteLLM."""
    targets: dict[str, int] = {}
    for label, extra in (
        ("llm-gateway (empty chain)", "plugins = []\n"),
        ("llm-gateway (default chain)", ""),
    ):
        proc, targets[label] = start_gateway(tmp, gateway_config(upstream, extra))
        procs.append(proc)
    # What `llm-gateway serve` does out of the box: INFO, an access-log line per request.
    label = "llm-gateway (default chain, access log)"
    proc, targets[label] = start_gateway(tmp, gateway_config(upstream), log_level="info")
    procs.append(proc)
    for client in [c for c in args.clients.split(",") if c]:
        config = gateway_config(upstream, group=f'http_client = "{client}"\n')
        try:
            proc, targets[f"llm-gateway (default, {client})"] = start_gateway(tmp, config)
            procs.append(proc)
        except RuntimeError as exc:
            print(f"client {client}: did not start: {exc}", flush=True)
    for peer in args.peer:
        label, _, tree = peer.partition("=")
        config = gateway_config(upstream)
        proc, targets[f"{label} (default chain)"] = start_gateway(tmp, config, Path(tree))
        procs.append(proc)
    litellm_note = "skipped (--no-litellm)"
    if not args.no_litellm:
        litellm_note = start_litellm(tmp, upstream, targets, procs)
    return targets, litellm_note


def start_litellm(
    tmp: Path, upstream: str, targets: dict[str, int], procs: list[subprocess.Popen[bytes]]
) -> str:
    exe, why = ensure_litellm()
    if exe is None:
        return why
    port = free_port()
    cfg = tmp / "litellm.yaml"
    cfg.write_text(
        "model_list:\n  - model_name: m\n    litellm_params:\n"
        f"      model: openai/m\n      api_base: {upstream}\n      api_key: sk-mock\n"
        "litellm_settings:\n  telemetry: false\n"
    )
    env = os.environ | {
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_MASTER_KEY": API_KEY,
    }
    try:
        cmd = [str(exe), "--config", str(cfg), "--port", str(port), "--num_workers", "1"]
        procs.append(start(cmd, port, "/health/liveliness", env))
    except RuntimeError as exc:
        return f"did not start: {exc}"
    targets[f"LiteLLM proxy {litellm_version()}"] = port
    return "ran"


def raw_request(port: int, stream: bool) -> bytes:
    body: dict[str, Any] = {
        "model": "m",
        "messages": [{"role": "user", "content": "hello"}],
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    auth = {"authorization": f"Bearer {API_KEY}"}
    return build_request(HOST, port, "/v1/chat/completions", json.dumps(body).encode(), auth)


def run_rounds(
    args: argparse.Namespace, targets: dict[str, int]
) -> dict[str, dict[str, list[dict[str, float]]]]:
    """Every cell, every target, interleaved, `args.rounds` times."""
    kinds = {"all": (False, True), "json": (False,), "stream": (True,)}[args.cells]
    cells = [(stream, clients) for stream in kinds for clients in (1, 16)]
    runs: dict[str, dict[str, list[dict[str, float]]]] = {}
    for r in range(args.rounds):
        for stream, clients in cells:
            cell = f"{'stream' if stream else 'json'} x{clients}"
            n = args.requests if clients == 1 else args.requests_16
            for name, port in targets.items():
                res = asyncio.run(closed_loop(HOST, port, raw_request(port, stream), clients, n))
                runs.setdefault(cell, {}).setdefault(name, []).append(
                    {"p50": pct(res, 50), "p99": pct(res, 99), "errors": res.errors,
                     "rps": len(res.latencies) / res.elapsed}
                )  # fmt: skip
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    return runs


def main() -> None:
    args = parse_args()
    procs: list[subprocess.Popen[bytes]] = []
    tmp = Path(tempfile.mkdtemp(prefix="overhead-"))
    try:
        mock_port = free_port()
        procs.append(start([sys.executable, "-m", "gateway.testing.mock_upstream", "--port",
                            str(mock_port), "--chunks", "8"], mock_port, "/v1/models"))  # fmt: skip
        upstream = f"http://{HOST}:{mock_port}/v1"
        others, litellm_note = start_targets(args, tmp, upstream, procs)
        targets = {"direct": mock_port, **others}
        runs = run_rounds(args, targets)
        rps: dict[str, Any] = {}
        if not args.no_rps:
            for name, port in targets.items():
                rps[name] = asyncio.run(
                    highest_rps(port, raw_request(port, False), args.rps_seconds, args.rps_top)
                )
                print(f"rps {name}: {rps[name]['highest_rps']:.0f}", flush=True)
        result = {
            "setup": {
                "cpu": platform.processor() or platform.machine(),
                "cores": os.cpu_count(),
                "rounds": args.rounds,
                "litellm": litellm_note,
                "python": platform.python_version(),
            },
            "runs": runs,
            "added_ms": added(runs),
            "highest_rps_before_p99_doubles": rps,
        }  # fmt: skip
        report(result)
        write_results(args.out, result)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def added(
    runs: dict[str, dict[str, list[dict[str, float]]]],
) -> dict[str, dict[str, dict[str, float]]]:
    """Per cell and target: median over rounds of (target - direct) at p50 and p99."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for cell, per in runs.items():
        direct = per["direct"]
        for name, rounds in per.items():
            if name == "direct":
                continue
            out.setdefault(cell, {})[name] = {
                q: statistics.median(t[q] - d[q] for t, d in zip(rounds, direct, strict=True))
                for q in ("p50", "p99")
            }
    return out


def report(res: dict[str, Any]) -> None:
    print(
        f"\nadded latency vs direct, ms (median over {res['setup']['rounds']} rounds); "
        f"LiteLLM: {res['setup']['litellm']}"
    )
    print(f"{'cell':<11}{'target':<34}{'added p50':>10}{'added p99':>11}{'direct p50':>12}")
    for cell, per in res["added_ms"].items():
        d50 = statistics.median(x["p50"] for x in res["runs"][cell]["direct"])
        for name, a in per.items():
            print(f"{cell:<11}{name:<34}{a['p50']:>10.3f}{a['p99']:>11.3f}{d50:>12.3f}")
    lite = [n for n in next(iter(res["added_ms"].values())) if n.startswith("LiteLLM")]
    if lite:
        print("\nLiteLLM added / llm-gateway (default chain) added, p50:")
        for cell, per in res["added_ms"].items():
            ours = per["llm-gateway (default chain)"]["p50"]
            print(f"  {cell:<10} {per[lite[0]]['p50'] / ours:6.1f}x")
    if res["highest_rps_before_p99_doubles"]:
        print("\nhighest open-loop rate before p99 doubles (non-streaming):")
        for name, r in res["highest_rps_before_p99_doubles"].items():
            print(
                f"  {name:<34} {r['highest_rps']:8.0f} req/s   "
                f"(p99 at 200 req/s {r['base_p99_ms']:.2f} ms)"
            )


if __name__ == "__main__":
    main()
