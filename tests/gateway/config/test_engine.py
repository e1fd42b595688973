"""The engine's settings are written once ([engine] in gateway/config/engine.py): the
command line's flags are made from it, a flag given overrides the file, every setting
reaches the engine's config under its own name, the environment's say
(LLM_GATEWAY_CPU_KERNELS, CXX, LLM_GATEWAY_HOME) is read in gateway/config/ only, and
loading the config imports no torch."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from backend.engine import EngineConfig
from backend.speculative import SpeculativeConfig
from gateway.cli import _engine_section, build_parser
from gateway.config import (
    ConfigError,
    EngineEnvironment,
    EngineSection,
    engine_config,
    engine_environment,
    load_config,
)
from gateway.config.engine import GATEWAY_FIELDS

MODEL = Path("/models/m.gguf")
# A value other than the default for every field (and the flags that say the same).
NON_DEFAULT = {
    "model": "/models/m.gguf",
    "served_model_name": "m",
    "dtype": "bfloat16",
    "device": "cpu",
    "max_model_len": 512,
    "kv_cache_gb": 0.5,
    "max_num_seqs": 8,
    "max_num_batched_tokens": 256,
    "block_size": 32,
    "prefix_caching": False,
    "quantization": "int4",
    "int8_decode": True,
    "kernels": "torch",
    "speculative": "self-draft",
    "num_speculative_tokens": 3,
    "speculative_opt_in": True,
    "adaptive_speculation": False,
    "self_draft_layers": 4,
}


def _flags(values: dict[str, object]) -> list[str]:
    argv = []
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else flag.replace("--", "--no-", 1))
        else:
            argv += [flag, str(value)]
    return argv


def _toml(values: dict[str, object]) -> str:
    lines = ["[engine]"]
    for name, value in values.items():
        text = str(value).lower() if isinstance(value, bool) else repr(value).replace("'", '"')
        lines.append(f"{name} = {text}")
    return "\n".join(lines) + "\n"


def _parse(argv: list[str]) -> object:
    return build_parser().parse_args(["serve", *argv])


def test_the_test_covers_every_field() -> None:
    assert set(NON_DEFAULT) == set(EngineSection.__struct_fields__)
    defaults = EngineSection()
    for name, value in NON_DEFAULT.items():
        assert getattr(defaults, name) != value, name


def test_every_field_is_a_flag_and_flags_build_what_the_file_builds(tmp_path: Path) -> None:
    file = tmp_path / "gateway.toml"
    file.write_text(_toml(NON_DEFAULT))
    from_file = load_config(file, {})
    assert from_file.engine == EngineSection(**NON_DEFAULT)  # type: ignore[arg-type]
    from_flags = _engine_section(_parse(_flags(NON_DEFAULT)), load_config(None, {}))  # type: ignore[arg-type]
    assert from_flags == from_file.engine


def test_no_flag_given_is_the_sections_defaults() -> None:
    assert _engine_section(_parse([]), load_config(None, {})) == EngineSection()  # type: ignore[arg-type]


def test_a_flag_given_overrides_the_file_and_the_rest_of_the_file_stays(tmp_path: Path) -> None:
    file = tmp_path / "gateway.toml"
    file.write_text("[engine]\nblock_size = 32\nprefix_caching = false\n")
    args = _parse(["--prefix-caching", "--max-num-seqs", "4"])
    section = _engine_section(args, load_config(file, {}))  # type: ignore[arg-type]
    assert (section.block_size, section.prefix_caching, section.max_num_seqs) == (32, True, 4)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-num-seqs", "0"], "--max-num-seqs: expected `int` >= 1"),
        (["--num-speculative-tokens", "33"], "--num-speculative-tokens: expected `int` <= 32"),
        (["--kv-cache-gb", "-1"], "--kv-cache-gb: expected `float` > 0.0"),
    ],
)
def test_a_flag_out_of_bounds_is_an_error_naming_it(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _engine_section(_parse(argv), load_config(None, {}))  # type: ignore[arg-type]
    assert str(caught.value) == message


def test_a_choice_outside_the_literal_is_refused_by_the_parser() -> None:
    with pytest.raises(SystemExit):
        _parse(["--speculative", "eagle"])


def test_every_setting_reaches_the_engine_config_by_its_own_name() -> None:
    section = EngineSection(**NON_DEFAULT)  # type: ignore[arg-type]
    config = engine_config(section, MODEL, EngineEnvironment())
    assert config.model == MODEL
    assert config.speculative is not None and config.speculative.method == "self-draft"
    engine_fields = {f.name for f in dataclasses.fields(EngineConfig)}
    speculative_fields = {f.name for f in dataclasses.fields(SpeculativeConfig)}
    for name, value in msgspec.structs.asdict(section).items():
        if name in GATEWAY_FIELDS:
            continue
        assert name in engine_fields | speculative_fields, f"{name} reaches no engine setting"
        where = config if name in engine_fields else config.speculative
        assert getattr(where, name) == value, name


def test_without_speculative_the_engine_does_not_speculate() -> None:
    config = engine_config(EngineSection(num_speculative_tokens=3), MODEL, EngineEnvironment())
    assert config.speculative is None


def test_the_environment_turns_kernels_off_and_sets_compiler_and_home(tmp_path: Path) -> None:
    env = {"LLM_GATEWAY_CPU_KERNELS": "0", "CXX": "clang++", "LLM_GATEWAY_HOME": str(tmp_path)}
    config = engine_config(EngineSection(), MODEL, engine_environment(env))
    assert (config.kernels, config.compiler, config.home) == ("torch", "clang++", tmp_path)
    default = engine_config(EngineSection(), MODEL, engine_environment({}))
    assert (default.kernels, default.compiler, default.home) == ("auto", None, None)


def test_engine_variables_are_not_taken_for_config_keys(tmp_path: Path) -> None:
    env = {"LLM_GATEWAY_HOME": str(tmp_path), "LLM_GATEWAY_CPU_KERNELS": "0"}
    assert load_config(None, env) == load_config(None, {})


def test_loading_the_config_and_building_the_parser_imports_no_torch(tmp_path: Path) -> None:
    file = tmp_path / "gateway.toml"
    file.write_text(_toml(NON_DEFAULT))
    code = (
        "import sys\nfrom pathlib import Path\nfrom gateway.config import load_config\n"
        "from gateway.cli import build_parser\n"
        f"load_config(Path({str(file)!r}), {{}}); build_parser()\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"
