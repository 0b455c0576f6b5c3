"""``tunelab monitor``: live traffic of each served model and run against what the run was trained on.

For every (served name, run) with traffic in the window the report has these signals, each with its
thresholds (``monitor.thresholds``) and a status ok / watch / drifted:

- input drift: ``length_ks`` (input lengths in words), ``centroid_distance`` (TF-IDF), ``oov_share``
  (words never seen in training), ``label_psi`` (predicted labels against training labels);
- confidence drift: ``confidence_drop`` (mean top probability, test set minus live) and ``oos_share``
  (the share of answers that are the run's out-of-scope label, when the run saved a rule in ``out_of_scope.json``);
- quality: ``live_accuracy`` on the requests that got feedback, with a 95% Wilson interval, judged against the test
  accuracy only beyond the two samples' joint noise, and not judged on corrections alone (not the model's accuracy);
- service: ``latency_p95_ms`` and ``error_rate`` (the share the server failed to answer: 5xx, and 429 when overloaded).

The reference of a run is its folder: the training split's records (``split.json`` + the data files
of its saved config), the test evaluation (``eval/tuned.json``) and ``out_of_scope.json``. A signal
whose reference is missing is reported as skipped with the reason, never guessed.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.config import MonitorConfig, parse_config
from tunelab.errors import ConfigError, DataError, TunelabError
from tunelab.evaluation.compare import MIN_TEST_EXAMPLES
from tunelab.evaluation.metrics import difference_interval, wilson_interval
from tunelab.monitor.signals import (
    DRIFTED,
    OK,
    WATCH,
    CentroidModel,
    Signal,
    beyond_noise,
    distinct_texts,
    draw_counts,
    length_ks,
    oov_counts,
    oov_share,
    psi,
    psi_noise,
    same_size_noise,
    status_for,
    words,
    worst,
)
from tunelab.monitor.traffic import Traffic, read_traffic, served_groups, unknown_names, window_bounds
from tunelab.paths import atomic_write_text
from tunelab.runs import Run, RunFolder

# How the model is served, not what it answers: they count in the status (and the exit code), but a retrained
# model cannot make serving faster or fix its errors, so they never trigger a retrain (``retrain_status``).
SERVICE_SIGNALS = ("latency_p95_ms", "error_rate")
EXIT_DRIFTED = 3  # `tunelab monitor` exits with this when some signal drifted (cron / CI act on it)
REFERENCE_SAMPLE = 20000  # training texts the TF-IDF and vocabulary are fitted on at most (seeded)
REFERENCE_DRAWS = 100  # undrifted samples of the live size: their mean and spread are the text signals' noise level


@dataclass
class Reference:
    """What a run was trained and tested on, as monitoring compares with it."""

    run_id: str | None
    run_dir: Path | None
    task: str | None = None
    train_texts: list[str] = field(default_factory=list)
    train_labels: Counter = field(default_factory=Counter)
    heldout_texts: list[str] = field(default_factory=list)  # test (+ validation) inputs: undrifted data of any size
    test_accuracy: float | None = None
    test_n: int | None = None  # rows the test accuracy is of: it is a sample too, whose noise a live drop must exceed
    test_confidence: float | None = None
    test_predictions: Counter = field(default_factory=Counter)  # the tuned model's answers on its test set
    oos_threshold: float | None = None
    oos_label: str | None = None
    oos_on_probability: bool = False  # whether the threshold applies to the top probability (the confidence plot draws it)
    notes: list[str] = field(default_factory=list)


def _record_text(record: Any) -> str:
    """What a request to the run's model carries of ``record``: a classify or text record's text, else its last user message."""
    text = getattr(record, "text", None)
    if text is not None:
        return str(text)
    # sft and preference records: the prompt side of the conversation (``prompt_messages`` / ``prompt``, both properties).
    messages = getattr(record, "prompt_messages", None)
    if messages is None:
        messages = getattr(record, "prompt", None) or getattr(record, "messages", ())
    users = [m.get("content", "") for m in messages if m.get("role") == "user"]
    return str(users[-1]) if users else ""


def load_reference(run_dir: Path | None, run_id: str | None = None) -> Reference:
    """The reference of the run in ``run_dir`` (missing parts become notes, not errors)."""
    reference = Reference(run_id, run_dir)
    if run_id is None and run_dir is None:  # the base model (or a name nothing served) answered: no run, no training data
        reference.notes.append("no run answered these requests (the base model): signals against training data skipped")
        return reference
    if run_dir is None or not Path(run_dir).is_dir():
        reference.notes.append(f"run {run_id} has no run folder here: signals against training data skipped (pass --run RUN_DIR)")
        return reference
    run = RunFolder(Path(run_dir))
    opened = None
    try:
        opened = Run.open(run.root)
        config = opened.config
        reference.task = config.task
        from tunelab.data.split import load_split

        split = load_split(run.split, config)
        reference.train_texts = [_record_text(r) for r in split.train]
        reference.train_labels = Counter(str(r.label) for r in split.train if getattr(r, "label", None) is not None)
        reference.heldout_texts = [_record_text(r) for r in list(split.test) + list(split.validation)]
    except (OSError, TunelabError, ValueError, KeyError) as error:
        message = getattr(error, "message", None) or str(error)
        reference.notes.append(f"cannot read the training data of {run.root}: {message}; signals against it skipped")
    tuned = run.tuned_eval
    if tuned.is_file():
        from tunelab.evaluation.result import EvalResult

        result = EvalResult.load(tuned)
        accuracy = result.metrics.get("accuracy")
        reference.test_accuracy = float(accuracy) if isinstance(accuracy, int | float) else None
        reference.test_n = int(result.n) if result.n else None
        confidences = [row["scores"]["confidence"] for row in result.rows if "confidence" in row.get("scores", {})]
        reference.test_confidence = float(np.mean(confidences)) if confidences else None
        reference.test_predictions = Counter(str(row["prediction"]) for row in result.rows if row.get("prediction") is not None)
    else:
        reference.notes.append(f"{tuned} is missing: confidence and accuracy have no test-set reference")
    if opened is not None and opened.out_of_scope is not None:
        reference.oos_threshold = opened.out_of_scope.threshold
        reference.oos_label = opened.out_of_scope.label
        reference.oos_on_probability = not opened.out_of_scope.needs_features
    return reference


@dataclass
class ModelReport:
    """The signals of one served name answered by one run in the window."""

    model: str
    run_id: str | None
    run_dir: str | None
    requests: int
    first: str | None
    last: str | None
    signals: list[Signal]
    notes: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return worst(s.status for s in self.signals)

    @property
    def retrain_status(self) -> str:
        """The status of the signals a retrain can answer: the data and quality ones, not ``SERVICE_SIGNALS``."""
        return worst(s.status for s in self.signals if s.name not in SERVICE_SIGNALS)

    def signal(self, name: str) -> Signal:
        return next(s for s in self.signals if s.name == name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "run_id": self.run_id, "run_dir": self.run_dir, "requests": self.requests,
            "first": self.first, "last": self.last, "status": self.status, "signals": [s.as_dict() for s in self.signals],
            "notes": self.notes, "plots": self.plots,
        }


@dataclass
class MonitorReport:
    """``tunelab monitor``'s answer: one :class:`ModelReport` per served name and run."""

    log: str
    since: str
    until: str
    window: str
    models: list[ModelReport]
    checked_at: str
    unknown_models: dict[str, int] = field(default_factory=dict)  # names not served here: requests refused with 404

    @property
    def status(self) -> str:
        return worst(m.status for m in self.models)

    @property
    def exit_code(self) -> int:
        return EXIT_DRIFTED if self.status == DRIFTED else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "log": self.log, "since": self.since, "until": self.until, "window": self.window, "checked_at": self.checked_at,
            "status": self.status, "exit_code": self.exit_code, "models": [m.as_dict() for m in self.models],
            "unknown_models": self.unknown_models,
        }

    def save(self, path: Path) -> Path:
        atomic_write_text(Path(path), json.dumps(self.as_dict(), indent=1, default=str))
        return Path(path)


def _skipped(name: str, reason: str, n: int = 0) -> Signal:
    return Signal(name, None, OK, detail=f"skipped: {reason}", n=n)


def _live_accuracy(feedback: list[tuple[str | None, str]], reference: Reference, thresholds: tuple[float, float]) -> Signal:
    """Accuracy on the labelled answers against the test accuracy (``feedback``: (answer, label) pairs, not empty)."""
    n = len(feedback)
    correct = sum(predicted == label for predicted, label in feedback)
    # new_labels: what corrections name that the run never learnt (its out-of-scope label is never trained on by design).
    new_labels = sorted({label for _, label in feedback} - set(reference.train_labels) - {reference.oos_label})
    if not correct:
        # No label agrees with its answer: clients send corrections only (what they are often asked to do), and accuracy
        # on corrections is 0 whatever the model. Only labels of a sample of answers, right or wrong, measure it. A
        # model wrong on every answer of such a sample looks the same here: that one is left to the other signals.
        return Signal(
            "live_accuracy", None, OK, thresholds, reference.test_accuracy, None, n, False,
            f"skipped: feedback holds only corrections ({n} of {n}): no label agrees with its answer, and accuracy on them is "
            "not the model's; label a random sample of answers, right ones too (a label equal to the answer confirms it)",
            {"corrections": n, "new_labels": new_labels},
        )
    accuracy = correct / n
    low, high = wilson_interval(correct, n)
    detail = f"{correct}/{n} correct, 95% CI {low:.3f} to {high:.3f}"
    extra: dict[str, Any] = {"low": low, "high": high, "corrections": n - correct, "new_labels": new_labels}
    if reference.test_accuracy is None:
        return Signal("live_accuracy", accuracy, OK, thresholds, None, None, n, False, detail, extra)
    drop = reference.test_accuracy - accuracy
    if reference.test_n:
        # The test accuracy is a sample too (80 rows on the quickstart): the drop counts only when the 95% interval of
        # the difference of the two proportions is above 0, for watch as for drifted (as the text signals count their
        # excess only beyond noise): a bare point drop of 0.05 is chance on a few dozen labels.
        test_correct = round(reference.test_accuracy * reference.test_n)
        difference_low, difference_high = difference_interval(test_correct, reference.test_n, correct, n)
        beyond = difference_low > 0
        detail += (f"; test accuracy {reference.test_accuracy:.4f} ({test_correct}/{reference.test_n}), "
                   f"drop 95% CI {difference_low:+.3f} to {difference_high:+.3f}")
        extra |= {"difference_low": difference_low, "difference_high": difference_high, "test_n": reference.test_n}
    else:
        beyond = high < reference.test_accuracy
        detail += f"; test accuracy {reference.test_accuracy:.4f} (test size unknown: taken as exact)"
    judged = drop if beyond else 0.0
    status = status_for(judged, thresholds)
    # Nor one or two: 0/1 against 70/80 already has its difference interval above 0 (0.08 to 0.93).
    if status == DRIFTED and n < MIN_TEST_EXAMPLES:
        status = WATCH
        detail += f"; too few labelled answers for drift (< {MIN_TEST_EXAMPLES})"
    return Signal("live_accuracy", accuracy, status, thresholds, reference.test_accuracy, judged, n, False, detail, extra)


def compute_signals(traffic: Traffic, reference: Reference, config: MonitorConfig, *, seed: int = 0) -> list[Signal]:
    """Every signal of one traffic group against its reference (see the module docstring)."""
    t = config.thresholds
    signals: list[Signal] = []
    few = traffic.requests < config.min_requests
    few_note = f"only {traffic.requests} requests (< monitor.min_requests {config.min_requests}): not judged"
    sampled_note = f"sampled {traffic.text_requests} of the window's requests" if traffic.sampled else ""
    rng = random.Random(seed)
    train = reference.train_texts
    if len(train) > REFERENCE_SAMPLE:
        train = rng.sample(train, REFERENCE_SAMPLE)
    live = traffic.texts

    # -- input drift ---------------------------------------------------------------------------
    if not train:
        for name in ("length_ks", "centroid_distance", "oov_share"):
            signals.append(_skipped(name, "no training texts for this run"))
    elif not live:
        for name in ("length_ks", "centroid_distance", "oov_share"):
            signals.append(_skipped(name, "no request texts in the window"))
    else:
        live_distinct = distinct_texts(live)
        statistic, pvalue = length_ks([len(words(x)) for x in train], [len(words(x)) for x in live],
                                      sizes=(len(distinct_texts(train)), len(live_distinct)))
        judged = statistic if pvalue < 0.01 else 0.0
        signals.append(Signal(
            "length_ks", statistic, OK if few else status_for(judged, t.length_ks), t.length_ks, None, judged, len(live),
            traffic.sampled, "; ".join(filter(None, [f"p={pvalue:.3g}", sampled_note, few_note if few else ""])),
            {"train_mean_words": float(np.mean([len(words(x)) for x in train])), "live_mean_words": float(np.mean([len(words(x)) for x in live]))},
        ))
        centroid = CentroidModel(train)
        held = reference.heldout_texts
        if len(held) > REFERENCE_SAMPLE:
            held = rng.sample(held, REFERENCE_SAMPLE)
        # Undrifted samples shaped like the live one (as many distinct held-out rows, repeated as often): their mean is
        # what the number is from sample size alone (a centroid of few texts lies far from any other), their spread
        # how far it moves by chance at this size. The excess counts only beyond that chance (p < 0.01): fixed
        # thresholds against a window of 50 called a quarter of ordinary windows drifted (bench/monitor_quality.py).
        counts = draw_counts(len(held), list(live_distinct.values()), REFERENCE_DRAWS, seed) if held else None
        distance = centroid.distance(live)
        baseline = noise = 0.0
        if counts is not None:
            draws = centroid.draw_distances(held, counts)
            baseline, noise = float(np.mean(draws)), same_size_noise(draws, len(live), len(held))
        judged = beyond_noise(distance - baseline, noise)
        signals.append(Signal(
            "centroid_distance", distance, OK if few else status_for(judged, t.centroid_distance), t.centroid_distance, baseline, judged,
            len(live), traffic.sampled,
            "; ".join(filter(None, [f"held-out rows of the same size: {baseline:.4f} (noise {noise:.4f})" if held else "no held-out rows: judged as is",
                                    sampled_note, few_note if few else ""])),
            {"noise": noise},
        ))
        vocabulary = {w for x in train for w in words(x)}
        live_oov = oov_share(vocabulary, live)
        held_oov = noise = 0.0
        if counts is not None:
            unknown, total = oov_counts(vocabulary, held)
            held_oov = float(unknown.sum() / total.sum()) if total.sum() else 0.0
            with np.errstate(invalid="ignore", divide="ignore"):
                shares = np.nan_to_num((counts @ unknown) / (counts @ total))
            noise = same_size_noise(shares, len(live), len(held))
        judged = beyond_noise(live_oov - held_oov, noise)
        signals.append(Signal(
            "oov_share", live_oov, OK if few else status_for(judged, t.oov_share), t.oov_share, held_oov, judged, len(live), traffic.sampled,
            "; ".join(filter(None, [f"held-out rows: {held_oov:.4f} (noise at this size {noise:.4f})", sampled_note, few_note if few else ""])),
            {"noise": noise},
        ))

    predicted_n = sum(traffic.predicted.values())
    # Against the model's own answers on its test set where there is one: a model that over-predicts a
    # label on undrifted data does so live too, and that is not drift. Else against the training labels.
    expected, against = (reference.test_predictions, "test-set predictions") if reference.test_predictions else (reference.train_labels, "training labels")
    if not predicted_n:
        signals.append(_skipped("label_psi", "no classify answers in the window"))
    elif not expected:
        signals.append(_skipped("label_psi", "no training labels for this run", predicted_n))
    else:
        value = psi(expected, traffic.predicted)
        categories = len(set(expected) | set(traffic.predicted))
        noise = psi_noise(categories, sum(expected.values()), predicted_n)
        judged = value - noise
        top = traffic.predicted.most_common(3)
        signals.append(Signal(
            "label_psi", value, OK if few else status_for(judged, t.label_psi), t.label_psi, noise, judged, predicted_n, False,
            "; ".join(filter(None, [f"against the {against}, sampling noise {noise:.3f}", "most predicted: " + ", ".join(f"{k} {v}" for k, v in top), few_note if few else ""])),
        ))

    # -- confidence drift ----------------------------------------------------------------------
    top_p = traffic.top_probabilities
    if not top_p.size:
        signals.append(_skipped("confidence_drop", "no one-input classify answers in the window"))
    else:
        mean = float(top_p.mean())
        if reference.test_confidence is None:
            signals.append(Signal("confidence_drop", None, OK, t.confidence_drop, None, None, int(top_p.size), False,
                                  f"skipped: no test-set confidence to compare with (live mean top probability {mean:.4f})", {"live_mean": mean}))
        else:
            judged = reference.test_confidence - mean
            signals.append(Signal(
                "confidence_drop", judged, OK if few else status_for(judged, t.confidence_drop), t.confidence_drop, reference.test_confidence,
                judged, int(top_p.size), False, f"mean top probability: test {reference.test_confidence:.4f}, live {mean:.4f}" + (f"; {few_note}" if few else ""),
                {"live_mean": mean},
            ))
    answers = int(sum(traffic.predicted.values()))
    if reference.oos_label is None:
        signals.append(_skipped("oos_share", "the run has no out-of-scope rule (out_of_scope.json)", answers))
    elif not answers:
        signals.append(_skipped("oos_share", "no classify answers in the window"))
    else:
        # The answers themselves say which requests the rule rejected, whatever score it applies to.
        share = traffic.predicted[reference.oos_label] / answers
        signals.append(Signal(
            "oos_share", share, OK if few else status_for(share, t.oos_share), t.oos_share, reference.oos_threshold, share, answers,
            False, f"answers '{reference.oos_label}' (below the out-of-scope threshold {reference.oos_threshold:.4f})" + (f"; {few_note}" if few else ""),
        ))

    # -- live accuracy -------------------------------------------------------------------------
    if not traffic.feedback:
        signals.append(_skipped("live_accuracy", "no labelled feedback in the window"))
    else:
        signals.append(_live_accuracy(traffic.feedback, reference, t.accuracy_drop))

    # -- service -------------------------------------------------------------------------------
    if traffic.latency_ms.size:
        p50, p95, p99 = (float(x) for x in np.percentile(traffic.latency_ms, [50, 95, 99]))
        signals.append(Signal("latency_p95_ms", p95, status_for(p95, t.latency_p95_ms), t.latency_p95_ms, None, p95, int(traffic.latency_ms.size),
                              False, f"p50 {p50:.1f} ms, p99 {p99:.1f} ms", {"p50": p50, "p99": p99}))
    else:
        signals.append(_skipped("latency_p95_ms", "no latencies logged"))
    rate = traffic.server_errors / traffic.requests if traffic.requests else 0.0
    signals.append(Signal("error_rate", rate, status_for(rate, t.error_rate), t.error_rate, None, rate, traffic.requests, False,
                          f"{traffic.server_errors} server errors"
                          + (f" ({traffic.overloaded} refused as overloaded (429))" if traffic.overloaded else "")
                          + f", {traffic.client_errors} client errors (4xx, not judged)"))
    return signals


def _run_folder(run_id: str | None, registry_path: Path | None) -> Path | None:
    if run_id is None:
        return None
    if registry_path is not None and Path(registry_path).is_file():
        from tunelab.registry.store import Registry, RegistryError

        try:
            record = Registry(registry_path).get_run(run_id)
            return Path(record.run_dir) if record.run_dir else None
        except RegistryError:
            pass
    return None


def run_monitor(
    log_path: Path,
    config: MonitorConfig | None = None,
    *,
    registry_path: Path | None = None,
    model: str | None = None,
    run_dir: Path | None = None,
    until: datetime | None = None,
    plots_dir: Path | None = None,
) -> MonitorReport:
    """Judge the last ``config.window`` of ``log_path`` for every served name and run (or only ``model``).

    ``run_dir`` overrides the reference run (otherwise the registry's folder for the logged run id).

    Raises:
        DataError: when the log cannot be read, or ``run_dir`` is not a folder. ConfigError: for a bad window.
    """
    config = config or MonitorConfig()
    if run_dir is not None and not Path(run_dir).is_dir():
        # Named by the user: a typo must not become a report whose every signal against it is skipped, status ok.
        raise DataError(f"--run {run_dir}: no run folder there to compare the traffic with", "pass the folder of the served run (runs/NAME)")
    since, end = window_bounds(config.window_seconds, until)
    groups = [g for g in served_groups(log_path, since, end) if model is None or g[0] == model]
    reports = []
    for served, run_id, _count in groups:
        traffic = read_traffic(log_path, served, run_id, since, end, sample=config.sample)
        folder = Path(run_dir) if run_dir is not None else _run_folder(run_id, registry_path)
        reference = load_reference(folder, run_id)
        report = ModelReport(
            served, run_id, str(folder) if folder else None, traffic.requests, traffic.first, traffic.last,
            compute_signals(traffic, reference, config), list(reference.notes),
        )
        if plots_dir is not None:
            from tunelab.monitor.plots import plot_traffic

            report.plots = [str(p) for p in plot_traffic(traffic, reference, Path(plots_dir))]
        reports.append(report)
    unknown = {name: count for name, count in unknown_names(log_path, since, end).items() if model is None or name == model}
    if model is not None and not reports:
        if unknown:
            raise DataError(f"'{model}' is not served: its {unknown[model]} requests in {log_path} in the last {config.window} were refused (404)",
                            "check --model against the names the server serves (GET /v1/models)")
        raise DataError(f"no traffic for '{model}' in {log_path} in the last {config.window}", "check --model and --window")
    return MonitorReport(str(log_path), since, end, config.window, reports, datetime.now(UTC).isoformat(timespec="seconds"), unknown)


def load_monitor_config(path: Path | None, overrides: dict[str, Any] | None = None) -> MonitorConfig:
    """The ``monitor:`` section of a YAML file (a run config, or a file with only that section), plus overrides.

    Raises:
        ConfigError: for a missing file, bad YAML or a bad key (named).
    """
    from tunelab.config import read_config_file

    data: dict[str, Any] = {}
    if path is not None:
        raw = read_config_file(path)
        section = raw.get("monitor")
        section = {} if section is None else section  # `monitor:` with its keys commented out: the defaults
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: 'monitor' must be a mapping of keys to values")
        data = dict(section)
    data.update({key: value for key, value in (overrides or {}).items() if value is not None})
    # Validated as the monitor section of a run config: the same key errors, with did-you-mean.
    return parse_config({"task": "classify", "monitor": data}, source=str(path or "monitor")).monitor
