"""Builds and loads our C++ CPU kernels: fused paged decode attention
(paged_decode_attention.cpp), the few-row matmul (skinny_linear.cpp) and the packed
quantized-block matmul (quant_linear.cpp), and a whole decoder layer for one-query rows
(decode_layer.cpp, calling the others through kernels.h).

The sources ship with the package and are compiled on first use, into one library, by
torch's JIT extension builder (`torch.utils.cpp_extension.load`, which runs ninja) with
the given C++ compiler (default: g++, else c++, on PATH). The build lives in
HOME/kernels/KEY/, the key over the sources, compiler, flags, torch version and CPU
features (the build targets the host CPU, so a home shared with another machine must not
hand it a foreign binary); later loads find it built. With no compiler or ninja, or if
the build fails, callers get None and keep the pure-PyTorch path: the kernels are a
speed-up, never a requirement.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from backend.attention import DecodeKernel
from backend.environment import compiler_environment, home_dir
from backend.linear import SkinnyLinear
from backend.model import DecodeLayer, LlamaModel
from backend.quantized import PackedKernels

log = logging.getLogger(__name__)

NAME = "llm_gateway_cpu_kernels"  # the library; its ops are torch.ops.llm_gateway.*
SOURCES = [
    Path(__file__).parent / name
    for name in (
        "paged_decode_attention.cpp",
        "skinny_linear.cpp",
        "quant_linear.cpp",
        "decode_layer.cpp",
    )
]
HEADERS = [Path(__file__).parent / "kernels.h"]  # in the build key, not compiled alone
# Ours; torch adds -std=c++20 -fPIC -shared, its include paths, the C++ ABI define and
# its libraries. -fno-math-errno lets the compiler vectorise exp(); the rest is plain
# -O3 for this CPU, with OpenMP.
CFLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp"]
LDFLAGS = ["-fopenmp"]
STALE_LOCK_SECONDS = 600  # a build lock this old was left by a build that was killed


@dataclass(frozen=True, slots=True)
class CpuKernels:
    paged_decode: DecodeKernel  # attention.py's decode_kernel
    skinny_linear: SkinnyLinear  # linear.py's few-row matmul
    packed: PackedKernels  # quantized/packed_linear.py's block matmul and expansion
    decode_layer: DecodeLayer  # model.py's fused decoder layer for one-query rows


def attach_cpu_kernels(model: LlamaModel, kernels: CpuKernels) -> bool:
    """Sets `model` up as the engine runs it on CPU: the few-row matmul for float layers,
    the block kernels for packed ones, then the fused decode layer where every layer
    suits it. Returns whether decode steps run fused."""
    model.enable_skinny_linear(kernels.skinny_linear)
    model.enable_packed_kernels(kernels.packed)
    return model.enable_fused_decode(kernels.decode_layer)


_lock = threading.Lock()
_built: dict[str, bool] = {}  # "library" -> whether it loaded (tried once per process)


def load_cpu_kernels(compiler: str | None = None, home: Path | None = None) -> CpuKernels | None:
    """The kernels, built on first call (into `home`, default: environment.home_dir());
    None when they cannot be had. The first call's compiler and home are the ones used."""
    with _lock:
        if "library" not in _built:
            _built["library"] = _build_and_load(compiler, home)
        if not _built["library"]:
            return None
    ops = torch.ops.llm_gateway
    return CpuKernels(
        ops.paged_decode_attention,
        ops.skinny_linear,
        PackedKernels(ops.quant_linear, ops.dequantize_packed),
        ops.decode_layer,
    )


def _build_and_load(compiler: str | None, home: Path | None) -> bool:
    compiler = compiler or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        log.warning("no C++ compiler found: CPU kernels off, the PyTorch paths serve")
        return False
    ninja_dirs = _ninja_dirs()
    if ninja_dirs is None:
        log.warning("no ninja (pip install ninja): CPU kernels off, the PyTorch paths serve")
        return False
    build_dir = home_dir(home) / "kernels" / _build_key(compiler)
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
        _clear_stale_lock(build_dir / "lock")
        if not (build_dir / f"{NAME}.so").exists():
            log.info("compiling the CPU kernels (once, ~30 s) into %s", build_dir)
        from torch.utils import cpp_extension  # imports setuptools: only when building

        with compiler_environment(compiler, ninja_dirs):
            cpp_extension.load(
                name=NAME,
                sources=[str(source) for source in SOURCES],
                extra_cflags=CFLAGS,
                extra_ldflags=LDFLAGS,
                build_directory=str(build_dir),
                is_python_module=False,
            )
    except (OSError, RuntimeError, ImportError, subprocess.CalledProcessError) as exc:
        log.warning("CPU kernels unavailable, the PyTorch paths serve: %s", str(exc)[-2000:])
        return False
    return True


def _build_key(compiler: str) -> str:
    key = hashlib.sha256()
    for part in (
        *(source.read_bytes() for source in SOURCES + HEADERS),
        torch.__version__.encode(),
        " ".join(CFLAGS + LDFLAGS).encode(),
        compiler.encode(),
        _cpu_flags().encode(),
    ):
        key.update(part)
    return key.hexdigest()[:16]


def _ninja_dirs() -> list[Path] | None:
    """Folders to put on PATH for torch to find ninja ([] when it is there already: the
    ninja package's own, in a virtualenv that is not activated); None: no ninja."""
    if shutil.which("ninja") is not None:
        return []
    try:
        import ninja  # the PyPI package: a ninja binary in its BIN_DIR
    except ImportError:
        return None
    bin_dir = Path(ninja.BIN_DIR)
    return [bin_dir] if (bin_dir / "ninja").exists() else None


def _clear_stale_lock(lock: Path) -> None:
    """torch's builder waits while its lock file exists; one left by a killed build
    would make every later start wait forever."""
    try:
        if time.time() - lock.stat().st_mtime > STALE_LOCK_SECONDS:
            lock.unlink(missing_ok=True)
    except FileNotFoundError:
        pass


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return ""
