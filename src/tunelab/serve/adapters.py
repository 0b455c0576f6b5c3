"""The models one server answers for: one base model in memory, and any number of LoRA adapters on it.

An adapter may follow a registry alias (``--adapter router=alias:router``): its name then points at
an entry per run (``router--<run id>``); :meth:`ModelRegistry.refresh_aliases` registers the run an
alias now points at and moves the name to it in one assignment. A request resolves its name once, when
it arrives, so it is computed entirely by the run it started with, while the next request already
goes to the promoted one: no restart, no dropped request, no batch that mixes the two.

Adapters are registered by name at start-up (cheap: only their config is read) and loaded into the
shared base on first use with peft's multi-adapter support. At most ``max_loaded`` stay in memory;
the least recently used is deleted when another one comes in. Only the engine's single worker
thread calls ``activate``, so switching adapters never races with a running batch: each batch is
computed entirely under one adapter (or with adapters disabled, for the base).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.data.labels import LabelMap, OutOfScope
from tunelab.errors import ModelError, TunelabError
from tunelab.inference import Classifier
from tunelab.models.generate import context_length
from tunelab.models.loader import LoadedModel, place_for_inference
from tunelab.models.resolve import ModelSource
from tunelab.runs import Run, load_model, resolve_model
from tunelab.serve.errors import ServeError

if TYPE_CHECKING:
    from tunelab.registry.store import Registry, RunRecord


@dataclass(frozen=True)
class ServedModel:
    """One name clients can put in ``model``: the base, or an adapter on it."""

    name: str
    kind: str  # "base" or "adapter"
    task: str | None  # the run's task for runs ("classify", "sft", ...), None for a plain model
    run_dir: Path | None = None
    label_map: LabelMap | None = None
    system_prompt: str | None = None
    label_head: Any = None  # a classify run's trained label rows (tunelab.models.heads.LabelHead)
    out_of_scope: OutOfScope | None = None  # below its threshold a classify run answers its out-of-scope label
    run_id: str | None = None  # the registry id of the run (its folder name when unregistered): logged per request
    run: Run | None = None  # the run it answers with (None for a plain base model)

    @property
    def is_classifier(self) -> bool:
        return self.label_map is not None

    @property
    def max_length(self) -> int | None:
        """The longest prompt the run was trained and evaluated on (None: a plain model, only its context limits it)."""
        return self.run.max_length if self.run is not None else None


def _open_run(run_dir: Path) -> Run:
    """The finished run in ``run_dir``, or a ServeError naming what is wrong with it."""
    try:
        run = Run.open(run_dir)
    except TunelabError as error:
        raise ServeError(error.message, error.hint or "pass a run folder written by `tunelab train`") from None
    if not run.is_finished:
        raise ServeError(
            f"{run_dir} is not a finished tunelab run (it has no trained weights)", "pass a run folder written by `tunelab train`"
        )
    return run


def adapter_run(run_dir: Path, base: ModelSource | None) -> Run:
    """The run in ``run_dir`` once a server can serve it as a LoRA adapter over ``base`` (None: any base).

    The one rule of what a server answers with beside others: every ``--adapter`` and every name that follows an
    alias goes through it, and so does ``tunelab promote`` (with the base the alias's run is served over), so a
    promotion is refused with the reason the server would log.

    Raises:
        ServeError: naming the run folder and what is wrong (unfinished, no adapter, qlora, another base).
        ModelError: when one of its weight files is damaged.
    """
    run = _open_run(run_dir)
    if not run.is_adapter:
        raise ServeError(f"run {run_dir} has no LoRA adapter", "serve a full-model run on its own with --model RUN")
    if run.config.train.method == "qlora":
        raise ServeError(
            f"run {run_dir} was trained with qlora over a 4-bit base: over a server's shared full-precision base it "
            "would answer otherwise than it was evaluated",
            f"serve it on its own with --model {run_dir} (over its 4-bit base, as evaluated), or its merged export",
        )
    run.verify_weights()  # at start-up, not as a 500 on every request once loaded
    base_name = run.base.name
    if base is not None and not _same_model(resolve_model(base_name), base):
        raise ServeError(
            f"run {run_dir} was trained on '{base_name}', but it would be served over '{base.display_name}'",
            f"serve it over its own base: --model {base_name}",
        )
    return run


def run_id_of(run_dir: Path) -> str:
    """The registry id a run folder was registered under, else the folder's name."""
    try:
        return Run.open(run_dir).registry_id or Path(run_dir).name
    except Exception:  # noqa: BLE001 - an unreadable run still has a name to log
        return Path(run_dir).name


def _entry(name: str, kind: str, run: Run, run_id: str | None = None, base: Any = None) -> ServedModel:
    """A served run; an adapter's label rows are read over ``base`` (the shared base model's output head)."""
    label_head = None
    if kind == "adapter":
        from tunelab.models.adapters import label_rows_config, read_label_head

        label_head = read_label_head(run.folder.adapter, base, label_rows_config(run.folder.adapter)[1])
    return ServedModel(
        name, kind, run.task, run.root, run.label_map, run.system_prompt, label_head, out_of_scope=run.out_of_scope,
        run_id=run_id or run_id_of(run.root), run=run,
    )  # fmt: skip


def _run_as_base(name: str, loaded: LoadedModel) -> ServedModel:
    """A run loaded as ``Run.load`` gives it, served as the base model: its prompt, max_length and label rows."""
    return dataclasses.replace(_entry(name, "base", loaded.run), label_head=loaded.label_head)


def _same_model(first: ModelSource, second: ModelSource) -> bool:
    return (first.kind in ("default", "gguf") and second.kind in ("default", "gguf") and first.location == second.location) or (
        first.kind == second.kind and first.location == second.location
    )


@dataclass
class AliasBinding:
    """A served name that follows registry alias ``alias``; ``key`` is the entry of the run it points at now."""

    alias: str
    registry_path: Path
    key: str
    run_id: str


ALIAS_PREFIX = "alias:"


class ModelRegistry:
    """Maps served names to weights; see the module docstring."""

    def __init__(self, base: LoadedModel, base_name: str, *, max_loaded: int = 4, base_entry: ServedModel | None = None):
        if max_loaded < 1:
            raise ServeError("max_loaded_adapters must be at least 1")
        # Loaded on the CPU: on a GPU machine the server answers from the GPU where the model fits it (adapters loaded
        # later go where its layers are).
        place_for_inference(base.model)
        self.base = base
        self.base_name = base_name
        self.tokenizer = base.tokenizer
        self.max_loaded = max_loaded
        self._entries: dict[str, ServedModel] = {base_name: base_entry or ServedModel(base_name, "base", None)}
        self._loaded: OrderedDict[str, None] = OrderedDict()
        self._peft: Any = None  # the PeftModel wrapping the base, created with the first adapter
        self._aliases: dict[str, AliasBinding] = {}
        # The one classify inference of each served classify model (it keeps that model's prompt prefix cache).
        self._classifiers: dict[str, tuple[ServedModel, Classifier]] = {}
        self.loads = 0  # adapter loads so far (tests and metrics read it)
        self.alias_changes: list[tuple[str, str, str]] = []  # (name, old run id, new run id), for tests and logs

    # -- registration (start-up thread) --------------------------------------------------------
    def add_adapter(self, name: str, run_dir: Path, run_id: str | None = None) -> ServedModel:
        """Register the LoRA adapter of run ``run_dir`` under ``name`` without loading its weights.

        Raises:
            ServeError: for a taken name, a run without adapter/, or a run trained on another base.
        """
        if not name or name in self._entries:
            raise ServeError(f"adapter name '{name}' is empty or already used", "give each --adapter a distinct NAME=RUN")
        run = adapter_run(Path(run_dir), self.base.source)
        entry = _entry(name, "adapter", run, run_id, self.base.model)
        self._entries[name] = entry
        return entry

    def add_alias(self, name: str, alias: str, registry_path: Path) -> ServedModel:
        """Serve as ``name`` whatever run registry alias ``alias`` points at (followed by :meth:`refresh_aliases`).

        Raises:
            ServeError: for a taken name, an unset alias, or a run that cannot be served here.
        """
        if not name or name in self._entries or name in self._aliases:
            raise ServeError(f"adapter name '{name}' is empty or already used", "give each --adapter a distinct NAME")
        run_id, run_dir = _alias_target(alias, Path(registry_path))
        entry = self._entry_for_run(name, run_id, run_dir)
        self._aliases[name] = AliasBinding(alias, Path(registry_path), entry.name, run_id)
        return entry

    def _entry_for_run(self, name: str, run_id: str, run_dir: Path) -> ServedModel:
        key = f"{name}--{run_id}"
        return self._entries.get(key) or self.add_adapter(key, run_dir, run_id=run_id)

    def refresh_aliases(self) -> tuple[list[tuple[str, str, str]], list[ServeError]]:
        """Move every alias-following name to the run its alias points at now; return the moves made and, for each
        alias that now points at a run that cannot be served here, why (that name stays where it was)."""
        moves, failures = [], []
        for name, binding in list(self._aliases.items()):
            # Each alias on its own: one promoted to a run this server cannot serve must not stop the others following.
            try:
                run_id, run_dir = _alias_target(binding.alias, binding.registry_path)
                if run_id == binding.run_id:
                    continue
                entry = self._entry_for_run(name, run_id, run_dir)
            except TunelabError as error:  # a ServeError, or a damaged weight file (ModelError)
                failures.append(ServeError(f"'{name}' (alias {binding.alias}) stays on run {binding.run_id}: {error.message}", error.hint))
                continue
            # One assignment: a request that already resolved the name keeps the entry it got.
            self._aliases[name] = AliasBinding(binding.alias, binding.registry_path, entry.name, run_id)
            moves.append((name, binding.run_id, run_id))
        self.alias_changes.extend(moves)
        return moves, failures

    @property
    def follows_aliases(self) -> bool:
        return bool(self._aliases)

    # -- lookup (any thread) -------------------------------------------------------------------
    def names(self) -> list[str]:
        # Snapshots first: refresh_aliases adds entries from a worker thread, and iterating a dict that grows
        # meanwhile raises "dictionary changed size during iteration" (a 500 on /v1/models mid-promotion).
        entries, aliases = list(self._entries), list(self._aliases)
        hidden = {key for key in entries if any(key.startswith(f"{name}--") for name in aliases)}
        return [name for name in entries if name not in hidden] + aliases

    def get(self, name: str) -> ServedModel | None:
        binding = self._aliases.get(name)
        if binding is not None:
            return self._entries[binding.key]
        return self._entries.get(name)

    def classifier(self, entry: ServedModel) -> Classifier:
        """The classify inference of ``entry`` (a classify model): its prompt, ``max_length``, label rows and threshold.

        Kept per entry and checked by identity, so an entry replaced (a new adapter under the same name) gets its own.
        """
        kept = self._classifiers.get(entry.name)
        if kept is None or kept[0] is not entry:
            assert entry.label_map is not None and entry.max_length is not None
            classifier = Classifier(self.tokenizer, entry.label_map, entry.max_length, entry.system_prompt, entry.label_head, entry.out_of_scope,
                                    follow_cores=False, context=self.context_length)
            kept = self._classifiers[entry.name] = (entry, classifier)
        return kept[1]

    def loaded_adapters(self) -> list[str]:
        return list(self._loaded)

    @property
    def model(self) -> Any:
        """The module to call: the PeftModel once an adapter is loaded, else the plain base."""
        return self._peft if self._peft is not None else self.base.model

    @property
    def context_length(self) -> int:
        return context_length(self.base.model)

    # -- activation (engine worker thread only) ------------------------------------------------
    def _load(self, entry: ServedModel) -> None:
        from peft import PeftModel

        from tunelab.models.adapters import label_rows_config

        path = str(entry.run.folder.adapter)
        try:
            # The LoRA part only: the entry applies a classify run's label rows itself (entry.label_head).
            config, _ = label_rows_config(entry.run.folder.adapter)
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(self.base.model, path, adapter_name=entry.name, config=config)
            else:
                self._peft.add_adapter(entry.name, config)
                self._peft.load_adapter(path, adapter_name=entry.name)
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise ModelError(f"cannot load adapter '{entry.name}' from {path}: {error}") from None
        # New LoRA layers start in training mode: dropout would make answers random.
        self._peft.eval()
        self.loads += 1
        self._loaded[entry.name] = None
        while len(self._loaded) > self.max_loaded:
            oldest, _ = self._loaded.popitem(last=False)
            # set the newcomer first: peft re-points the active adapter when the active one is deleted
            self._peft.set_adapter(entry.name)
            self._peft.delete_adapter(oldest)

    @contextmanager
    def activate(self, name: str) -> Iterator[Any]:
        """Yield the module that computes ``name``'s outputs (worker thread only).

        Raises:
            KeyError: for an unregistered name. ModelError: when an adapter fails to load.
        """
        entry = self._entries[name]
        if entry.kind == "base":
            context = self._peft.disable_adapter() if self._peft is not None else nullcontext()
            with context:
                yield self.model
            return
        if name in self._loaded:
            self._loaded.move_to_end(name)
        else:
            self._load(entry)
        self._peft.set_adapter(name)
        yield self._peft


def _alias_target(alias: str, registry_path: Path) -> tuple[str, Path]:
    from tunelab.registry.store import Registry, RegistryError

    if not registry_path.is_file():
        raise ServeError(f"--adapter ...=alias:{alias}: no registry at {registry_path}", "pass --registry PATH")
    try:
        record = Registry(registry_path).resolve_alias(alias)
    except RegistryError as error:
        raise ServeError(error.message, error.hint) from None
    return record.id, _run_folder(record)


def _run_folder(record: RunRecord) -> Path:
    if not record.run_dir:
        raise ServeError(f"run {record.name} has no run folder to load its weights from")
    return Path(record.run_dir)


def _served_run(registry: Registry, alias: str) -> Run | None:
    """The run a server following ``alias`` serves now (None: the alias is unset, or its run cannot be opened)."""
    current = registry.alias(alias)
    try:
        run_dir = None if current is None else registry.get_run(current).run_dir
        return None if not run_dir else Run.open(run_dir)
    except TunelabError:
        return None  # a server could not follow it either: nothing to compare the new run with


def check_promotion(registry: Registry, alias: str, run: str) -> RunRecord:
    """``run``'s registry row, once a server following ``alias`` could serve it: the checks the server makes when the
    alias moves (a finished run with a run folder, :func:`adapter_run`), over the base the alias's run is served over,
    and for the task the alias's run answers (the clients of a classify name call /v1/classify, which an sft run
    refuses, and the other way round).

    Raises:
        RegistryError: for an unknown or unfinished run.
        ServeError: naming the run and why a server following ``alias`` could not serve it.
    """
    record = registry.finished_run(run)
    served = _served_run(registry, alias)
    try:
        candidate = adapter_run(_run_folder(record), None if served is None else resolve_model(served.base.name))
        if served is not None and candidate.config.task != served.config.task:
            raise ServeError(
                f"it is a {candidate.config.task} run, and the alias's run answers {served.config.task} requests",
                "promote it under another alias (a server can follow several: --adapter NAME=alias:ALIAS)",
            )
    except TunelabError as error:
        raise ServeError(f"run {record.name} ({record.id}) cannot be served under alias {alias}: {error.message}", error.hint) from None
    return record


def load_registry(
    model: str,
    adapters: list[tuple[str, str]] | None = None,
    *,
    dtype: str = "float32",
    max_loaded: int = 4,
    allow_network: bool = False,
    served_name: str | None = None,
    registry_path: Path | None = None,
) -> ModelRegistry:
    """Load the base model once and register the adapters (``[(name, run_dir), ...]``) on it.

    ``model`` may be a model name (default, folder, .gguf, hub id), a LoRA run (its base is served
    and the run becomes an adapter named after its folder) or a full-model run (served as is).
    An adapter ``alias:NAME`` follows registry alias NAME (in ``registry_path``).

    Raises:
        ServeError, ModelError: for unusable models, runs or adapter names.
    """
    adapters = list(adapters or [])
    source = resolve_model(model)
    if source.kind == "run":
        run_dir = Path(source.location)
        run = _open_run(run_dir)
        if run.is_adapter and run.config.train.method != "qlora":
            adapters.insert(0, (run_dir.name, str(run_dir)))
            source = resolve_model(run.base.name)
        else:
            # A full-model run, or a qlora run (trained and evaluated over its base quantized to 4-bit NF4: over the
            # full-precision base plain LoRA adapters share it would answer otherwise): served alone, as Run.load loads it.
            if adapters:
                raise ServeError(
                    f"{run_dir} is a {run.config.train.method} run: it is served on its own (as evaluated), not beside adapters",
                    "serve it on its own, or serve its base with --model and other runs with --adapter",
                )
            loaded = run.load(dtype=dtype, allow_network=allow_network)
            name = served_name or run_dir.name
            return ModelRegistry(loaded, name, max_loaded=max_loaded, base_entry=_run_as_base(name, loaded))
    loaded = load_model(source, dtype=dtype, allow_network=allow_network)
    name = served_name or ("default" if source.kind == "default" else source.display_name)
    base_entry = None
    if loaded.run is not None:
        # The adapter was trained on another run (DPO after SFT). As Run.load does for evaluation, that run's own
        # adapter is folded into the weights under this one (a PeftModel base would take the new adapter as a
        # second layer of LoRA), and that run answers as itself: its system prompt, max_length, label rows.
        if hasattr(loaded.model, "merge_and_unload"):
            loaded.model = loaded.model.merge_and_unload()
        base_entry = _run_as_base(name, loaded)
    registry = ModelRegistry(loaded, name, max_loaded=max_loaded, base_entry=base_entry)
    for adapter_name, run_dir in adapters:
        if str(run_dir).startswith(ALIAS_PREFIX):
            from tunelab.registry.store import default_registry_path

            registry.add_alias(adapter_name, str(run_dir)[len(ALIAS_PREFIX) :], Path(registry_path or default_registry_path()))
        else:
            registry.add_adapter(adapter_name, Path(run_dir))
    return registry
