"""lm-evaluation-harness against the real server: its `local-completions` model scores the
project's own multiple-choice task (lm_eval_task/) through `/v1/completions` (token-id
prompts, `echo` with `logprobs`), and its `hf` model scores the same task with
transformers on the same GGUF file. Both must pick the same answers."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.serving import MODEL_ID

TASK_DIR = Path(__file__).parent / "lm_eval_task"
TASK = "gateway_common_sense"
# Our log-likelihood of a choice against transformers' (measured at most 2.5e-5). A
# scored prompt runs the float reference's arithmetic in steps of any size
# (LlamaModel.exact_arithmetic); before that, steps of at most 16 tokens rounded the
# activations to int8 and these short requests (11 to 18 tokens) differed by up to 0.45,
# flipping 2 of the 36 answers.
LOGLIKELIHOOD_ATOL = 1e-4
# Four choices: chance is 0.25. Measured: acc 0.78, acc_norm 0.67, ours and transformers'.
ABOVE_CHANCE = 0.5


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No model hub, no dataset hub: everything lm-eval loads is on this machine."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def task_dir(tmp_path: Path) -> Path:
    """A copy of the task's YAML that names its data file by absolute path (datasets reads
    a relative one from the working directory) and keeps datasets' cache in tmp_path."""
    config = yaml.safe_load((TASK_DIR / "common_sense.yaml").read_text())
    data = TASK_DIR / config["dataset_kwargs"]["data_files"]["test"]
    config["dataset_kwargs"] = {"data_files": {"test": str(data)}, "cache_dir": str(tmp_path)}
    folder = tmp_path / "task"
    folder.mkdir()
    (folder / "common_sense.yaml").write_text(yaml.safe_dump(config))
    return folder


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """lm-eval, datasets and transformers warn freely (deprecations, 'instruct model
    without a chat template'); the suite turns warnings into errors."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _evaluate(model: str, model_args: dict[str, Any], task_dir: Path) -> dict[str, Any]:
    """One run of the task; the results and each question's samples."""
    with _quiet():
        import lm_eval
        from lm_eval.tasks import TaskManager

        out: dict[str, Any] | None = lm_eval.simple_evaluate(
            model=model,
            model_args=model_args,
            tasks=[TASK],
            task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
            log_samples=True,
            bootstrap_iters=0,  # no standard errors: they take longer than the run
        )
    assert out is not None
    return out


def _metrics(out: dict[str, Any]) -> tuple[float, float]:
    results = out["results"][TASK]
    return results["acc,none"], results["acc_norm,none"]


def _loglikelihoods(out: dict[str, Any]) -> dict[int, tuple[Any, list[float]]]:
    """doc_id -> (the requests lm-eval made, each choice's log-likelihood)."""
    samples = out["samples"][TASK]
    return {s["doc_id"]: (s["arguments"], [r[0] for r in s["filtered_resps"]]) for s in samples}


def test_lm_eval_through_the_server_matches_transformers(
    offline: None, server_url: str, smollm2_gguf: Path, task_dir: Path
) -> None:
    """As a user runs it: no tokenizer files given, lm-eval finds the server's own
    (/tokenizer_info, /tokenize: gateway/http/tokenizer_routes.py)."""
    ours = _evaluate(
        "local-completions",
        {
            "base_url": server_url + "/v1/completions",
            "model": MODEL_ID,
            "tokenized_requests": True,
            "num_concurrent": 1,
            "max_retries": 1,
        },
        task_dir,
    )
    theirs = _evaluate(
        "hf",
        {
            "pretrained": str(smollm2_gguf.parent),
            "gguf_file": smollm2_gguf.name,
            "dtype": "float32",
            "device": "cpu",
            "batch_size": 64,
        },
        task_dir,
    )
    acc, acc_norm = _metrics(ours)
    # Before the server returned prompt log-probabilities every choice scored the same
    # and lm-eval took the first (0.20 on its own tasks). Here the answer sits at each
    # of the four positions equally often, so always-the-first would score 0.25.
    assert acc > ABOVE_CHANCE and acc_norm > ABOVE_CHANCE
    assert (acc, acc_norm) == _metrics(theirs)
    ours_ll, theirs_ll = _loglikelihoods(ours), _loglikelihoods(theirs)
    assert ours_ll.keys() == theirs_ll.keys() and len(ours_ll) >= 30
    for doc_id, (requests, scores) in ours_ll.items():
        their_requests, their_scores = theirs_ll[doc_id]
        assert requests == their_requests  # the same context and choices were scored
        assert scores == pytest.approx(their_scores, abs=LOGLIKELIHOOD_ATOL), doc_id
