"""What a user waits for: ``tunelab train`` against a TRL SFTTrainer script, each a whole process (issue 13).

The same job for both: the default model, 128 GSM8K question/answer conversations (``--train``), 32
held-out ones as the validation file (``--validation``), LoRA r=16 / alpha=32 on all linear layers,
batch 8, one epoch, max_length 512. Everything else is each tool's default (tunelab: its LoRA learning
rate, packing, validation during training and the final checkpoint; TRL: its learning rate, padding,
gradient checkpointing, one evaluation at the end of the epoch, see ``bench/trl_script.py``).

Each runner is one fresh process timed from launch to exit: interpreter start, imports, model
loading, training, validation and saving all count. The processes run one after the other,
alternating over ``--repeats``. Afterwards (untimed) one judge scores both saved results the same
way: the mean cross-entropy per answer token on the 32 validation conversations
(``common.completion_loss``, tunelab's tokenization). Real tokens are the training conversations'
tokens (at most max_length each): the same for both, so the whole-process speed ratio is the
inverse ratio of the seconds.

    PYTHONPATH=src python bench/whole_process.py --repeats 1 [--before-src /path/to/older/checkout/src]

Writes bench/results/whole_process.{json,md}. Needs ../shared/data/gsm8k, the default model and TRL
(``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    BENCH_DIR,
    machine_info,
    machine_markdown,
    markdown_table,
    sft_data,
    tunelab_source,
    write_results,
)


def child_env(threads: int | None, source: Path) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH")]))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def timed_process(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    load = os.getloadavg()[0]
    started = time.perf_counter()
    completed = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    if completed.returncode:
        raise SystemExit(f"{' '.join(command)} failed with exit code {completed.returncode}")
    return seconds, load, completed.stdout


def write_job(folder: Path, train: list, validation: list, args: argparse.Namespace) -> Path:
    for name, records in (("train", train), ("validation", validation)):
        with (folder / f"{name}.jsonl").open("w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps({"messages": list(record.messages)}) + "\n")
    config = {
        "task": "sft",
        "model": "default",
        "data": {"train": str(folder / "train.jsonl"), "validation": str(folder / "validation.jsonl"),
                 "test_size": 0.0, "max_length": args.max_length},
        "lora": {"r": 16, "alpha": 32, "target_modules": "all-linear"},
        "train": {"batch_size": args.batch_size, "epochs": 1, "output_dir": str(folder / "runs")},
    }  # fmt: skip
    path = folder / "config.yaml"
    path.write_text(json.dumps(config, indent=1))  # JSON is YAML
    return path


def judge(train: list, validation: list, tunelab_runs: dict[str, list[Path]], trl_outputs: list[Path], model_folder: Path, max_length: int) -> dict:
    """One yardstick for both: completion loss on the validation conversations, and the real training tokens."""
    from common import completion_loss
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunelab.data.tokenize import tokenize_sft
    from tunelab.runs import load_model, load_run

    tokenizer = load_model("default").tokenizer
    held_out = [tokenize_sft(r, tokenizer, max_length) for r in validation]
    tokens = sum(len(tokenize_sft(r, tokenizer, max_length).input_ids) for r in train)
    losses = {name: [completion_loss(load_run(run).model, held_out) for run in runs] for name, runs in tunelab_runs.items()}
    losses["trl"] = []
    for output in trl_outputs:
        base = AutoModelForCausalLM.from_pretrained(model_folder, dtype="float32")
        losses["trl"].append(completion_loss(PeftModel.from_pretrained(base, output), held_out))
    return {"real_training_tokens": tokens, "validation_loss": losses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=128)
    parser.add_argument("--validation", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of both processes (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--before-src", type=Path, help="another checkout's src: its tunelab train timed in the same run (before/after)")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL=KEY=VALUE[,KEY=VALUE]",
                        help="another `tunelab train` of this checkout with config overrides, e.g. 'no compile=train.compile=false' "
                        "(repeatable; each runs in every repeat, in the order given)")
    parser.add_argument("--cold-compile", action="store_true",
                        help="empty the compiled-kernel cache (TORCHINDUCTOR_CACHE_DIR, a fresh folder) before the first repeat")
    parser.add_argument("--name", default="whole_process", help="results file name under bench/results/")
    args = parser.parse_args()

    from tunelab.models.loader import local_folder_for
    from tunelab.runs import resolve_model

    model_folder = local_folder_for(resolve_model("default"))  # the transformers folder tunelab's default loads from
    train, validation, data_name = sft_data(args.train, args.validation, args.seed)
    # label -> (source, overrides); "tunelab" is this checkout with its defaults.
    sources = {"tunelab": (tunelab_source(), [])} | ({"before": (args.before_src.resolve(), [])} if args.before_src else {})
    for variant in args.variant:
        label, _, overrides = variant.partition("=")
        sources[label] = (tunelab_source(), [o for o in overrides.split(",") if o])
    work = Path(tempfile.mkdtemp(prefix="whole-process-"))
    if args.cold_compile:
        # A fresh compiled-kernel cache shared by this invocation's runs: the first compiling run pays the
        # compile, later ones (and later repeats) read it back, as a user's second run does.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work / "inductor")
    config = write_job(work, train, validation, args)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    runs: dict[str, list[dict]] = {name: [] for name in sources} | {"trl": []}
    tunelab_runs: dict[str, list[Path]] = {name: [] for name in sources}
    trl_outputs = []
    for repeat in range(args.repeats):
        for index, (label, (source, overrides)) in enumerate(sources.items()):
            seconds, load, stdout = timed_process(
                [sys.executable, "-m", "tunelab.cli.main", "train", str(config), f"name=run{index}-{repeat}", *overrides, "--json"],
                child_env(args.threads, source),
            )
            tunelab_runs[label].append(Path(json.loads(stdout)["run_dir"]))
            runs[label].append({"seconds": round(seconds, 1), "load_average_1min": load})
            print(f"{label} tunelab train: {seconds:.1f} s (load {load:.1f})", file=sys.stderr, flush=True)
        output = work / f"trl{repeat}"
        seconds, load, stdout = timed_process(
            [sys.executable, str(BENCH_DIR / "trl_script.py"), "--model", str(model_folder), "--train", str(work / "train.jsonl"),
             "--validation", str(work / "validation.jsonl"), "--output", str(output), "--batch-size", str(args.batch_size),
             "--max-length", str(args.max_length)], child_env(args.threads, tunelab_source()),
        )  # fmt: skip
        trl_outputs.append(output)
        runs["trl"].append({"seconds": round(seconds, 1), "load_average_1min": load, **json.loads(stdout.splitlines()[-1])})
        print(f"TRL script: {seconds:.1f} s (load {load:.1f})", file=sys.stderr, flush=True)
    judged = judge(train, validation, tunelab_runs, trl_outputs, model_folder, args.max_length)
    tokens = judged["real_training_tokens"]
    rows = []
    best = {name: min(r["seconds"] for r in entries) for name, entries in runs.items()}
    for name, entries in runs.items():
        loss = judged["validation_loss"][name]
        names = {"tunelab": "tunelab train", "before": f"tunelab train at {args.before_src}", "trl": "TRL SFTTrainer script"}
        # Not names.get(name, default): the default would be built for "trl" too, which has no source.
        label = names[name] if name in names else f"tunelab train, {name} ({' '.join(sources[name][1])})"
        rows.append([
            label,
            " / ".join(f"{r['seconds']:.1f}" for r in entries),
            " / ".join(f"{r['load_average_1min']:.1f}" for r in entries),
            round(tokens / best[name], 1),
            f"{best['trl'] / best[name]:.2f}x",
            " / ".join(f"{v:.4f}" for v in loss),
        ])  # fmt: skip
    machine = machine_info()
    result = {"started": started, "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "data": data_name,
              "settings": vars(args), "machine": machine, "runs": runs, **judged}  # fmt: skip
    headers = ["process", "seconds (each repeat)", "load at start", "real training tokens/s (best)", "speed vs TRL", "validation loss"]
    markdown = (
        f"### Whole process: `tunelab train` vs a TRL SFTTrainer script\n\n{machine_markdown(machine)}\n\n"
        f"{args.train} {data_name} conversations ({tokens} real tokens), {args.validation} validation, batch {args.batch_size}, "
        f"one epoch, max_length {args.max_length}, LoRA r=16 all-linear, threads {args.threads or 'default'}; {started}.\n\n"
        + markdown_table(headers, rows)
    )
    write_results(args.name, result, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
