"""llama.cpp as a peer in its own process: the model loaded once, commands as JSON lines.

llama-cpp-python lives in its own virtual environment and never loads into the
benchmark's. That environment's interpreter runs this file as a script,

    /path/to/llama-venv/bin/python bench/llama_cpp_worker.py --model M.gguf --threads 2 --ctx 8192

so it imports nothing but the standard library and llama_cpp (no torch, nothing from the
repository). On start it answers one line, {"version", "before_load", "after_load"}
(resident memory around the load); then one line per command read from stdin:

    {"cmd": "complete", "prompt": [ids], "max_tokens": n}  -> {"ttft", "total", "text",
                                                               "finish_reason"}
    {"cmd": "tokenize", "text": "..."}                     -> {"ids": [...]}
    {"cmd": "memory"}                                      -> proc_memory() of this process

It exits when stdin closes. LlamaPeer is the other end, used by bench/quantized.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TextIO

# Resident now (anonymous memory + file pages mapped in, such as an mmapped GGUF), peak.
PROC_STATUS_FIELDS = ("VmRSS", "RssAnon", "RssFile", "VmHWM")


def proc_memory() -> dict[str, int]:
    """This process's resident bytes, from /proc/self/status."""
    out: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in PROC_STATUS_FIELDS:
                out[key] = int(value.split()[0]) * 1024  # "123456 kB"
    return out


# ---- the worker: runs under llama-cpp-python's interpreter -------------------------------


def serve(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--ctx", type=int, required=True)
    args = ap.parse_args(argv)
    # The protocol gets its own copy of stdout; fd 1 then points at stderr, so nothing the
    # C++ library prints can land in the middle of a reply.
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    before_load = proc_memory()
    import llama_cpp

    llm = llama_cpp.Llama(
        args.model,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_ctx=args.ctx,
        verbose=False,
    )
    hello = {"version": llama_cpp.__version__, "before_load": before_load}
    _reply(proto, {**hello, "after_load": proc_memory()})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "complete":
            _reply(proto, _complete(llm, cmd["prompt"], cmd["max_tokens"]))
        elif cmd["cmd"] == "tokenize":
            ids = llm.tokenize(cmd["text"].encode(), add_bos=False, special=False)
            _reply(proto, {"ids": ids})
        elif cmd["cmd"] == "memory":
            _reply(proto, proc_memory())


def _complete(llm: Any, prompt: list[int], max_tokens: int) -> dict[str, Any]:
    """One greedy streamed completion, timed like ours: to the first chunk, and to the end."""
    # Without a reset, create_completion would reuse the KV of the previous round's
    # identical prompt and skip the prefill (ours runs with prefix caching off).
    llm.reset()
    start = time.perf_counter()
    ttft = 0.0
    chunks: list[str] = []
    finish_reason = None
    for chunk in llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, stream=True):
        if not chunks:
            ttft = time.perf_counter() - start
        choice = chunk["choices"][0]
        chunks.append(choice["text"])
        finish_reason = choice["finish_reason"] or finish_reason
    total = time.perf_counter() - start
    return {"ttft": ttft, "total": total, "text": "".join(chunks), "finish_reason": finish_reason}


def _reply(proto: TextIO, obj: dict[str, Any]) -> None:
    proto.write(json.dumps(obj) + "\n")
    proto.flush()


# ---- the peer: the worker seen from the benchmark's interpreter --------------------------


def _cpu_ticks(pid: int) -> int:
    """User + system CPU time of a process, all threads, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of proc(5))


class LlamaPeer:
    """The worker process started under `python` (a venv with llama_cpp) on a GGUF."""

    def __init__(self, python: str, model: str | os.PathLike[str], threads: int, ctx: int) -> None:
        argv = [python, __file__, "--model", str(model)]
        argv += ["--threads", str(threads), "--ctx", str(ctx)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.hello = self._read()

    def request(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def complete(self, prompt: list[int], max_tokens: int) -> dict[str, Any]:
        reply = self.request(cmd="complete", prompt=prompt, max_tokens=max_tokens)
        self.wait_until_idle()
        return reply

    def wait_until_idle(self, quiet_s: float = 0.05, limit_s: float = 5.0) -> float:
        """Waits until the worker's threads stop using CPU; returns the seconds waited.

        llama.cpp's worker threads spin-wait after a completion before they sleep; on a
        2-core machine that spinning slowed the round of ours that followed by ~25%
        (69.5 -> 54 tok/s). Each system is timed with the other idle, as a user runs one.
        """
        start = time.perf_counter()
        before = _cpu_ticks(self.proc.pid)
        while time.perf_counter() - start < limit_s:
            time.sleep(quiet_s)
            now = _cpu_ticks(self.proc.pid)
            if now == before:
                break
            before = now
        return time.perf_counter() - start

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"llama.cpp worker exited (code {self.proc.wait()})")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


if __name__ == "__main__":
    serve(sys.argv[1:])
