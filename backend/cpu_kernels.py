"""Builds and loads our C++ CPU kernels (today: fused paged decode attention).

The kernel source ships with the package and is compiled on first use with the
system C++ compiler against the installed torch, then cached by a key over the
source, torch version, flags and CPU features (the build targets the host CPU, so a
cache folder shared with another machine must not hand it a foreign binary). With no
compiler, or if the build fails, callers get None and keep the pure-PyTorch path:
the kernel is a speed-up, never a requirement. LLM_GATEWAY_CPU_KERNELS=0 turns it off.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sysconfig
import tempfile
import threading
from pathlib import Path

import torch

from backend.attention import DecodeKernel
from backend.model_store import cache_dir

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "kernels" / "paged_decode_attention.cpp"
# -fno-math-errno lets the compiler vectorise exp(); the rest is plain -O3 for this CPU.
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-std=c++20", "-shared", "-fPIC"]

_lock = threading.Lock()
_loaded: dict[str, DecodeKernel | None] = {}


def paged_decode_kernel() -> DecodeKernel | None:
    """The fused CPU decode-attention op, built on first call; None when unavailable."""
    with _lock:
        if "decode" not in _loaded:
            _loaded["decode"] = _load()
        return _loaded["decode"]


def _load() -> DecodeKernel | None:
    if os.environ.get("LLM_GATEWAY_CPU_KERNELS", "1") == "0":
        return None
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        log.warning("no C++ compiler found: CPU decode attention uses the PyTorch path")
        return None
    try:
        library = _build(compiler)
        torch.ops.load_library(str(library))
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        log.warning("CPU attention kernel unavailable, using the PyTorch path: %s", exc)
        return None
    op: DecodeKernel = torch.ops.llm_gateway.paged_decode_attention
    return op


def _build(compiler: str) -> Path:
    torch_dir = Path(torch.__file__).parent
    key = hashlib.sha256()
    for part in (
        SOURCE.read_bytes(),
        torch.__version__.encode(),
        " ".join(FLAGS).encode(),
        compiler.encode(),
        _cpu_flags().encode(),
    ):
        key.update(part)
    out_dir = cache_dir().parent / "kernels" / key.hexdigest()[:16]
    library = out_dir / "paged_decode_attention.so"
    if library.exists():
        return library
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("compiling the CPU attention kernel (once, ~20 s) into %s", out_dir)
    cmd = [
        compiler,
        *FLAGS,
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        f"-I{torch_dir / 'include'}",
        f"-I{torch_dir / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
        f"-I{sysconfig.get_paths()['include']}",
        str(SOURCE),
        f"-L{torch_dir / 'lib'}",
        "-lc10",
        "-ltorch_cpu",
        f"-Wl,-rpath,{torch_dir / 'lib'}",
    ]
    # Build beside the target and rename: concurrent builders never load a half-written file.
    with tempfile.NamedTemporaryFile(dir=out_dir, suffix=".so", delete=False) as tmp:
        pass
    try:
        result = subprocess.run([*cmd, "-o", tmp.name], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed:\n{result.stderr[-2000:]}")
        os.replace(tmp.name, library)
    finally:
        Path(tmp.name).unlink(missing_ok=True)
    return library


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return ""
