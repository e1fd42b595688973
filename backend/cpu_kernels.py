"""Builds and loads our C++ CPU kernels: fused paged decode attention
(kernels/paged_decode_attention.cpp) and the few-row matmul (kernels/skinny_linear.cpp).

The sources ship with the package and are compiled on first use, into one library, with
the system C++ compiler against the installed torch, then cached by a key over the
sources, torch version, flags and CPU features (the build targets the host CPU, so a
cache folder shared with another machine must not hand it a foreign binary). With no
compiler, or if the build fails, callers get None and keep the pure-PyTorch path:
the kernels are a speed-up, never a requirement. LLM_GATEWAY_CPU_KERNELS=0 turns it off.
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
from collections.abc import Callable
from pathlib import Path

import torch

from backend.attention import DecodeKernel
from backend.model_store import cache_dir

log = logging.getLogger(__name__)

SOURCES = [
    Path(__file__).parent / "kernels" / name
    for name in ("paged_decode_attention.cpp", "skinny_linear.cpp")
]
# -fno-math-errno lets the compiler vectorise exp(); the rest is plain -O3 for this CPU.
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-std=c++20", "-shared", "-fPIC"]

# (out [M, N], x [M, K], w [N, K]) -> None; float32, contiguous
SkinnyLinear = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]

_lock = threading.Lock()
_loaded: dict[str, bool] = {}


def paged_decode_kernel() -> DecodeKernel | None:
    """The fused CPU decode-attention op, built on first call; None when unavailable."""
    if not _library_loaded():
        return None
    op: DecodeKernel = torch.ops.llm_gateway.paged_decode_attention
    return op


def skinny_linear_kernel() -> SkinnyLinear | None:
    """The few-row float32 matmul op (backend/linear.py), built on first call; None when
    unavailable."""
    if not _library_loaded():
        return None
    op: SkinnyLinear = torch.ops.llm_gateway.skinny_linear
    return op


def _library_loaded() -> bool:
    with _lock:
        if "library" not in _loaded:
            _loaded["library"] = _load()
        return _loaded["library"]


def _load() -> bool:
    if os.environ.get("LLM_GATEWAY_CPU_KERNELS", "1") == "0":
        return False
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        log.warning("no C++ compiler found: CPU kernels off, the PyTorch paths serve")
        return False
    try:
        library = _build(compiler)
        torch.ops.load_library(str(library))
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        log.warning("CPU kernels unavailable, the PyTorch paths serve: %s", exc)
        return False
    return True


def _build(compiler: str) -> Path:
    torch_dir = Path(torch.__file__).parent
    key = hashlib.sha256()
    for part in (
        *(source.read_bytes() for source in SOURCES),
        torch.__version__.encode(),
        " ".join(FLAGS).encode(),
        compiler.encode(),
        _cpu_flags().encode(),
    ):
        key.update(part)
    out_dir = cache_dir().parent / "kernels" / key.hexdigest()[:16]
    library = out_dir / "cpu_kernels.so"
    if library.exists():
        return library
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("compiling the CPU kernels (once, ~30 s) into %s", out_dir)
    cmd = [
        compiler,
        *FLAGS,
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        f"-I{torch_dir / 'include'}",
        f"-I{torch_dir / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
        f"-I{sysconfig.get_paths()['include']}",
        *(str(source) for source in SOURCES),
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
