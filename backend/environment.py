"""The process environment: the one module of backend/ that reads (or sets) it.

Everything else takes its settings as parameters (EngineConfig fields, function
arguments), so the engine does the same whoever starts it. Callers that want the
environment's say ask for it here:

    LLM_GATEWAY_CPU_KERNELS=0   EngineConfig.kernels = "torch" (no C++ kernels)
    CXX                         EngineConfig.compiler: the C++ compiler for the kernels
    LLM_GATEWAY_HOME            EngineConfig.home, and `home` of loading.model_store:
                                pulled models in HOME/models, built kernels in HOME/kernels

`read_environment()` returns them; its `apply(config)` fills them into an EngineConfig
where the config has its defaults. `home_dir()` is where files go when no home is
given: the user cache folder (~/.cache/llm-gateway). `compiler_environment()` is for
torch's extension builder, which takes its compiler only from CXX and finds ninja only
on PATH: the kernel build sets both here, for the duration of the build.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from platformdirs import user_cache_dir

if TYPE_CHECKING:
    from backend.engine.config import EngineConfig

CPU_KERNELS_VARIABLE = "LLM_GATEWAY_CPU_KERNELS"
COMPILER_VARIABLE = "CXX"
HOME_VARIABLE = "LLM_GATEWAY_HOME"


@dataclass(frozen=True, slots=True)
class BackendEnvironment:
    cpu_kernels: bool = True  # False: LLM_GATEWAY_CPU_KERNELS=0
    compiler: str | None = None  # CXX
    home: Path | None = None  # LLM_GATEWAY_HOME

    def apply(self, config: EngineConfig) -> EngineConfig:
        """`config` with what the environment says, where the config has its defaults."""
        return dataclasses.replace(
            config,
            kernels=config.kernels if self.cpu_kernels else "torch",
            compiler=config.compiler or self.compiler,
            home=config.home or self.home,
        )


def read_environment(environ: Mapping[str, str] | None = None) -> BackendEnvironment:
    """What the environment (default: this process's) says about the engine."""
    env = os.environ if environ is None else environ
    home = env.get(HOME_VARIABLE)
    return BackendEnvironment(
        cpu_kernels=env.get(CPU_KERNELS_VARIABLE, "1") != "0",
        compiler=env.get(COMPILER_VARIABLE) or None,
        home=Path(home).expanduser() if home else None,
    )


def home_dir(home: Path | None = None) -> Path:
    """llm-gateway's own folder: `home` when given, else the user cache folder."""
    return Path(home).expanduser() if home is not None else Path(user_cache_dir("llm-gateway"))


@contextmanager
def compiler_environment(compiler: str, path_dirs: Sequence[Path] = ()) -> Iterator[None]:
    """CXX = `compiler` and `path_dirs` ahead on PATH while the block runs, then as before."""
    saved = {name: os.environ.get(name) for name in (COMPILER_VARIABLE, "PATH")}
    os.environ[COMPILER_VARIABLE] = compiler
    if path_dirs:
        os.environ["PATH"] = os.pathsep.join([*map(str, path_dirs), saved["PATH"] or ""])
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
