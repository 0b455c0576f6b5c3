"""Temperature scaling: the fit against a brute-force search, folded into the label head exactly, and a run calibrated."""

import json

import numpy as np
import pytest
import torch

from tunelab.evaluation.metrics import fit_temperature
from tunelab.models.heads import LabelHead, label_logits


def _log_probs(logits, temperature):
    scaled = logits / temperature
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    return scaled - np.log(np.exp(scaled).sum(axis=1, keepdims=True))


def _nll(logits, targets, temperature):
    return -_log_probs(logits, temperature)[np.arange(len(targets)), targets].mean()


def _platt_loss(logits, targets, temperature):
    """Cross-entropy against Platt's smoothed targets: (n+1)/(n+2) on each row's label, the rest shared, written out row by row."""
    n, k = logits.shape
    total = 0.0
    for row, target in zip(_log_probs(logits, temperature), targets, strict=True):
        total -= sum(((n + 1) / (n + 2) if j == target else 1 / ((n + 2) * (k - 1))) * row[j] for j in range(k))
    return total / n


@pytest.mark.parametrize("sharpness", [0.3, 3.0])
def test_fit_temperature_finds_the_lowest_nll_of_a_brute_force_search(sharpness):
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 5, size=200)
    logits = rng.normal(size=(200, 5))
    logits[np.arange(200), targets] += 1.5  # right more often than not
    logits *= sharpness  # 0.3: underconfident (T < 1 fits), 3.0: overconfident (T > 1)
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 4001))
    best = grid[np.argmin([_nll(logits, targets, t) for t in grid])]  # some rows wrong: the plain likelihood
    found = fit_temperature(logits, targets)
    assert found == pytest.approx(best, rel=0.01)
    assert (found < 1) == (sharpness < 1)
    assert _nll(logits, targets, found) <= _nll(logits, targets, 1.0)
    assert fit_temperature(np.zeros((0, 3)), []) == 1.0


def test_validation_rows_all_answered_right_do_not_send_the_temperature_to_its_bound():
    # The quickstart's seed-2 run: all 32 validation queries right, an underconfident (label-smoothed) model. The plain
    # NLL falls for ever as T -> 0: the fit ran to the bound 0.05 and every test answer came out at ~100 %.
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 8, size=32)
    logits = rng.normal(scale=0.3, size=(32, 8))
    logits[np.arange(32), targets] += 1.5  # every row right, top probability about 0.5
    found = fit_temperature(logits, targets)
    assert 0.06 < found < 1.0
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 4001))
    assert found == pytest.approx(grid[np.argmin([_platt_loss(logits, targets, t) for t in grid])], rel=0.01)
    # The calibrated top probability sits near what 32 right answers in a row support, (n + 1) / (n + 2), not at 1.
    top = np.exp(_log_probs(logits, found)).max(axis=1).mean()
    assert 0.9 < top < 0.995
    # One wrong answer among them: the plain likelihood has its own optimum, and it is the one fitted.
    logits[0, targets[0]] -= 3.0
    assert (logits.argmax(axis=1) != targets).sum() == 1
    assert fit_temperature(logits, targets) == pytest.approx(grid[np.argmin([_nll(logits, targets, t) for t in grid])], rel=0.01)


def test_a_temperature_folded_into_the_label_head_divides_the_label_logits(tiny_model):
    token_ids = [5, 9, 13]
    head = LabelHead(token_ids, torch.randn(3, tiny_model.config.hidden_size) * 0.1)
    hidden = torch.randn(4, tiny_model.config.hidden_size)
    ids = torch.tensor(token_ids)
    before = label_logits(tiny_model, hidden, ids, head)
    scaled = head.with_temperature(tiny_model, 2.5)
    after = label_logits(tiny_model, hidden, ids, scaled)
    torch.testing.assert_close(after, before / 2.5, rtol=1e-5, atol=1e-5)
    assert torch.equal(after.argmax(-1), before.argmax(-1))  # the answers stay


def _uncalibrated_run(tiny_model_dir, tmp_path):
    """(config, split, run folder) of a classify run trained with classify.calibrate: false."""
    from tunelab.config import parse_config
    from tunelab.data.split import make_split
    from tunelab.tasks import run_training

    words = {"A": ["apple", "pear", "plum", "fruit"], "B": ["billing", "account", "card", "refund"]}
    rows = [{"text": f"{words['AB'[i % 2]][i % 4]} {words['AB'[i % 2]][(i // 2) % 4]} number {i}", "label": "AB"[i % 2]} for i in range(48)]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = parse_config({
        "task": "classify", "model": str(tiny_model_dir),
        "data": {"train": str(data), "test_size": 0.2, "validation_size": 0.25, "max_length": 64},
        "train": {"lr": 3e-3, "epochs": 3, "batch_size": 8, "output_dir": str(tmp_path / "runs")},
        "classify": {"calibrate": False},
    })
    split = make_split(config)
    run_dir = tmp_path / "runs" / "calibrated"
    run_training(config, split, run_dir=run_dir)
    return config, split, run_dir


def test_a_classify_run_is_calibrated_on_validation_with_the_answers_unchanged(tiny_model_dir, tmp_path, monkeypatch):
    from tunelab.inference import Classifier
    from tunelab.runs import Run
    from tunelab.tasks.classify import calibrate_temperature

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    config, split, run_dir = _uncalibrated_run(tiny_model_dir, tmp_path)
    assert not Run.open(run_dir).folder.calibration.exists()  # classify.calibrate: false

    def validation_logits():
        loaded = Run.open(run_dir).load()
        classifier = Classifier.for_model(loaded)
        return classifier.logits(loaded.model, [classifier.prompt(r.text)[0] for r in split.validation]), classifier.label_map

    raw, label_map = validation_logits()
    record = calibrate_temperature(config, split, run_dir)
    saved = json.loads(Run.open(run_dir).folder.calibration.read_text())
    assert saved == record and saved["applied"] and saved["queries"] == len(split.validation)
    targets = np.array([label_map.labels.index(r.label) for r in split.validation])
    assert saved["temperature"] == pytest.approx(fit_temperature(raw, targets))
    calibrated, _ = validation_logits()  # read back from the adapter's label rows, as every consumer reads them
    np.testing.assert_allclose(calibrated, raw / saved["temperature"], rtol=1e-4, atol=1e-4)
    assert (calibrated.argmax(1) == raw.argmax(1)).all()
    assert _nll(calibrated, targets, 1.0) <= _nll(raw, targets, 1.0) + 1e-9
    for key in ("ece_before", "ece_after"):
        assert 0.0 <= saved[key] <= 1.0


def test_a_full_disk_while_calibrating_leaves_the_trained_adapter_whole(tiny_model_dir, tmp_path, monkeypatch):
    """The temperature was written into the finished run's adapter/ in place: a full disk (or a kill) midway left a
    truncated adapter_model.safetensors (the run's weights gone until retrained) and a traceback, not one line."""
    import errno

    import safetensors.torch

    from tunelab.paths import DiskFullError
    from tunelab.runs import Run
    from tunelab.tasks.classify import calibrate_temperature

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    config, split, run_dir = _uncalibrated_run(tiny_model_dir, tmp_path)
    adapter = Run.open(run_dir).folder.adapter
    before = {path.name: path.read_bytes() for path in adapter.iterdir()}

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:  # what a writer gets down before the disk is full
            handle.write(b"\0" * 64)
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(DiskFullError) as raised:
        calibrate_temperature(config, split, run_dir)
    assert "\n" not in str(raised.value) and str(adapter) in raised.value.message, raised.value
    assert {path.name: path.read_bytes() for path in adapter.iterdir()} == before
    assert not [p.name for p in adapter.parent.iterdir() if p.name.startswith(".adapter")]
    Run.open(run_dir).verify_weights()
