"""An estimate as a person decides on it: the few lines the web interface and ``tunelab show`` print."""

from __future__ import annotations

from typing import Any

from tunelab.estimate.plan import duration, money, steps_text


def number(value: Any, digits: int = 4) -> str:
    """A number as a person reads it: ``digits`` significant digits, "-" when absent."""
    if value is None or isinstance(value, bool):
        return "-"
    if isinstance(value, int | float):
        return f"{value:.{digits}g}"
    return str(value)


def cheapest(estimate: dict[str, Any] | None) -> tuple[float | None, str]:
    """The cheapest estimated way to pay for the run elsewhere (a GPU that fits, or a hosted fine-tuning API)."""
    options = []
    for gpu in (estimate or {}).get("gpus") or []:
        if gpu.get("fits", True) and isinstance(gpu.get("usd"), int | float):
            options.append((float(gpu["usd"]), f"on {gpu.get('name')}"))
    for cloud in (estimate or {}).get("cloud") or []:
        if isinstance(cloud.get("usd"), int | float):
            options.append((float(cloud["usd"]), f"{cloud.get('provider')} {cloud.get('model')}"))
    if not options:
        return None, ""
    return min(options)


def estimate_summary(estimate: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The few lines of an estimate a person decides on: tokens, steps, time here, memory, money, budget (a run a
    provider trains: its job's billed tokens and price, ``provider_summary``)."""
    if not estimate:
        return []
    if estimate.get("backend") not in (None, "local"):
        return provider_summary(estimate)
    tokens = estimate.get("tokens") or {}
    memory = estimate.get("memory") or {}
    lines = [
        ("task / method", f"{estimate.get('task', '-')} / {estimate.get('method', '-')} ({estimate.get('precision', '-')})"),
        ("training examples", number(tokens.get("examples"))),
        ("training tokens", f"{tokens.get('train_tokens', 0):,}" if isinstance(tokens.get("train_tokens"), int) else "-"),
        ("optimizer steps", steps_text(tokens)),
    ]
    seconds = estimate.get("seconds") or {}
    if seconds:
        here = f" ({estimate['here']})" if estimate.get("here") else ""
        lines.append((f"time on this machine{here}", ", ".join(f"{step} {duration(value)}" for step, value in seconds.items()) + f"; total {duration(estimate.get('total_seconds'))}"))
    else:
        lines.append(("time on this machine", "not measured (calibration off)"))
    lines += [("note", note) for note in estimate.get("notes") or []]
    if memory:
        needed = f"{number((memory.get('total') or 0) / 2**30, 3)} GiB needed on {memory.get('device')}"
        if memory.get("available") is None:  # not measured: unknown, not "does not fit in 0 GiB"
            lines.append(("memory", f"{needed} (free memory not known)"))
        else:
            fits = "fits" if memory.get("fits") else "does NOT fit"
            lines.append(("memory", f"{needed}, {fits} in {number(memory['available'] / 2**30, 3)} GiB"))
    usd, where = cheapest(estimate)
    if usd is not None:
        lines.append(("cheapest elsewhere", f"{money(usd)} {where}"))
    remote = estimate.get("remote_baselines") or {}
    if remote:
        lines.append(("remote baselines", "; ".join(remote_price(name, priced) for name, priced in remote.items())))
    budget = estimate.get("budget") or {}
    if budget:
        lines.append(("budget", "over: " + "; ".join(budget.get("reasons") or []) if budget.get("over") else "within budget"))
    return lines


def remote_price(name: str, priced: dict[str, Any]) -> str:
    """One remote baseline's requests as a person decides on them (``RequestEstimate`` as a dict): unknown, never $0."""
    counted = f"{priced.get('requests', 0)} requests, {priced.get('cached', 0)} cached"
    if priced.get("local"):
        return f"{name} on a local endpoint, nothing billed ({counted})"
    if priced.get("usd_expected") is None:
        return f"{name} price unknown: {priced.get('model')} is not in the price table ({counted})"
    return f"{name} about {money(priced['usd_expected'])}, at most {money(priced.get('usd_max'))} ({counted})"


def provider_summary(estimate: dict[str, Any]) -> list[tuple[str, str]]:
    """The lines of a provider-trained run's estimate (``tasks.pipeline.estimate_cloud_run``, the run's own estimate step):
    what the provider bills and the price, nothing timed or priced on this machine (it trains nothing here)."""
    usd = estimate.get("usd")
    lines = [
        ("training examples", number(estimate.get("examples"))),
        ("tokens per epoch", f"{estimate.get('tokens_per_epoch', 0):,} (counted with {estimate.get('token_count', '-')})"),
        ("epochs (whole)", number(estimate.get("epochs"))),
        ("training tokens billed", f"{estimate.get('training_tokens', 0):,}"),
        ("price", f"{money(usd)} ({estimate.get('price_source')})" if usd is not None else "unknown: the model is not in the price table"),
    ]
    remote = estimate.get("remote_baselines") or {}
    if remote:
        lines.append(("remote baselines", "; ".join(remote_price(name, priced) for name, priced in remote.items())))
    budget = estimate.get("budget") or {}
    if budget:
        lines.append(("budget", "over: " + "; ".join(budget.get("reasons") or []) if budget.get("over") else "within budget"))
    return lines
