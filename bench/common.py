"""Shared pieces of the benchmarks: machine facts, data, the one validation-loss function, results.

Every training benchmark runs in its own subprocess (``run_child``) so that its peak RSS is its own
and no run inherits another's warmed caches, threads or allocator state. A child prints one JSON
object on its last stdout line; the parent collects them and writes ``bench/results/<name>.json``
plus a markdown table.

Nothing here is imported by tunelab itself: bench/ is a consumer of the library, like a user.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
SHARED_DATA = Path(os.environ.get("TUNELAB_SHARED_DATA", REPO_DIR.parent / "shared" / "data"))
# When the benchmark runs from a git worktree the shared data sits next to the main checkout.
if not SHARED_DATA.is_dir() and Path("/work/shared/data").is_dir():
    SHARED_DATA = Path("/work/shared/data")


# --------------------------------------------------------------------------------------------- machine


def package_versions(names: tuple[str, ...]) -> dict[str, str]:
    """Each installed package's version, "not installed" for the others."""
    from importlib import metadata

    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def machine_info() -> dict[str, Any]:
    """CPU model, cores, bf16 support, threads and library versions: the header of every table."""
    import torch

    from tunelab import runtime

    versions = package_versions(("tunelab", "torch", "transformers", "peft", "accelerate", "datasets", "trl"))
    try:
        memory_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        memory_gb = None
    return {
        "cpu": runtime.cpu_model_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": memory_gb,
        "bf16_native": runtime.bf16_native("cpu"),
        "cpu_bf16_flags": sorted(runtime.BF16_CPU_FLAGS & runtime.cpu_flags()),
        "cuda": torch.cuda.is_available(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": os.getloadavg(),
        "versions": versions,
    }


class BusyCores:
    """Busy cores of the whole machine over a window (``/proc/stat``), and what a measured child used of them."""

    def __init__(self) -> None:
        self.mean: float | None = None  # all processes, averaged over the window
        self.child_cores: float | None = None  # set by the caller: the measured process's CPU seconds / wall
        self._start: tuple[int, int] | None = None
        self._started = 0.0

    @property
    def mean_others(self) -> float | None:
        """Busy cores that were not the measured process (a hog, other people's jobs)."""
        if self.mean is None:
            return None
        return round(max(0.0, self.mean - (self.child_cores or 0.0)), 2)


def _cpu_jiffies() -> tuple[int, int] | None:
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    steal = fields[7] if len(fields) > 7 else 0
    return sum(fields[:8]) - idle - steal, sum(fields[:8])


@contextlib.contextmanager
def busy_cores_sampler() -> Iterator[BusyCores]:
    """Measure the machine's mean busy cores over the ``with`` block (None where /proc/stat is absent)."""
    sample = BusyCores()
    start, started, before = _cpu_jiffies(), time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        yield sample
    finally:
        end, wall = _cpu_jiffies(), time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if start and end and end[1] > start[1]:
            sample.mean = round((end[0] - start[0]) / (end[1] - start[1]) * (os.cpu_count() or 1), 2)
        if sample.child_cores is None and wall > 0:
            used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            sample.child_cores = round(used / wall, 2)


HOG_SOURCE = "import sys, time\nend = time.time() + float(sys.argv[1])\nwhile time.time() < end:\n    pass\n"


@contextlib.contextmanager
def cpu_hog(seconds: float, cpu: int | None = None) -> Iterator[subprocess.Popen | None]:
    """A bounded busy loop in its own process for at most ``seconds`` (0: none), stopped when the block ends.

    It stops by itself at the deadline even if this process dies, so a crashed benchmark never leaves
    a core taken. ``cpu`` pins it to one core (``os.sched_setaffinity``); None lets the kernel place it.
    """
    if seconds <= 0:
        yield None
        return
    process = subprocess.Popen([sys.executable, "-c", HOG_SOURCE, str(seconds)])
    if cpu is not None:
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setaffinity(process.pid, {cpu})
    try:
        time.sleep(0.5)  # running before the measured work starts
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def best_of(runs: int, work: Any) -> float:
    """The shortest of ``runs`` timings of ``work()`` in seconds (the least disturbed by other work on the machine)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------------------ data


def gsm8k_records(limit: int | None = None) -> list:
    """GSM8K question/answer pairs as SFTRecords (file order; the caller splits)."""
    from tunelab.data.records import SFTRecord

    path = SHARED_DATA / "gsm8k" / "train.jsonl"
    records = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            row = json.loads(line)
            messages = ({"role": "user", "content": row["question"]}, {"role": "assistant", "content": row["answer"]})
            records.append(SFTRecord(messages, source=f"{path}:{line_number}"))
            if limit and len(records) >= limit:
                break
    return records


def banking77_records(limit: int | None = None) -> list:
    """BANKING77 text/category rows as ClassifyRecords (file order)."""
    import csv

    from tunelab.data.records import ClassifyRecord

    path = SHARED_DATA / "banking77" / "train.csv"
    records = []
    with path.open(encoding="utf-8", newline="") as handle:
        for line_number, row in enumerate(csv.DictReader(handle), 2):
            records.append(ClassifyRecord(row["text"], row["category"], source=f"{path}:{line_number}"))
            if limit and len(records) >= limit:
                break
    return records


def split_train_validation(records: Sequence, n_train: int, n_validation: int, seed: int = 0) -> tuple[list, list]:
    """A seeded shuffle, then the first n_train for training and the next n_validation held out."""
    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)
    if len(shuffled) < n_train + n_validation:
        raise SystemExit(f"need {n_train + n_validation} records, have {len(shuffled)}")
    return shuffled[:n_train], shuffled[n_train : n_train + n_validation]


def sft_data(n_train: int, n_validation: int, seed: int = 0) -> tuple[list, list, str]:
    """Train and held-out SFT records: GSM8K from the shared data, else the project's own example."""
    if (SHARED_DATA / "gsm8k" / "train.jsonl").is_file():
        train, validation = split_train_validation(gsm8k_records(), n_train, n_validation, seed)
        return train, validation, "gsm8k"
    example = REPO_DIR / "examples" / "sft" / "train.jsonl"
    if not example.is_file():
        raise SystemExit(f"no SFT data: neither {SHARED_DATA}/gsm8k nor {example} exists")
    from tunelab.data.records import SFTRecord

    rows = [json.loads(line) for line in example.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = [
        SFTRecord(({"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}))
        for r in rows
    ]
    train, validation = split_train_validation(records, n_train, n_validation, seed)
    return train, validation, str(example.relative_to(REPO_DIR))


def classify_data(n_train: int, n_validation: int, seed: int = 0) -> tuple[list, list, str]:
    """Train and held-out BANKING77 records; held-out records whose label training never saw are dropped
    (neither trainer can know a label it was never shown, and tunelab refuses them)."""
    train, validation = split_train_validation(banking77_records(), n_train, 4 * n_validation, seed)
    seen = {r.label for r in train}
    validation = [r for r in validation if r.label in seen][:n_validation]
    return train, validation, "banking77"


def task_data(task: str, n_train: int, n_validation: int, seed: int = 0) -> tuple[list, list, str]:
    return (sft_data if task == "sft" else classify_data)(n_train, n_validation, seed)


# Every training benchmark runs WARMUP_STEPS untimed steps first and TAIL_STEPS untimed steps last
# (tunelab validates and checkpoints at its final step; TRL runs the same total so both make the
# same number of optimizer updates before their validation loss is measured).
WARMUP_STEPS = 1
TAIL_STEPS = 1


def add_training_args(parser: Any) -> None:
    """The CLI both training benchmarks share, so peer and tunelab always get the same settings."""
    parser.add_argument("--task", choices=["sft", "classify"], default="sft")
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps (plus one untimed before and after)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (tunelab's LoRA default)")
    parser.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32")
    parser.add_argument("--validation", type=int, default=64, help="held-out examples for validation loss / accuracy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-base", action="store_true", help="also measure the untrained model")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")


def classify_label_map(train_records: Sequence, tokenizer: Any) -> Any:
    """The label -> token map tunelab builds for these training records (sorted labels, as its recipe does)."""
    from tunelab.data.labels import LabelMap

    return LabelMap.for_records(train_records, tokenizer)


# ---------------------------------------------------------------------------------------- evaluation


def completion_loss(model: Any, examples: Sequence, *, batch_size: int = 8) -> float:
    """Mean cross-entropy per trained (completion) token of ``model`` on tokenized SFT examples.

    The one yardstick for every SFT run here, TRL's and tunelab's alike: fp32, no dropout, no
    autocast, each trained token weighted equally (a sum over the whole set divided by its count,
    not a mean of per-batch means).
    """
    import torch

    from tunelab.data.tokenize import IGNORE_INDEX

    was_training = model.training
    model.eval()
    total_loss = 0.0
    total_tokens = 0
    ordered = sorted(examples, key=lambda e: len(e.input_ids))  # similar lengths batch together: less padding
    with torch.inference_mode():
        for start in range(0, len(ordered), batch_size):
            batch = ordered[start : start + batch_size]
            width = max(len(e.input_ids) for e in batch)
            input_ids = torch.zeros(len(batch), width, dtype=torch.long)
            labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
            attention = torch.zeros(len(batch), width, dtype=torch.long)
            for row, example in enumerate(batch):
                n = len(example.input_ids)
                input_ids[row, :n] = torch.tensor(example.input_ids)
                labels[row, :n] = torch.tensor(example.labels)
                attention[row, :n] = 1
            logits = model(input_ids=input_ids, attention_mask=attention).logits.float()
            targets = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
            )
            total_loss += loss.item()
            total_tokens += int((targets != IGNORE_INDEX).sum())
    model.train(was_training)
    return total_loss / max(total_tokens, 1)


def label_scores_accuracy(model: Any, examples: Sequence, label_token_ids: Sequence[int], *, batch_size: int = 16) -> float:
    """Accuracy of one-pass label scoring: argmax over the label tokens at the prompt's last position.

    The same judge for the TRL-trained and the tunelab-trained classifier. Prompts are left-padded so
    the last position of every row is the prompt's last token.
    """
    import torch

    model.eval()
    label_ids = torch.tensor(list(label_token_ids))
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            width = max(len(e.input_ids) for e in batch)
            input_ids = torch.zeros(len(batch), width, dtype=torch.long)
            attention = torch.zeros(len(batch), width, dtype=torch.long)
            for row, example in enumerate(batch):
                n = len(example.input_ids)
                input_ids[row, width - n :] = torch.tensor(example.input_ids)
                attention[row, width - n :] = 1
            position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
            hidden = model(input_ids=input_ids, attention_mask=attention, position_ids=position_ids, logits_to_keep=1).logits
            scores = hidden[:, -1, :].float()[:, label_ids]
            predicted = scores.argmax(-1)
            correct += int((predicted == torch.tensor([e.label for e in batch])).sum())
    return correct / max(len(examples), 1)


# -------------------------------------------------------------------------------------------- running


def child_result(result: dict[str, Any]) -> None:
    """Print a child's result as the last stdout line (what ``run_child`` reads back)."""
    result.setdefault("peak_rss_mb", round(peak_rss_mb(), 1))
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
        # The whole child's peak on the GPU (training and the evaluation after it), as torch's allocator saw it.
        result.setdefault("peak_cuda_mb", round(sys.modules["torch"].cuda.max_memory_allocated() / 2**20, 1))
    sys.stdout.flush()
    print("\nBENCH_RESULT " + json.dumps(result), flush=True)


def tunelab_source() -> Path:
    """The tunelab source tree the children import: this checkout's ``src`` (not an installed copy),
    or ``$BENCH_TUNELAB_SRC`` to measure another checkout with the same benchmark code."""
    return Path(os.environ.get("BENCH_TUNELAB_SRC") or REPO_DIR / "src")


def run_child(script: str, args: Sequence[str], *, timeout: float | None = None) -> dict[str, Any]:
    """Run ``bench/<script>`` with ``args`` in a fresh interpreter and return its JSON result.

    The child's stderr passes through (progress is visible); a failed child becomes an ``error`` entry.
    """
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tunelab_source()), str(BENCH_DIR), env.get("PYTHONPATH")]))
    command = [sys.executable, str(BENCH_DIR / script), *args]
    started = time.perf_counter()
    try:
        completed = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s", "command": " ".join(command)}
    wall = time.perf_counter() - started
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith("BENCH_RESULT "):
            result = json.loads(line[len("BENCH_RESULT ") :])
            result["child_wall_s"] = round(wall, 1)
            return result
    tail = "\n".join(completed.stdout.splitlines()[-20:])
    return {"error": f"exit code {completed.returncode}, no result", "stdout_tail": tail, "command": " ".join(command)}


def write_results(name: str, data: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``bench/results/<name>.json`` and ``<name>.md`` (atomically) and return both paths."""
    from tunelab.paths import atomic_write_text

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS_DIR / f"{name}.json"
    markdown_path = RESULTS_DIR / f"{name}.md"
    atomic_write_text(json_path, json.dumps(data, indent=2, default=str) + "\n")
    atomic_write_text(markdown_path, markdown.rstrip() + "\n")
    return json_path, markdown_path


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_markdown(info: dict[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    flags = ", ".join(info["cpu_bf16_flags"]) or "none"
    return (
        f"Machine: {info['cpu']}, {info['cores']} cores ({info['torch_threads']} torch threads), "
        f"{info['memory_gb']} GiB RAM, bf16 flags: {flags} (bf16 native: {info['bf16_native']}), "
        f"CUDA: {info['cuda']}, load average at start {tuple(round(x, 2) for x in info['load_average'])}.  \n"
        f"Versions: {versions}, Python {info['python']}."
    )


def atomic_json(path: Path, data: Any) -> None:
    from tunelab.paths import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one result row to a JSON-lines results file (the levers' and probes' accumulating results)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
