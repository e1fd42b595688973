"""The Grafana dashboards (deploy/grafana/dashboards/*.json): every panel queries the
provisioned data source, every PromQL expression parses (promtool), and against a real
`llm-gateway serve` scraped by a real Prometheus every expression returns data."""

from __future__ import annotations

import json
import math
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy.stack import DEPLOY, run, tool
from tests.serving import MODEL_ID, free_port, stop, wait_until_up

DASHBOARDS = DEPLOY / "grafana/dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
HINT = "`make deploy-tools` installs Debian's prometheus package"
# Grafana's variables as the test evaluates them: windows of 1m, every model.
VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m"}


def load(name: str) -> dict[str, Any]:
    board: dict[str, Any] = json.loads((DASHBOARDS / name).read_text())
    return board


def targets(board: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            yield panel, target


def expressions(model_name: str) -> list[str]:
    """Every dashboard expression with Grafana's variables substituted."""
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for _, target in targets(json.loads(path.read_text())):
            expr = target["expr"]
            for name, value in {**VARIABLES, "$model_name": model_name}.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, expr
            found.append(expr)
    return found


def test_both_dashboards_query_the_provisioned_prometheus() -> None:
    assert {p.name for p in DASHBOARDS.glob("*.json")} == {"llm-gateway.json", "engine.json"}
    uids = set()
    for name in ("llm-gateway.json", "engine.json"):
        board = load(name)
        assert board["schemaVersion"] >= 39 and board["editable"] is False
        uids.add(board["uid"])
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), name
        for panel, target in targets(board):
            assert panel["datasource"] == target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"] and target["refId"], panel["title"]
    assert len(uids) == 2
    # The engine dashboard's model_name variable lists what the engine serves.
    [variable] = load("engine.json")["templating"]["list"]
    assert variable["name"] == "model_name" and variable["datasource"] == DATASOURCE
    assert variable["query"]["query"] == "label_values(vllm:num_requests_running, model_name)"
    for _, target in targets(load("engine.json")):
        assert 'model_name=~"$model_name"' in target["expr"], target["expr"]


def test_every_expression_parses(tmp_path: Path) -> None:
    promtool = tool("promtool", HINT)
    rules = [
        {"record": f"dashboard:expr{i}", "expr": expr} for i, expr in enumerate(expressions(".+"))
    ]
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    checked = run([promtool, "check", "rules", str(path)])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules)} rules found" in checked.stdout


@pytest.mark.slow
def test_every_expression_returns_data(server_url: str, tmp_path: Path) -> None:
    prometheus = tool("prometheus", HINT)
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "llm-gateway",
                        "static_configs": [{"targets": [server_url.removeprefix("http://")]}],
                    }
                ],
            }
        )
    )
    log = tmp_path / "prometheus.log"
    cmd = [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}"]
    cmd += [f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        wait_until_up(proc, f"http://127.0.0.1:{port}/-/ready", 30, "prometheus", log)
        # Two rounds of requests, each followed by a scrape that sees it: every counter
        # then has two samples in a 1m window with an increase between them.
        with httpx.Client(base_url=server_url, timeout=60) as client:
            for round_ in ("first", "second"):
                send_requests(client, f"{round_} {uuid.uuid4().hex[:8]}")
                wait_for_scrape(api, after=time.time())
        models = httpx.get(
            f"{api}/label/model_name/values", params={"match[]": "vllm:num_requests_running"}
        ).json()["data"]
        assert models == [MODEL_ID]
        answers = {expr: query(api, expr) for expr in expressions(MODEL_ID)}
    finally:
        stop(proc, 10)
    empty = [expr for expr, series in answers.items() if not series]
    assert not empty, "expressions without data:\n" + "\n".join(empty)
    # The requests did what they were sent for: a cache hit, accepted guesses.
    for needle in ('outcome="hit"', "spec_decode_num_accepted_tokens_total"):
        [expr] = [e for e in answers if needle in e]
        values = [float(s["value"][1]) for s in answers[expr]]
        assert any(v > 0 and math.isfinite(v) for v in values), (expr, answers[expr])


def send_requests(client: httpx.Client, tag: str) -> None:
    """A chat, a streamed chat, a temperature-0 chat twice (the second an exact-cache
    hit) and a speculative chat with a repetitive prompt; `tag` keeps the others uncached."""

    def chat(content: str, **extra: Any) -> dict[str, Any]:
        messages = [{"role": "user", "content": content}]
        return {"model": MODEL_ID, "messages": messages, "max_tokens": 8, **extra}

    assert client.post("/v1/chat/completions", json=chat(f"Hi ({tag})")).status_code == 200
    streamed = chat(f"Say hello ({tag})", stream=True, stream_options={"include_usage": True})
    with client.stream("POST", "/v1/chat/completions", json=streamed) as response:
        assert response.status_code == 200
        assert any("[DONE]" in line for line in response.iter_lines())
    repeated = chat(f"Name a colour ({tag})", temperature=0)
    for _ in range(2):
        assert client.post("/v1/chat/completions", json=repeated).status_code == 200
    # Prompt lookup finds its guesses in the prompt: the same repetitive prompt each
    # round, kept out of the exact cache by the header.
    pattern = "a b c d e f g " * 3
    speculative = chat(f"Repeat: {pattern.strip()}", temperature=0, speculative=True, max_tokens=24)
    no_cache = {"cache-control": "no-cache"}
    answer = client.post("/v1/chat/completions", json=speculative, headers=no_cache)
    assert answer.status_code == 200


def wait_for_scrape(api: str, after: float, seconds: float = 30) -> None:
    """Until a scrape that started after `after` (epoch seconds) is stored."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        series = query(api, 'timestamp(up{job="llm-gateway"} == 1)')
        if series and float(series[0]["value"][1]) >= after:
            return
        time.sleep(0.05)
    pytest.fail(f"Prometheus stored no scrape after {after} within {seconds} s")


def query(api: str, expr: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{api}/query", params={"query": expr}).json()
    assert answer["status"] == "success", (expr, answer)
    assert answer["data"]["resultType"] == "vector", expr
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result
