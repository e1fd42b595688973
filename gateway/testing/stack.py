"""The compose stack's topology as local processes, for machines without Docker (`make
stack`) and for the stack tests: one real Redis, N engine backends (`llm-gateway
backend`) and M gateway replicas (`llm-gateway serve`) sharing the Redis, routing one
model over every backend with a chosen policy (prefix affinity by default).

    python -m gateway.testing.stack [--backends 2] [--gateways 2] [--port 8000]

prints the URLs and runs until interrupted. `Stack` does the same from Python; its
processes are stopped on `close()` (or leaving the `with` block)."""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx
from prometheus_client.parser import text_string_to_metric_families

from gateway.testing.processes import wait_until_up
from gateway.testing.redis_server import RedisProcess, free_port

MODEL = "SmolLM2-135M-Instruct"


class Stack:
    def __init__(
        self,
        backends: int = 2,
        gateways: int = 2,
        routing: str = "prefix_affinity",
        first_port: int | None = None,
        backend_flags: tuple[str, ...] = (),
        folder: Path | None = None,
        aliases: dict[str, str] | None = None,
        per_backend_flags: list[tuple[str, ...]] | None = None,
    ) -> None:
        self.routing = routing
        # More names for the same model, each with its own routing policy (name -> policy):
        # policies compared side by side on the same backends.
        self.aliases = aliases or {}
        self.backend_flags = backend_flags
        self.per_backend_flags = per_backend_flags or []  # backend i's own, after the rest
        self.folder = folder or Path(tempfile.mkdtemp(prefix="llm-gateway-stack-"))
        self._ports = iter(range(first_port, first_port + 100)) if first_port else None
        self.redis = RedisProcess()
        self.backend_urls: list[str] = []
        self.gateway_urls: list[str] = []
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._counts = (backends, gateways)

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self, seconds: float = 180.0) -> None:
        backends, gateways = self._counts
        try:
            self.redis.start()
            # The gateways take the first ports (the one clients use: 8000 with --port 8000).
            gateway_ports = [self._next_port() for _ in range(gateways)]
            for i in range(backends):
                port = self._next_port()
                own = self.per_backend_flags[i] if i < len(self.per_backend_flags) else ()
                cmd = ["backend", "--host", "127.0.0.1", "--port", str(port)]
                cmd += [*self.backend_flags, *own]
                self._spawn(f"backend-{i + 1}", cmd)
                self.backend_urls.append(f"http://127.0.0.1:{port}")
            config = self.folder / "gateway.toml"
            config.write_text(self.gateway_config())
            for i, port in enumerate(gateway_ports):
                args = ["serve", "--config", str(config), "--port", str(port)]
                self._spawn(f"gateway-{i + 1}", args)
                self.gateway_urls.append(f"http://127.0.0.1:{port}")
            deadline = time.monotonic() + seconds
            for name, url in self.urls().items():
                left = max(0.0, deadline - time.monotonic())
                wait_until_up(
                    self.processes[name], url + "/health", left, name, self.log_path(name)
                )
        except BaseException:
            self.close()
            raise

    def urls(self) -> dict[str, str]:
        """Process name -> base URL (backends, then gateways)."""
        return dict(zip(self.processes, [*self.backend_urls, *self.gateway_urls], strict=True))

    def gateway_config(self) -> str:
        backends = ", ".join(f'{{url = "{url}/v1"}}' for url in self.backend_urls)
        text = (
            '[store]\nkind = "redis"\n'
            f'url = "{self.redis.url}"\n'
            f'[[groups]]\nname = "engines"\nbackends = [{backends}]\n'
            f'[[models]]\nname = "{MODEL}"\ngroups = ["engines"]\nrouting = "{self.routing}"\n'
        )
        for alias, routing in self.aliases.items():
            text += f'[[models]]\nname = "{alias}"\nupstream_model = "{MODEL}"\n'
            text += f'groups = ["engines"]\nrouting = "{routing}"\n'
        return text

    def log_path(self, name: str) -> Path:
        return self.folder / f"{name}.log"

    def kill(self, name: str) -> None:
        """Kills one process at once (SIGKILL): a backend that dies under load."""
        self.processes[name].kill()
        self.processes[name].wait()

    def close(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.redis.stop()

    def _next_port(self) -> int:
        return next(self._ports) if self._ports is not None else free_port()

    def _spawn(self, name: str, args: list[str]) -> None:
        cmd = [sys.executable, "-m", "gateway.cli", *args, "--log-level", "warning"]
        with self.log_path(name).open("wb") as out:  # the child keeps its copy
            self.processes[name] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)


def scrape(url: str, **labels: str) -> dict[str, float]:
    """A process's /metrics, each sample name summed over the samples that carry `labels`
    (`vllm:prefix_cache_hits_total` -> all models' hits; outcome="retry" -> retries)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if labels.items() <= sample.labels.items():
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", type=int, default=2)
    ap.add_argument("--gateways", type=int, default=2)
    ap.add_argument("--routing", default="prefix_affinity")
    ap.add_argument("--port", type=int, default=8000, help="the first port; the rest follow")
    args = ap.parse_args()
    with Stack(args.backends, args.gateways, args.routing, args.port) as stack:
        print(f"redis     {stack.redis.url}")
        for name, url in stack.urls().items():
            print(f"{name:<10}{url}  (log: {stack.log_path(name)})")
        print(f"model     {MODEL}; Ctrl-C stops the stack", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
