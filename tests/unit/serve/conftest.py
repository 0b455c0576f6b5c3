"""Fixtures for the serving tests: fake run folders with LoRA adapters on the tiny model.

The training code is written elsewhere; these runs are built directly with peft, the way a
finished run stores them: ``adapter/`` (PEFT), ``config.yaml``, ``tokenizer/`` and, for classify
runs, ``labels.json``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from tunelab.data.labels import build_label_map
from tunelab.serve.adapters import load_registry

CLASSIFY_LABELS = ["billing", "technical", "account"]
CLASSIFY_SYSTEM = "Route support requests."


def write_fake_run(root: Path, base_dir: Path, tokenizer, *, seed: int, task: str = "sft", labels=None) -> Path:
    """A run folder whose adapter's LoRA B weights are random (so its answers differ from the base's)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    # LoRA A is drawn from the global generator: seeded here, so a run's weights do not depend on which tests ran first
    # (a test comparing two runs' answers failed in some orders).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.1))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    root.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(root / "adapter")
    tokenizer.save_pretrained(root / "tokenizer")
    config = {"task": task, "model": {"name": str(base_dir)}, "data": {}}
    if task == "classify":
        config["data"]["system_prompt"] = CLASSIFY_SYSTEM
        label_map = build_label_map(labels or CLASSIFY_LABELS, tokenizer)
        label_map.save(root / "labels.json")
        # A trained classify run carries its label rows in the adapter (PEFT trainable tokens, as training saves
        # them): random rows here, so serving must apply them to agree.
        from tunelab.models.adapters import write_label_rows
        from tunelab.models.heads import LabelHead

        delta = torch.randn((len(label_map.labels), base.config.hidden_size), generator=generator)
        write_label_rows(root / "adapter", peft_model, LabelHead(label_map.token_ids, delta))
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def write_fake_evaluation(root: Path, correct: int, *, n: int = 200, fingerprint: str = "test-v1") -> Path:
    """A classify run's stored test evaluation (``eval/tuned.json``): ``correct`` of ``n`` rows right (the first ones), on
    the test set ``fingerprint`` names (what `tunelab promote` compares two runs on)."""
    from tunelab.evaluation.result import EvalResult
    from tunelab.runs import RunFolder

    rows = [
        {"id": f"t{i}", "reference": "billing", "prediction": "billing" if i < correct else "technical",
         "scores": {"correct": float(i < correct), "confidence": 0.9}}
        for i in range(n)
    ]
    result = EvalResult("classify", "tuned", n, {"accuracy": correct / n}, rows, labels=CLASSIFY_LABELS, test_fingerprint=fingerprint)
    return result.save(RunFolder(root).tuned_eval)


@pytest.fixture(scope="session")
def fake_runs(tmp_path_factory, tiny_model_dir, tiny_tokenizer) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "france": write_fake_run(root / "legal-fr", tiny_model_dir, tiny_tokenizer, seed=1),
        "germany": write_fake_run(root / "legal-de", tiny_model_dir, tiny_tokenizer, seed=2),
        "router": write_fake_run(root / "router", tiny_model_dir, tiny_tokenizer, seed=3, task="classify"),
    }


@pytest.fixture(scope="module")
def registry(tiny_model_dir, fake_runs):
    """The tiny base with three adapters registered (none loaded yet); at most two stay loaded."""
    return load_registry(str(tiny_model_dir), [(name, str(path)) for name, path in fake_runs.items()], max_loaded=2)


@pytest.fixture(scope="session")
def router_versions(tmp_path_factory, tiny_model_dir, tiny_tokenizer) -> list[Path]:
    """Two classify runs with the same labels and different weights: a champion and a challenger to promote."""
    root = tmp_path_factory.mktemp("router-versions")
    return [write_fake_run(root / f"router-v{i}", tiny_model_dir, tiny_tokenizer, seed=10 + i, task="classify") for i in (1, 2)]


def assert_openai_error(response, status, param=None, code=None):
    """``response`` is an OpenAI-shaped error of ``status`` (and ``param`` / ``code`` when given); its error object."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


@pytest.fixture(scope="module")
def server(registry):
    """A real server on the loopback over ``registry`` (answers of at most 16 tokens): its base URL."""
    from tunelab.serve import BackgroundServer, ServeSettings, create_app

    with BackgroundServer(create_app(registry, ServeSettings(max_tokens_limit=16)), "127.0.0.1", 0) as url:
        yield url


@pytest.fixture(scope="module")
def api(registry):
    """The same app as ``server``, in process (FastAPI's TestClient, requests from the loopback): raw JSON in and out."""
    from fastapi.testclient import TestClient

    from tunelab.serve import ServeSettings, create_app

    with TestClient(create_app(registry, ServeSettings(max_tokens_limit=16)), base_url="http://127.0.0.1") as test_client:
        yield test_client


@pytest.fixture(scope="module")
def client(server):
    """The official ``openai`` client pointed at ``server`` (no retries: each test sees the first answer)."""
    import openai

    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=60)
