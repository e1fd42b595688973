"""Configuration: TOML and YAML files, environment overrides, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, PluginEntry, load_config

GOOD = """
plugins = ["routing", {name = "stamp", optional = true, settings = {header = "x-a"}}]

[server]
port = 9000

[[groups]]
name = "primary"
backends = [{url = "http://10.0.0.1:8000/v1", weight = 2}, {url = "http://10.0.0.2:8000/v1"}]
api_key_env = "PRIMARY_KEY"

[[groups]]
name = "backup"
backends = [{url = "https://api.example.com/v1"}]

[[models]]
name = "chat"
groups = ["primary", "backup"]
upstream_model = "llama-3-8b"
routing = "least_outstanding"

[[models]]
name = "bare"
groups = ["backup"]
plugins = []

[[auth.keys]]
key = "sk-a"
tenant = "team-a"

[[auth.keys]]
key_env = "TEAM_B_KEY"
tenant = "team-b"
"""


def _write(tmp_path: Path, text: str, name: str = "gateway.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_full_toml_config_loads(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, GOOD), {"TEAM_B_KEY": "sk-b"})
    assert config.server.port == 9000
    assert [g.name for g in config.groups] == ["primary", "backup"]
    assert config.groups[0].backends[0].weight == 2
    chat, bare = config.models
    assert chat.groups == ["primary", "backup"] and chat.upstream_model == "llama-3-8b"
    assert config.chain_for(chat) == [
        PluginEntry(name="routing"),
        PluginEntry(name="stamp", optional=True, settings={"header": "x-a"}),
    ]
    assert config.chain_for(bare) == []  # a model's own chain replaces the global one
    assert config.api_keys({"TEAM_B_KEY": "sk-b"}) == {"sk-a": "team-a", "sk-b": "team-b"}


def test_yaml_is_read_the_same(tmp_path: Path) -> None:
    yaml_text = """
server: {port: 9100}
groups:
  - name: g
    backends: [{url: "http://h:1/v1"}]
models:
  - {name: m, groups: [g]}
"""
    config = load_config(_write(tmp_path, yaml_text, "gateway.yaml"), {})
    assert config.server.port == 9100 and config.models[0].groups == ["g"]


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    env = {
        "LLM_GATEWAY_SERVER__PORT": "9200",
        "LLM_GATEWAY_GROUPS__1__BACKENDS__0__URL": "http://override:1/v1",
        "LLM_GATEWAY_HOME": "/somewhere",  # not config: ignored
    }
    config = load_config(_write(tmp_path, GOOD), env)
    assert config.server.port == 9200
    assert config.groups[1].backends[0].url == "http://override:1/v1"


def test_no_file_gives_the_defaults() -> None:
    config = load_config(None, {})
    assert config.server.port == 8000 and config.groups == [] and config.auth.keys == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\nprot = 1", "server.prot: unknown key"),
        ("[server]\nport = 'x'", "server.port: Expected `int`, got `str`"),
        ("[server]\nport = 70000", "server.port"),
        ("typo = 1", "typo: unknown key"),
        ('[[models]]\nname = "m"\ngroups = ["nope"]', "models[0].groups[0]: unknown group 'nope'"),
        ('[[groups]]\nname = "g"\nbackends = [{url = "ftp://x"}]', "groups[0].backends[0].url"),
        ('[[groups]]\nname = "g"', "groups[0].backends: an openai group needs at least one"),
        ('plugins = [{name = "a", optinal = true}]', "plugins[0].optinal: unknown key"),
        ('[[models]]\nname = "m"\ngroups = ["g"]\nrouting = "random"', "models[0].routing"),
        ("[server\n", "not valid TOML"),
    ],
)
def test_bad_configs_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text), {})
    assert message in str(info.value)


def test_a_key_from_an_unset_variable_is_an_error(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, GOOD), {})
    with pytest.raises(ConfigError, match=r"auth.keys\[1\]"):
        config.api_keys({})


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.toml", {})
