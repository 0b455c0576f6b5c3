"""``tunelab retrain RUN --data new.jsonl``: train a challenger on old + new data; promote it only if it wins.

Reads top to bottom:

1. the champion: a run (id, name or folder, or ``alias:NAME``) and its saved resolved config;
2. the new labelled data: ``--data`` files plus, with a request log, the served inputs that got a
   corrected label (``POST /v1/feedback`` / ``tunelab feedback import``); a seeded share of it (``recent_share``)
   becomes the *recent slice* of the test set, a tenth of the rest (at least ``data.validation_size``) joins the
   validation records, the rest joins the training data. The cut is the split module's (``split_new``): near copies
   of one request on one side, each label's and each group's share held out, a label's last input kept in train;
3. the challenger: the champion's recipe (its config) on old train + new train, with the old
   validation records (+ new ones) and a fresh test set = old test + recent slice; new labels extend the label map
   (it is built from the training records); the pipeline's own steps train, evaluate and register it;
4. the champion evaluated on the same fresh test set; the paired bootstrap of ``evaluation.compare``
   on the whole test set and on the recent slice;
5. the decision: promote only when the challenger is not worse on the primary metric by more than
   ``margin`` (the 95% interval's low end above ``-margin``) *and* better on the recent slice (its
   interval above zero, on at least ``evaluation.compare.MIN_TEST_EXAMPLES`` recent rows: fewer give no verdict)
   *and*, when the test rows carry groups (``data.group_field``), not worse by more than ``margin`` on any group of at
   least ``MIN_TEST_EXAMPLES`` rows by the same rule (``group_comparisons``; a smaller group is said not judged).
   Otherwise the champion stays and the outcome says why. Promotion moves the
   registry alias (kept with its history; a server following the alias picks it up), and only while the
   alias still serves the champion the challenger was compared with.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.config import parse_config
from tunelab.errors import ConfigError, DataError, TunelabError
from tunelab.paths import atomic_write_text

EventFn = Callable[[str, str, dict[str, Any]], None]
PROMOTED, KEPT = "promoted", "kept champion"


@dataclass
class RetrainOutcome:
    """What a retrain decided and the numbers behind it; the CLI renders it."""

    decision: str  # PROMOTED or KEPT
    reasons: list[str]
    champion: dict[str, Any]  # id, name, run_dir
    challenger: dict[str, Any]  # id, name, run_dir
    primary: str
    margin: float
    overall: dict[str, Any]  # the paired comparison on the whole fresh test set (challenger vs champion)
    recent: dict[str, Any] | None  # the same on the recent slice
    sizes: dict[str, int]
    new_labels: list[str]
    alias: str | None = None
    alias_change: dict[str, Any] | None = None
    dropped: dict[str, int] = field(default_factory=dict)  # new records left out, by reason (see ``new_records``)
    warnings: list[str] = field(default_factory=list)
    # The challenger against the champion per group of the fresh test set (``GroupComparison`` as dicts); empty without groups.
    groups: list[dict[str, Any]] = field(default_factory=list)

    @property
    def promoted(self) -> bool:
        return self.decision == PROMOTED

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"promoted": self.promoted}


def _champion(run: str, registry: Any) -> Any:
    """The champion's registry record: ``alias:NAME``, a run id/name, or a run folder."""
    from tunelab.registry.store import RegistryError

    if run.startswith("alias:"):
        return registry.resolve_alias(run[len("alias:") :])
    folder = Path(run)
    if folder.is_dir():
        from tunelab.runs import Run

        try:
            registry_id = Run.open(folder).registry_id
        except TunelabError:
            registry_id = None
        if registry_id:
            return registry.get_run(registry_id)
        raise ConfigError(f"{folder} was not registered (it has no registry id)", "retrain a run `tunelab run` or `tunelab train` made")
    try:
        return registry.get_run(run)
    except RegistryError as error:
        raise ConfigError(error.message, error.hint) from None


# Why a new labelled record is left out of a retrain (``new_records``), as counted and shown to the user.
DROP_REASONS = {
    "in_train": "text already in the champion's training records",
    "in_validation": "text already in the champion's validation records",
    "in_test": "text already in the champion's test records (the old test set must stay comparable)",
    "repeated": "text repeated in the new data (the first copy is used)",
}


def new_records(new: list[Any], old: Any) -> tuple[list[Any], dict[str, int]]:
    """(the new records a retrain learns from, how many were left out by reason, see ``DROP_REASONS``).

    A corrected label for a text already in the old data does not enter the new data: the old copy stays
    where it was, so the old test set stays comparable and no text is both trained and tested on.
    """
    where = {}
    for part in ("test", "validation", "train"):  # the first part a text appears in, test first
        for record in getattr(old, part):
            where.setdefault(record.text, f"in_{part}")
    seen: set[str] = set()
    fresh, dropped = [], {}
    for record in new:
        reason = where.get(record.text) or ("repeated" if record.text in seen else None)
        if reason is not None:
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        seen.add(record.text)
        fresh.append(record)
    return fresh, dropped


def describe_dropped(dropped: dict[str, int], total: int) -> str:
    """One line on what ``new_records`` left out of ``total`` new records, and why."""
    if not total:
        return "no labelled records were found (no --data file, no labelled feedback in the log)"
    if not dropped:
        return f"all {total} new records are new"
    parts = ", ".join(f"{count} {DROP_REASONS[reason]}" for reason, count in dropped.items())
    return f"{sum(dropped.values())} of {total} new records left out: {parts}"


def split_new(fresh: list[Any], *, recent_share: float, validation_size: float, seed: int) -> tuple[list[Any], list[Any], list[Any]]:
    """(new train, new validation, recent test slice) of the new records ``fresh``: ``recent_share`` of them is the recent
    slice, a tenth of the rest (at least ``validation_size`` of it) validates, cut by the split module's one rule
    (``data.split.split_shares``, seeded by ``seed``): near copies of one request never on two sides, each label's and
    each group's (``data.group_field``) share held out, a label's last input kept in train."""
    from tunelab.data.split import split_shares

    # Some new records validate too: the best checkpoint is chosen on validation accuracy, and on the
    # old validation records alone it would prefer a checkpoint that has not learnt the new labels yet.
    # One order cut twice, as make_split cuts test then validation: the validation share is of what the slice leaves.
    new_train, new_validation, recent = split_shares(
        fresh, "classify", test_size=recent_share, validation_size=max(validation_size, 0.1) * (1 - recent_share), seed=seed
    )
    return new_train, new_validation, recent


def _write_jsonl(path: Path, records: list[Any], group_field: str | None = None) -> str:
    # The group column under the champion's data.group_field: read back by the challenger's config, which names it.
    def row(r: Any) -> dict[str, Any]:
        return {"text": r.text, "label": r.label} | ({group_field: r.group} if group_field else {})

    atomic_write_text(path, "".join(json.dumps(row(r), ensure_ascii=False) + "\n" for r in records))
    return str(path)


def _subset(result: Any, ids: set[str]) -> Any:
    rows = [row for row in result.rows if row["id"] in ids]
    return dataclasses.replace(result, rows=rows, n=len(rows), test_fingerprint="")


def group_comparisons(champion: Any, challenger: Any, *, seed: int, samples: int, name: str = "the champion") -> list[Any]:
    """The challenger's evaluation against the champion's on each group of the test set (``compare.compare_groups``:
    the paired bootstrap with ``seed`` and ``samples``, as overall), when the rows of both carry groups; else []."""
    from tunelab.evaluation.compare import compare_groups

    if not all(any(row.get("group") is not None for row in result.rows) for result in (champion, challenger)):
        return []
    return compare_groups(champion, challenger, name, seed=seed, samples=samples)


def group_judgement(groups: list[Any], margin: float) -> tuple[str | None, str]:
    """(why the challenger is refused on groups, None when it is not; what to add to the line that lets it through) for
    ``groups`` (``group_comparisons``): a group of at least ``MIN_TEST_EXAMPLES`` rows refuses when the challenger is
    significantly worse there (its whole 95% interval on the worse side of zero: the rule of the verdict's lost-group
    lines); a smaller one has no interval to judge by and is named not judged.

    Why not the overall rule (non-inferiority within ``margin``, which the whole test set must show): a group of 30 to
    100 rows has an interval of about ±0.1 to ±0.2, so "shown within 0.02" would refuse nearly every challenger whose
    answers differ at all; a guardrail blocks a shown loss, not the absence of proof on a small slice. ``margin`` is
    kept for the caller's text (the overall line names it).
    """
    from tunelab.evaluation.compare import MIN_TEST_EXAMPLES, WORSE

    if not groups:
        return None, ""
    judged = [group for group in groups if group.judged]
    small = ", ".join(f"'{group.group}' (n={group.n})" for group in groups if not group.judged)
    unjudged = f"; not judged (under {MIN_TEST_EXAMPLES} test examples): {small}" if small else ""
    worse = [
        f"on group '{group.group}' (n={group.n}): difference {group.difference:+.4f} (95% CI {group.low:+.4f} to {group.high:+.4f})"
        for group in judged
        if group.outcome == WORSE
    ]
    if worse:
        return f"significantly worse on {groups[0].metric} " + "; ".join(worse) + unjudged, unjudged
    names = ", ".join(f"'{group.group}'" for group in judged)
    return None, (f"; not significantly worse on any group ({names})" if judged else "") + unjudged


def decide(overall: Any, recent: Any, margin: float, groups: list[Any] | None = None) -> tuple[str, list[str]]:
    """(PROMOTED or KEPT, the reasons): the rule of step 5 over the challenger-vs-champion comparisons
    (``evaluation.compare.Comparison``) on the whole fresh test set and on its recent slice, and per group
    (``group_comparisons``; None or [] without groups: the decision and its text as without them)."""
    from tunelab.evaluation.compare import MIN_TEST_EXAMPLES

    primary = overall.primary
    main, slice_main = overall.metric(primary), recent.metric(primary)
    reasons = []
    # Non-inferiority: the worst plausible difference (interval end in the bad direction) within the margin.
    if main.not_compared:  # a primary metric that is not a number: no difference, no interval to show
        reasons.append(f"cannot be judged on {primary}: {main.not_compared}")
    elif not main.non_inferior(margin):
        reasons.append(
            f"not shown non-inferior on {primary}: difference {main.difference:+.4f} (95% CI {main.low:+.4f} to {main.high:+.4f}) "
            f"may be worse than the margin -{main.describe_margin(margin)}"
        )
    if recent.n < MIN_TEST_EXAMPLES:
        # A bootstrap interval of a few rows is degenerate (two rows both won give [+1, +1]): no verdict, no promotion.
        reasons.append(
            f"too few examples on the recent slice (n={recent.n}) for a verdict: it needs at least {MIN_TEST_EXAMPLES} "
            "(label more traffic, or raise --recent-share)"
        )
    elif slice_main.not_compared:
        reasons.append(f"cannot be judged on the recent slice (n={recent.n}): {slice_main.not_compared}")
    elif not slice_main.worst_case() > 0:
        reasons.append(
            f"not better on the recent slice (n={recent.n}): {primary} {slice_main.before:.4f} -> {slice_main.after:.4f}, "
            f"95% CI {slice_main.low:+.4f} to {slice_main.high:+.4f} includes or is below zero"
        )
    by_group, group_note = group_judgement(groups or [], margin)
    if by_group is not None:
        reasons.append(by_group)
    decision = KEPT if reasons else PROMOTED
    if not reasons:
        reasons.append(
            f"non-inferior on {primary} (difference {main.difference:+.4f}, 95% CI {main.low:+.4f} to {main.high:+.4f}, margin {main.describe_margin(margin)}) "
            f"and better on the recent slice ({slice_main.before:.4f} -> {slice_main.after:.4f}, 95% CI {slice_main.low:+.4f} to {slice_main.high:+.4f})"
            + group_note
        )
    return decision, reasons


def promote(registry: Any, alias: str, run: str, *, reason: str, details: dict[str, Any] | None = None,
            only_from: str | None = None, action: str = "promote") -> Any:
    """Point ``alias`` at ``run`` (``tunelab promote``, a retrain's winner) once a server following it could serve the run.

    Returns:
        The alias change (``registry.store.AliasChange``).

    Raises:
        ServeError: naming the run and why a server following ``alias`` would not serve it (nothing is written).
        RegistryError: for an unknown or unfinished run, a bad alias name; AliasMoved as ``Registry.set_alias``.
    """
    from tunelab.serve.adapters import check_promotion

    record = check_promotion(registry, alias, run)
    return registry.set_alias(alias, record.id, reason=reason, details=details, only_from=only_from, action=action)


class PromotionRefused(TunelabError):
    """``tunelab promote`` of a run not shown to be as good as the run the alias serves (nothing is written)."""


def _stored_evaluation(record: Any) -> tuple[Any, str | None]:
    """(the run's stored evaluation on its test split, None), or (None, why it has none a paired comparison can use)."""
    from tunelab.evaluation.result import EvalResult
    from tunelab.runs import RunFolder

    if not record.run_dir:
        return None, f"run {record.name} has no run folder"
    path = RunFolder(Path(record.run_dir)).tuned_eval
    if not path.is_file():
        return None, f"run {record.name} has no stored test evaluation ({path})"
    try:
        result = EvalResult.load(path)
    except DataError as error:
        return None, error.message
    if not result.rows or not result.test_fingerprint:
        return None, f"the evaluation {path} of run {record.name} has no per-example results or no test fingerprint"
    return result, None


def _retrain_champion_evaluation(record: Any, champion_id: str) -> Any:
    """The evaluation a retrain made of run ``champion_id`` on ``record``'s fresh test set, when ``record`` is the
    challenger of that retrain (``eval/champion.json``, the champion named in ``retrain.json``); else None."""
    from tunelab.evaluation.result import EvalResult
    from tunelab.runs import RunFolder

    if not record.run_dir:
        return None
    folder = RunFolder(Path(record.run_dir))
    try:
        if json.loads(folder.retrain_outcome.read_text())["champion"]["id"] != champion_id:
            return None
        return EvalResult.load(folder.champion_eval)
    except (OSError, ValueError, KeyError, TypeError, DataError):
        return None


def judge_promotion(registry: Any, alias: str, record: Any, *, force: bool = False) -> dict[str, Any] | None:
    """``record`` (a registry row) judged against the run ``alias`` serves (the incumbent) before a manual promotion:
    the paired bootstrap of both runs' stored test evaluations (with ``record``'s ``eval.seed`` and
    ``eval.bootstrap_samples``) and retrain's non-inferiority rule on the primary metric, with ``config.PROMOTION_MARGIN``
    as it reads on that metric (``MetricComparison.allowance``), and by the same rule on each group of at least
    ``MIN_TEST_EXAMPLES`` test rows when both evaluations' rows carry groups (``group_comparisons``). Runs judged on different or unknown test sets are not
    compared, except a retrain's challenger against its champion, judged on the retrain's evaluation of the champion on
    the challenger's test set. A run the alias served before is a return to it, as ``tunelab rollback`` makes: never
    refused (after a retrain the old champion's evaluation is on another test set, yet ``rollback`` goes back to it),
    the comparison shown when there is one.

    Returns:
        What the alias history keeps of the judgement (``summary`` is its line), or None when there is nothing to judge:
        no incumbent (a first promotion), or the incumbent is ``record``.

    Raises:
        PromotionRefused: when ``record`` may be worse than the incumbent by more than the margin, or the two cannot be
            compared, and the alias never served it; ``force`` promotes anyway, and the result says it was forced.
    """
    from tunelab.config import PROMOTION_MARGIN
    from tunelab.evaluation.compare import MIN_TEST_EXAMPLES, compare_evaluations
    from tunelab.evaluation.result import json_safe
    from tunelab.registry.store import RegistryError
    from tunelab.runs import bootstrap_settings

    incumbent_id = registry.alias(alias)
    if incumbent_id is None or incumbent_id == record.id:
        return None
    try:
        incumbent = registry.get_run(incumbent_id)
    except RegistryError:
        incumbent = None  # its row was deleted since: nothing to compare with, yet the alias must stay movable
    incumbent_name = incumbent_id if incumbent is None else incumbent.name
    force_hint = f"`tunelab promote {alias} {record.name} --force` promotes it anyway"
    served = f"{incumbent_name} (served by alias {alias})"
    returned = any(change.run_id == record.id for change in registry.alias_history(alias))
    back = f"{record.name} was served by alias {alias} before: a return to it is never refused, as `tunelab rollback` is not"
    if incumbent is None:
        old, why_old = None, f"the run alias {alias} serves ({incumbent_id}) is no longer in the registry"
    else:
        old, why_old = _stored_evaluation(incumbent)
    new, why_new = _stored_evaluation(record)
    if incumbent is not None and (old is None or new is None or old.test_fingerprint != new.test_fingerprint):
        # A retrain's challenger and its champion: the challenger's test set is the champion's plus a recent slice, and
        # the retrain evaluated the champion on it. Either way round: the challenger left unpromoted (lost, --no-promote,
        # the alias moved meanwhile; `retrain` points here to serve it), or the champion promoted back after it.
        fresh = _retrain_champion_evaluation(record, incumbent.id)
        if new is not None and fresh is not None and fresh.rows and fresh.test_fingerprint == new.test_fingerprint:
            old, why_old = fresh, None
        fresh = _retrain_champion_evaluation(incumbent, record.id)
        if old is not None and fresh is not None and fresh.rows and fresh.test_fingerprint == old.test_fingerprint:
            new, why_new = fresh, None
    why = why_new or why_old
    if why is None and old.test_fingerprint != new.test_fingerprint:
        why = f"{record.name} and {incumbent_name} were judged on different test sets"
    details: dict[str, Any] = {"compared_with": incumbent_id, "margin": PROMOTION_MARGIN, "forced": False, "returned": returned}
    if why is not None:
        if returned:
            return details | {"summary": f"{back} (not compared with {incumbent_name}: {why})"}
        if not force:
            raise PromotionRefused(
                f"{why}: {record.name} cannot be compared with {served}; not promoted (compare the two on one test set: "
                f"`tunelab retrain alias:{alias}`, or `tunelab eval` of both on one test file and `tunelab compare A.json B.json`; "
                f"{force_hint})"
            )
        return details | {"forced": True, "summary": f"not compared with {incumbent_name} ({why}): promoted anyway, forced with --force"}
    seed, samples = bootstrap_settings(record.run_dir)  # the judged run's own, as its verdict against its baselines
    comparison = compare_evaluations(old, new, seed=seed, samples=samples)
    main = comparison.metric(comparison.primary)
    margin = main.describe_margin(PROMOTION_MARGIN)
    line = (f"{comparison.primary} {main.before:.4f} -> {main.after:.4f}, difference {main.difference:+.4f} "
            f"(95% CI {main.low:+.4f} to {main.high:+.4f}, n={comparison.n}, paired bootstrap x{samples})")
    # NaN as null: the history is read back as JSON (`tunelab aliases --json`).
    details |= json_safe({"primary": comparison.primary, "difference": main.difference, "low": main.low, "high": main.high,
                          "n": comparison.n, "allowance": main.allowance(PROMOTION_MARGIN), "seed": seed, "samples": samples})
    if main.not_compared:
        problem = f"{record.name} cannot be judged against {served}: {main.not_compared}"
        line = f"n={comparison.n}"  # no number to show beside a NaN
    elif comparison.n < MIN_TEST_EXAMPLES:
        # The bootstrap interval of a few rows is too narrow to show anything (``evaluation.compare``): no verdict.
        problem = f"too few test examples (n={comparison.n}, at least {MIN_TEST_EXAMPLES} needed) to show {record.name} is not worse than {served}"
    elif not main.non_inferior(PROMOTION_MARGIN):
        problem = f"{record.name} may be worse than {served} by more than the margin {margin}"
    else:
        # Not worse on average, and per group when both runs' test rows carry groups (``data.group_field``): better
        # overall must not hide a country it may lose by more than the margin.
        groups = group_comparisons(old, new, seed=seed, samples=samples, name=incumbent_name)
        by_group, group_note = group_judgement(groups, PROMOTION_MARGIN)
        if groups:
            details["groups"] = [json_safe(dataclasses.asdict(group)) for group in groups]
        if by_group is None:
            return details | {"summary": f"{record.name} vs {incumbent_name}: {line}, not worse by more than the margin {margin}{group_note}"}
        problem = f"{record.name} may be worse than {served} on a group: {by_group}; overall"
    if returned:
        return details | {"summary": f"{back}: {problem}: {line}"}
    if not force:
        raise PromotionRefused(f"{problem}: {line}; not promoted ({force_hint})")
    return details | {"forced": True, "summary": f"{problem}: {line}; promoted anyway, forced with --force"}


def promote_checked(registry: Any, alias: str, run: str, *, reason: str, force: bool = False) -> Any:
    """``tunelab promote ALIAS RUN`` and the UI's Promote: :func:`promote`'s servability check, then ``run`` judged against
    the run ``alias`` serves (:func:`judge_promotion`, kept in the change's details: a run the alias served before is let
    through, as a rollback); a retrain's challenger and a rollback move the alias through :func:`promote` alone (the
    challenger was judged by the retrain, a rollback is never blocked).

    Raises:
        PromotionRefused: as :func:`judge_promotion`; ServeError, RegistryError: as :func:`promote` (checked first).
    """
    from tunelab.serve.adapters import check_promotion

    record = check_promotion(registry, alias, run)
    incumbent = registry.alias(alias)
    details = judge_promotion(registry, alias, record, force=force)
    # Moved only while the alias still serves the run just judged against (AliasMoved otherwise, nothing written).
    return registry.set_alias(alias, record.id, reason=reason, details=details, only_from=incumbent)


def rollback(registry: Any, alias: str, *, reason: str | None = None) -> Any:
    """Point ``alias`` back at the run it served before (``tunelab rollback``), once a server could still serve that run
    (its folder may have been deleted or damaged since).

    Raises:
        ServeError, RegistryError: as :func:`promote`; RegistryError when there is no earlier run.
    """
    return promote(registry, alias, registry.rollback_target(alias), reason=reason or "rollback", action="rollback")


def promote_challenger(
    registry: Any, alias: str, champion_id: str, challenger_id: str, *, reason: str, details: dict[str, Any],
) -> tuple[dict[str, Any] | None, str | None]:
    """(the alias change, None) after pointing ``alias`` at the challenger; (None, why) when it was not moved.

    The challenger won against ``champion_id`` only: when the alias serves another run now (moved while the
    retrain trained, or the champion was an older run of the monitored window), that run stays.
    """
    from tunelab.registry.store import AliasMoved
    from tunelab.serve.errors import ServeError

    try:
        # Checked and moved in one write: a promotion landing meanwhile is never overwritten.
        change = promote(registry, alias, challenger_id, reason=reason, details=details, only_from=champion_id)
    except ServeError as refused:
        return None, f"not promoted: {refused.message}"
    except AliasMoved as moved:
        serving = moved.current
        names = {run_id: registry.get_run(run_id).name for run_id in (serving, champion_id)}
        return None, (
            f"alias {alias} now serves run {names[serving]} ({serving}), not the champion {names[champion_id]} ({champion_id}) "
            f"the challenger was compared with: not promoted (retrain alias:{alias} to judge against the run it serves)"
        )
    return change.as_dict(), None


def retrain(
    run: str,
    data: list[str | Path] | None = None,
    *,
    registry_path: str | Path | None = None,
    log_path: str | Path | None = None,
    served_model: str | None = None,
    since: str | None = None,
    alias: str | None = None,
    margin: float | None = None,
    recent_share: float = 0.5,
    seed: int = 0,
    name: str | None = None,
    promote: bool = True,
    on_event: EventFn | None = None,
    train_progress: Callable[[Any], None] | None = None,
    eval_progress: Callable[[int], None] | None = None,
) -> RetrainOutcome:
    """Train a challenger of ``run`` on its data plus ``data`` (and the log's feedback); promote it only if it wins.

    Args:
        run: the champion: run id or name, run folder, or ``alias:NAME`` (then ``alias`` defaults to NAME).
        data: files of new labelled records (read with the champion's data settings).
        log_path: a request log whose labelled feedback joins the new data (``served_model``/``since`` filter it).
        alias: the registry alias to move on promotion (None: decide, but move nothing).
        margin: the non-inferiority margin on the primary metric (default: the config's ``monitor.margin``).
        recent_share: share of the new records (of each label and group) held out as the recent test slice.

    Raises:
        ConfigError: for an unknown run or a task retraining does not support.
        DataError: when there is no new labelled data, or a file is bad.
    """
    from tunelab.data.read import load_records
    from tunelab.data.records import ClassifyRecord
    from tunelab.data.split import load_split
    from tunelab.evaluation.compare import compare_evaluations
    from tunelab.evaluation.evaluate import evaluate
    from tunelab.evaluation.result import json_safe
    from tunelab.registry.store import Registry, RegistryError, default_registry_path
    from tunelab.runs import Run, is_run_folder
    from tunelab.tasks import pipeline

    def emit(step: str, status: str, details: dict[str, Any]) -> None:
        if on_event is not None:
            on_event(step, status, details)

    # 1. The champion and its recipe.
    registry = Registry(registry_path or default_registry_path())
    champion = _champion(run, registry)
    if alias is None and run.startswith("alias:"):
        alias = run[len("alias:") :]
    if not champion.run_dir or not is_run_folder(champion.run_dir):
        raise ConfigError(f"run {champion.name} has no usable run folder ({champion.run_dir})")
    champion_dir = Path(champion.run_dir)
    champion_run = Run.open(champion_dir)
    config = champion_run.config
    if config.task != "classify":
        raise ConfigError(f"retrain supports classify runs; {champion.name} is a {config.task} run")
    margin = config.monitor.margin if margin is None else margin
    old = load_split(champion_run.folder.split, config)

    # 2. The new labelled data: files + feedback on served requests.
    new: list[Any] = []
    for path in data or []:
        new += load_records(str(path), "classify", config.data)
    if log_path is not None:
        from tunelab.monitor.traffic import labelled_requests, served_groups

        labelled = labelled_requests(Path(log_path), model=served_model, since=since)
        if served_model is not None and not labelled:
            # A name nothing was served under (a typo, the alias for the served name) would leave the feedback out
            # without a word; a served name without corrections yet retrains on --data alone (the --every loop does).
            served = {group[0] for group in served_groups(Path(log_path), since or "", "9999")}
            others = sorted({str(item["model"]) for item in labelled_requests(Path(log_path), since=since)})
            if served_model not in served and others:
                raise DataError(
                    f"{log_path} holds no request for served name '{served_model}' (labelled feedback is on {', '.join(others)})",
                    "pass --served-model with the name clients sent in 'model'",
                )
        names = sorted({str(item["model"]) for item in labelled})
        if served_model is None and len(names) > 1:
            # Another model's corrections would bring its labels into the challenger and its rows into the recent
            # slice, where the champion (without those labels) can only lose: which name's feedback is a choice.
            raise DataError(
                f"{log_path} holds labelled feedback on several served names ({', '.join(names)})",
                f"pass --served-model NAME: the name {champion.name} is served under",
            )
        for item in labelled:
            new.append(ClassifyRecord(item["text"], item["label"], source=f"feedback:{item['response_id']}#{item['item']}"))
    fresh, dropped = new_records(new, old)
    if not fresh:
        raise DataError(
            f"no new labelled records to retrain on: {describe_dropped(dropped, len(new))}",
            "pass --data FILE with other texts, or a --log-db with labelled feedback on new requests",
        )
    new_train, new_validation, recent = split_new(fresh, recent_share=recent_share, validation_size=config.data.validation_size, seed=seed)
    outside = config.data.out_of_scope_label
    if outside is not None:
        # Confirmed out-of-scope requests are never trained on: in the training file the split step would share them
        # over validation and the test set (beyond old test + recent slice); in validation they calibrate the threshold.
        new_validation += [r for r in new_train if r.label == outside]
        new_train = [r for r in new_train if r.label != outside]
    if not recent:
        raise DataError(f"only {len(fresh)} new records: too few for a recent test slice", "label more traffic")
    old_labels = {r.label for r in old.train}
    new_labels = sorted({r.label for r in new_train} - old_labels)
    emit("data", "done", {"new": len(fresh), "dropped": dropped, "new_train": len(new_train), "new_validation": len(new_validation), "recent_test": len(recent), "new_labels": new_labels})

    # 3. The challenger: the champion's recipe on old + new data, through the pipeline's own steps.
    stamp = time.strftime("%Y%m%d-%H%M%S")
    challenger_name = name or f"{champion.name}-retrain-{stamp}"
    output_dir = Path(config.train.output_dir)
    data_dir = output_dir / "retrain-data" / challenger_name
    # The name is checked and its data folder claimed before anything is written: refused after writing, a taken name
    # left a never-run retrain's files behind, or replaced the data files of the retrain that owns it under it.
    try:
        taken = registry.get_run(challenger_name).run_dir or str(registry.path)
    except RegistryError:
        taken = str(output_dir / challenger_name) if (output_dir / challenger_name).exists() else None
    if taken is not None:
        raise ConfigError(f"a run named {challenger_name} already exists ({taken}): a retrain never overwrites one", "choose another --name")
    try:
        data_dir.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise ConfigError(
            f"{data_dir} already holds the data of a retrain named {challenger_name}",
            "choose another --name (the default name is stamped to the second: two retrains of one champion in one second share it)",
        ) from None
    group_field, group_warnings = config.data.group_field, []
    parts = {"train": list(old.train) + new_train, "validation": list(old.validation) + new_validation, "test": list(old.test) + recent}
    ungrouped = sum(r.group is None for records in parts.values() for r in records)
    if group_field is not None and ungrouped:
        # Feedback from the request log and out-of-scope requests carry no group: a file row without one is an invalid
        # record, so the challenger is read without groups, and judged overall only (said, never silently).
        group_field = None
        group_warnings.append(f"{ungrouped} records carry no {config.data.group_field} (feedback, out-of-scope requests): "
                              "the challenger is not judged by group")
    files = {
        "train": _write_jsonl(data_dir / "train.jsonl", parts["train"], group_field),
        "validation": _write_jsonl(data_dir / "validation.jsonl", parts["validation"], group_field) if parts["validation"] else None,
        "test": _write_jsonl(data_dir / "test.jsonl", parts["test"], group_field),
    }
    challenger_raw = config.model_dump(mode="json")
    challenger_raw["name"] = challenger_name
    challenger_raw["registry"] = str(registry.path)
    challenger_raw["data"].update(
        train=files["train"], validation=files["validation"], test=files["test"], format="jsonl", preset=None,
        text_field="text", label_field="label", limit=None, max_test_examples=None,
        # The champion's split already placed data.out_of_scope's requests in the validation and test files above;
        # read again, they would be shared out a second time (twice in the test set, some in validation and test).
        out_of_scope=None, group_field=group_field,
    )
    if not files["validation"]:
        challenger_raw["data"]["validation_size"] = 0.0
    # The champion is the opponent that matters here; the usual baselines were judged when it was made.
    challenger_raw["eval"]["baselines"] = []
    challenger_config = parse_config(challenger_raw, source=f"retrain of {champion.name}")
    context = pipeline.open_pipeline(
        challenger_config, on_event=on_event, train_progress=train_progress, eval_progress=eval_progress, calibrate=False
    )
    pipeline.check_step(context)
    split = pipeline.split_step(context)
    pipeline.estimate_step(context)
    pipeline.train_step(context)
    challenger_eval = pipeline.evaluate_step(context)
    outcome_run = pipeline.register_step(context)

    # 4. The champion on the same fresh test set; paired bootstrap overall and on the recent slice.
    emit("champion", "start", {"n": len(split.test)})
    # Every fresh test row, as the challenger was evaluated: the champion's own data.max_test_examples would judge it
    # on a sample, and the decision on the rows the two happen to share.
    every_row = config.data.model_copy(update={"max_test_examples": None})
    champion_eval = evaluate(
        champion_run.load(), split.test, "classify", config=challenger_config.eval, data_config=every_row,
        baseline=False, train_ids=[r.id for r in split.train], progress=eval_progress,
    )
    champion_eval.save(context.run.champion_eval)
    context.close()  # the run folder's lock: the challenger's run is complete
    emit("champion", "done", {"metrics": {"accuracy": champion_eval.metrics.get("accuracy")}})
    samples, boot_seed = challenger_config.eval.bootstrap_samples, challenger_config.eval.seed
    overall = compare_evaluations(champion_eval, challenger_eval, seed=boot_seed, samples=samples)
    recent_texts = {r.text for r in recent}
    recent_ids = {r.id for r in split.test if r.text in recent_texts}
    recent_cmp = compare_evaluations(_subset(champion_eval, recent_ids), _subset(challenger_eval, recent_ids), seed=boot_seed, samples=samples)

    # 5. The decision.
    primary = overall.primary
    groups = group_comparisons(champion_eval, challenger_eval, seed=boot_seed, samples=samples)
    decision, reasons = decide(overall, recent_cmp, margin, groups)
    change = None
    if decision == PROMOTED and alias and promote:
        change, refused = promote_challenger(
            registry, alias, champion.id, outcome_run.registry_id, reason="retrain: " + reasons[0],
            details={"champion": champion.id, "overall": overall.summary, "recent": recent_cmp.summary}
            | ({"groups": [json_safe(dataclasses.asdict(group)) for group in groups]} if groups else {}),
        )
        if refused:
            decision, reasons = KEPT, [refused, f"against the champion {champion.name}: {reasons[0]}"]
    outcome = RetrainOutcome(
        decision=decision, reasons=reasons,
        champion={"id": champion.id, "name": champion.name, "run_dir": str(champion_dir)},
        challenger={"id": outcome_run.registry_id, "name": outcome_run.name, "run_dir": str(outcome_run.run_dir)},
        primary=primary, margin=margin, overall=overall.to_dict(), recent=recent_cmp.to_dict(),
        sizes={"old_train": len(old.train), "new_train": len(new_train), "new_validation": len(new_validation), "recent_test": len(recent), "test": len(split.test)},
        new_labels=new_labels, alias=alias, alias_change=change, dropped=dropped,
        warnings=([f"new data: {describe_dropped(dropped, len(new))}"] if dropped else []) + group_warnings + list(overall.warnings),
        groups=[json_safe(dataclasses.asdict(group)) for group in groups],
    )
    atomic_write_text(context.run.retrain_outcome, json.dumps(outcome.as_dict(), indent=1, default=str))
    emit("decision", "done", {"decision": decision, "reasons": reasons})
    return outcome
