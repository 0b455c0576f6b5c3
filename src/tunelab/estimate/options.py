"""What each way forward costs, once and per month of re-tuning: the money side of ``tunelab advise``.

The ways: keep the strongest baseline; fine-tune here (this machine); fine-tune on a rented GPU (the
config's ``budget.gpu`` when it fits, else the cheapest one of the price table that fits); fine-tune through a provider's API (the cheapest hosted
fine-tuning price); label more examples first, then fine-tune here. Each is arithmetic over what the
estimate already computed (``plan.Estimate``: the time measured on this machine, each GPU's time and
price, each provider's price), never a second estimate. Re-tuning repeats the same run at a stated
cadence (``retrain_every``: once every 30 days by default), so its monthly cost is the one-off cost x
the runs a month.

Unknown is ``None``, never 0: this machine has no price unless the user gives one
(``local_usd_per_hour``), a provider's queue has no known duration, labelling has no price unless given.
Inference (answering requests afterwards) is not in these numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tunelab.estimate.plan import CloudEstimate, GPUEstimate, times_per_month


@dataclass
class OptionCost:
    """One way forward: how long until it is ready, what it costs, and what re-tuning it costs a month."""

    key: str  # keep | here | gpu | provider | label
    name: str
    seconds: float | None
    usd: float | None
    retune_seconds_per_month: float | None
    retune_usd_per_month: float | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def machine_usd(seconds: float | None, usd_per_hour: float | None) -> float | None:
    """What ``seconds`` of a machine priced ``usd_per_hour`` cost (None when either is unknown)."""
    if seconds is None or usd_per_hour is None:
        return None
    return seconds / 3600 * usd_per_hour


def _monthly(value: float | None, retrain_every_s: float) -> float | None:
    return None if value is None else value * times_per_month(retrain_every_s)


def keep_option(
    baseline: str, seconds: float | None, *, learns: bool, retrain_every_s: float, local_usd_per_hour: float | None = None,
) -> OptionCost:
    """Keep ``baseline``: ``seconds`` is what fitting it took here (0 for one that learns nothing).

    A baseline that learns from the data (a classical model) is refitted at every re-tuning; one that
    does not (a prompt, a remote model) costs nothing to re-tune.
    """
    if not learns:  # nothing is done at a re-tuning: nothing is paid
        return OptionCost("keep", f"keep {baseline}", seconds, machine_usd(seconds, local_usd_per_hour), 0.0, 0.0,
                          ["nothing to re-tune: it does not learn from your data"])
    return OptionCost(
        "keep", f"keep {baseline}", seconds, machine_usd(seconds, local_usd_per_hour),
        _monthly(seconds, retrain_every_s), _monthly(machine_usd(seconds, local_usd_per_hour), retrain_every_s),
    )


def here_option(seconds_here: float | None, *, retrain_every_s: float, local_usd_per_hour: float | None = None) -> OptionCost:
    """Fine-tune on this machine: the estimate's time here (None when it was not calibrated)."""
    notes = []
    if seconds_here is None:
        notes.append("time unknown: the estimate was not calibrated on this machine")
    if local_usd_per_hour is None:
        notes.append("money: your own machine (give its price per hour to count it)")
    usd = machine_usd(seconds_here, local_usd_per_hour)
    return OptionCost("here", "fine-tune here", seconds_here, usd, _monthly(seconds_here, retrain_every_s), _monthly(usd, retrain_every_s), notes)


def gpu_option(gpus: Sequence[GPUEstimate], *, retrain_every_s: float, named: str | None = None) -> OptionCost | None:
    """Fine-tune on the GPU the config names (``budget.gpu``) when it fits the run, else on the cheapest that fits.

    None without any GPU that fits.
    """
    fitting = [gpu for gpu in gpus if gpu.fits]
    if not fitting:
        return None
    notes = ["compute only: renting, start-up, setup and minimum billing are not counted"]
    chosen = next((gpu for gpu in gpus if named is not None and gpu.name.lower() == named.lower()), None)
    if chosen is not None and not chosen.fits:
        # The user's GPU cannot run it: pricing it would promise a run that does not start.
        notes.append(f"budget.gpu {chosen.name} does not fit this run in its {chosen.memory_gib:g} GiB: priced on the cheapest that does")
        chosen = None
    gpu = chosen or min(fitting, key=lambda g: (g.usd, g.seconds))
    notes.append(f"price: {gpu.source}")
    return OptionCost("gpu", f"fine-tune on a rented {gpu.name}", gpu.seconds, gpu.usd,
                      _monthly(gpu.seconds, retrain_every_s), _monthly(gpu.usd, retrain_every_s), notes)


def provider_option(cloud: Sequence[CloudEstimate], *, retrain_every_s: float, model: str | None = None) -> OptionCost | None:
    """Fine-tune through a provider's API: ``model``'s price when the table has it, else the cheapest (None: no price)."""
    chosen = [entry for entry in cloud if model is not None and entry.model.lower() == model.lower()] or list(cloud)
    if not chosen:
        return None
    entry = min(chosen, key=lambda e: e.usd)
    notes = [f"a different (hosted) model: its score is not measured here; price as published: {entry.published}",
             "time: the provider's queue (unknown)"]
    return OptionCost("provider", f"fine-tune {entry.provider} {entry.model} through its API", None, entry.usd,
                      None, _monthly(entry.usd, retrain_every_s), notes)


def labels_needed(target_train_size: float, train_size: int, train_share: float) -> int:
    """How many more examples to label so the training split reaches ``target_train_size``.

    Only ``train_share`` of newly labelled examples lands in training (the rest is held out for
    validation and test as now), so the count is the missing training examples / that share, rounded up.

    Raises:
        ValueError: for a share outside (0, 1].
    """
    if not 0 < train_share <= 1:
        raise ValueError(f"the training share must be in (0, 1], got {train_share}")
    missing = max(0.0, target_train_size - train_size)
    return int(math.ceil(round(missing / train_share, 9)))


def documents_needed(target_windows: float, windows: int, documents: int, labelled: int, tokens: int) -> tuple[int, float]:
    """A text run's :func:`labels_needed`: how many more documents like the user's bring training to ``target_windows``
    windows, and about how many tokens of text that is. The training split holds ``documents`` of the ``labelled`` in all
    (new documents are held out in the same share), ``windows`` windows and ``tokens`` tokens: text grows by documents,
    each of the average length.
    """
    count = labels_needed(target_windows * documents / windows, documents, documents / labelled)
    return count, count * tokens / documents


def label_option(
    examples: int, usd_per_example: float | None, seconds_here_at_size: float | None, *, retrain_every_s: float,
    local_usd_per_hour: float | None = None, what: str | None = None, per: str = "labelled example",
) -> OptionCost:
    """Label ``examples`` more, then fine-tune here on the larger data (``seconds_here_at_size``: its estimate here).

    Money: the labelling at ``usd_per_example`` (unknown without it) plus this machine's time when priced.
    Time: the training only (how long labelling takes is the user's to say). ``what`` names the data added when it
    is not labelled examples (a text run adds documents: "add 12 more documents (...)"), ``per`` what one is priced by.
    """
    notes = ["time: training on the larger data only; the labelling itself is not counted"]
    labelling = None if usd_per_example is None else examples * usd_per_example
    if usd_per_example is None:
        notes.append(f"money: give a price per {per} to count the labelling")
    compute = machine_usd(seconds_here_at_size, local_usd_per_hour)
    usd = None if labelling is None else labelling + (compute or 0.0)
    if labelling is not None and compute is None:
        notes.append("money: the labelling only (your own machine trains)")
    return OptionCost("label", f"{what or f'label {examples:,} more'}, then fine-tune here", seconds_here_at_size, usd,
                      _monthly(seconds_here_at_size, retrain_every_s), _monthly(compute, retrain_every_s), notes)
