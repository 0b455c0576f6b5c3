"""Run the README's fenced commands as a new user would, in a fresh clone, and say what ran and what was skipped.

    python tests/readme/run_readme.py            # tiny settings where a command trains (minutes, not an hour)
    python tests/readme/run_readme.py --as-written
    python tests/readme/run_readme.py --only Export --keep

Every command of every ``bash`` block (and the ``python`` blocks) has an entry in ``PLAN``: run it, or
skip it with the reason (a GPU, the network, a tool not installed here, a synopsis with placeholders,
files of the reader's own). ``tests/readme/test_readme.py`` fails when a README command has no entry,
so a new command in the README is either run here or skipped with its reason.

The clone is ``git clone`` of this checkout's HEAD (committed files only, as a user gets them) into a
temporary folder, with ``../shared`` linked beside it when this checkout has the shared public data.
Commands run in order, each block after the ones before it (a later block may use an earlier one's run).
A command ending in ``&`` (a server) runs in the background until its address answers, and is stopped
at the end of its block. In tiny mode a command that trains gets the overrides of its entry (fewer steps, fewer
test examples) appended; the command itself is otherwise the README's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


@dataclass(frozen=True)
class Run:
    """Run the command; in tiny mode with ``tiny`` appended (dotted overrides or options)."""

    tiny: tuple[str, ...] = ()
    serves: int | None = None  # the port a background server answers on
    expect_exit: tuple[int, ...] = (0,)


@dataclass(frozen=True)
class Skip:
    reason: str


TINY_CLASSIFY = ("train.max_steps=4", "data.max_test_examples=16", "eval.baselines=[base,classical]")
TINY_SFT = ("train.max_steps=2", "data.limit=24", "data.max_test_examples=4", "eval.max_new_tokens=16", "eval.baselines=[base]")
SYNOPSIS = "a synopsis with placeholders (CONFIG, RUN, [options])"
YOURS = "names the reader's own files (a config or data not in the repository)"
SERVED = "talks to a running server of the deployment walkthrough (serving is tested in tests/unit/serve)"

PLAN: dict[str, Run | Skip] = {
    # Two commands
    "make demo": Skip("installs a virtualenv, then runs `tunelab run examples/support-routing/config.yaml` (run below as name=r1)"),
    "make test": Skip("the test suite itself"),
    # Should I fine-tune at all?
    "tunelab advise examples/support-routing/config.yaml": Run(("--budget-minutes", "1")),
    "tunelab advise CONFIG --budget-minutes 30 --label-usd 0.25 --retrain-every 7d": Skip(SYNOPSIS),
    "tunelab advise CONFIG --json": Skip(SYNOPSIS),
    # Variants
    "tunelab sweep examples/support-routing/config.yaml --grid train.lr=1e-4,3e-4 --grid lora.r=8,16": Run(TINY_CLASSIFY),
    "tunelab sweep CONFIG --grid model=default,./my-other-model --grid data.train=a.jsonl,b.jsonl --metric macro_f1": Skip(SYNOPSIS),
    # Presets
    "tunelab data check ../shared/data/banking77 --task classify --preset banking77": Run(),
    "tunelab data check ../shared/data/hh_rlhf_helpful --task preference --preset hh_rlhf --skip-invalid": Run(),
    # Serving and monitoring
    "tunelab serve --model default --adapter france=runs/legal-fr --adapter germany=runs/legal-de --port 8000": Skip(
        "serves two runs of the reader's own (runs/legal-fr, runs/legal-de)"),
    "tunelab run router.yaml name=router-v1": Skip(YOURS + ": router.yaml"),
    "tunelab promote router router-v1": Skip("promotes the router-v1 run of the walkthrough (tests/unit/serve/test_feedback_and_alias.py)"),
    "tunelab serve --model default --adapter router=alias:router": Skip("serves the walkthrough's alias"),
    "curl -s localhost:8000/v1/classify -H 'Content-Type: application/json' -d '{\"model\": \"router\", \"input\": \"my crypto transfer is stuck\"}'": Skip(SERVED),
    "curl -s localhost:8000/v1/feedback -H 'Content-Type: application/json' -d '{\"id\": \"clf-...\", \"label\": \"crypto_transfer\"}'": Skip(SERVED),
    "tunelab feedback import corrections.csv": Skip(YOURS + ": corrections.csv"),
    "tunelab monitor --plots runs/monitor": Skip("judges the walkthrough's logged traffic (tests/unit/monitor)"),
    "tunelab retrain alias:router --log-db runs/requests.db": Skip("retrains the walkthrough's champion (tests/unit/tasks/test_retrain.py)"),
    "tunelab aliases router": Skip("the walkthrough's alias history"),
    "tunelab promote router router-v2": Skip("a second run of the walkthrough promoted over the first: judged against it (tests/unit/serve/test_promote_not_worse.py)"),
    "tunelab monitor --config monitor.yaml --every 6h --retrain-on drift": Skip("a loop that runs until stopped, over " + YOURS),
    "0 */6 * * *  cd /srv/tunelab && (tunelab monitor --config monitor.yaml --json > runs/monitor.json || [ $? -ne 3 ] || tunelab retrain alias:router --log-db runs/requests.db)": Skip("a crontab line"),
    "vllm serve HuggingFaceTB/SmolLM2-135M-Instruct --enable-lora --max-lora-rank 16 --lora-modules france=runs/legal-fr/adapter germany=runs/legal-de/adapter": Skip(
        "vLLM needs a GPU and the network"),
    # Export
    "tunelab train examples/support-routing/config.yaml name=support-short train.max_steps=6": Run(),
    "tunelab export runs/support-short exports/support.gguf --ollama": Run(),
    "tunelab export runs/support-short exports/support-q8.gguf --quant q8_0": Run(),
    "tunelab export runs/support-short exports/support-q4.gguf --quant q4_K_M --ollama": Run(),
    "ollama create support-short -f exports/support-q4.Modelfile": Skip("Ollama is not installed here"),
    "ollama run support-short \"my parcel never arrived\"": Skip("Ollama is not installed here"),
    "llama-server -m exports/support.gguf --jinja": Skip("llama.cpp is not installed here"),
    # Training
    "tunelab train run.yaml": Skip(YOURS + ": run.yaml"),
    "tunelab train run.yaml train.lr=1e-4 train.method=full": Skip(YOURS + ": run.yaml"),
    "tunelab train --resume runs/my-run": Skip(YOURS + ": runs/my-run"),
    "tunelab export --merge runs/my-run merged/": Skip(YOURS + ": runs/my-run"),
    # GPUs and clusters (multi-process training is tested on 2 CPU processes in tests/unit/train and tests/unit/tasks/test_fit.py)
    "tunelab sweep CONFIG --engine ray --asha --search optuna --trials 12 --grid train.lr=1e-5,1e-3": Skip(SYNOPSIS),
    "pip install 'tunelab[qlora]'": Skip("installs an extra from the network (make test installs the qlora and ray extras)"),
    "tunelab run config.yaml model.name=Qwen/Qwen2.5-7B-Instruct model.allow_network=true train.method=qlora": Skip(
        "a 7B model: the network and a GPU, and " + YOURS),
    "tunelab run config.yaml model.name=Qwen/Qwen2.5-7B-Instruct model.allow_network=true train.fit=auto": Skip(
        "a 7B model: the network and a GPU, and " + YOURS),
    "tunelab run config.yaml --launch \"--num_processes 8\"": Skip("8 GPUs, and " + YOURS),
    "tunelab run config.yaml --launch \"--use_fsdp --fsdp_version 2 --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP --fsdp_state_dict_type SHARDED_STATE_DICT --num_processes 8\"": Skip(
        "8 GPUs, and " + YOURS),
    "tunelab train config.yaml --launch \"--config_file my-accelerate.yaml\"": Skip("GPUs, and " + YOURS),
    "tunelab train --resume runs/NAME --launch \"--num_processes 8\"": Skip("8 GPUs, and " + YOURS),
    "tunelab train config.yaml --launch \"--num_machines 2 --machine_rank 0 --main_process_ip 10.0.0.1 --main_process_port 29500 --num_processes 16\"": Skip(
        "two machines with GPUs"),
    "ray start --head --port 6379": Skip("starts a node of a Ray cluster (tests/unit/tasks/test_ray_sweep.py starts a real local one)"),
    "ray start --address HEAD:6379": Skip("joins a Ray cluster's head on another machine"),
    "tunelab sweep config.yaml --engine ray --address auto --name lr-rank --asha --gpus-per-trial 1 --search optuna --trials 24 --grid train.lr=1e-5,1e-3 --grid lora.r=8,16,32 --max-usd 40 budget.gpu=A10G": Skip(
        "a Ray cluster with GPUs, and " + YOURS),
    # Evaluation
    "tunelab run examples/support-routing/config.yaml name=r1": Run(TINY_CLASSIFY),
    "tunelab eval --model default --data examples/support-routing/test.jsonl --task classify --labels runs/r1/labels.json --out r1-base.json": Run(("--limit", "16")),
    "tunelab eval --adapter runs/r1 --data examples/support-routing/test.jsonl --task classify --out r1-tuned.json": Run(("--limit", "16")),
    "tunelab eval --adapter runs/r1 --data examples/support-routing/test.jsonl --task classify --train examples/support-routing/train.jsonl --out r1-tuned.json": Run(("--limit", "16")),
    "tunelab eval --adapter runs/r1 --data examples/support-routing/test.jsonl --task classify --train examples/support-routing/train.jsonl --baselines classical,few_shot --few-shot-tokens 512": Run(("--limit", "16")),
    "tunelab compare r1-base.json r1-tuned.json": Run(),
    "tunelab report runs/r1": Run(),
    "tunelab review export runs/r1 --seed 0": Run(),
    "tunelab review score runs/r1/review.csv": Run(expect_exit=(0, 2)),  # nobody filled the sheet in: says so
    # Answering a file offline
    "tunelab predict runs/r1 examples/support-routing/out_of_scope.jsonl --out routed.csv": Run(),
    "tunelab predict runs/r1 examples/support-routing/out_of_scope.jsonl --out to_label.csv --label-next 10": Run(),
    "tunelab predict runs/legal-fr questions.csv --out drafts.jsonl --prompt-field question": Skip(YOURS + ": an sft run legal-fr and questions.csv"),
    # DPO
    "tunelab run sft.yaml name=my-sft": Skip(YOURS + ": sft.yaml (tests/unit/tasks/test_preference_pipeline.py)"),
    "tunelab review export runs/my-sft --seed 0": Skip("the my-sft run of the walkthrough"),
    "tunelab review pairs runs/my-sft/review.csv --out pairs.jsonl": Skip("a review sheet people filled in"),
    "tunelab run dpo.yaml": Skip(YOURS + ": dpo.yaml"),
    "tunelab run dpo.yaml name=my-dpo": Skip(YOURS + ": dpo.yaml"),
    "tunelab review score runs/my-dpo/review.csv": Skip("a review sheet people filled in"),
    "tunelab review judge r1 --judge openai:gpt-4o": Skip("the network and an OpenAI key"),
    # Remote models
    "tunelab eval --endpoint http://127.0.0.1:8000/v1 --endpoint-model teacher --data test.jsonl --task sft --train train.jsonl --baselines retrieval --out eval/remote.json": Skip(
        SERVED + "; " + YOURS),
    "OPENAI_API_KEY=... tunelab eval --model openai:gpt-4o-mini --data test.jsonl --task classify --train train.jsonl --baselines classical": Skip("the network and an OpenAI key"),
    "tunelab run examples/qa-assistant/config.yaml name=qa-teacher": Run(TINY_SFT),
    "tunelab serve --model default --adapter teacher=runs/qa-teacher &": Run(serves=8000),
    "tunelab distill examples/qa-assistant/distill.yaml": Run(TINY_SFT),
    "tunelab distill --resume runs/qa-distilled": Run(),
    # Estimate
    "tunelab estimate examples/support-routing/config.yaml": Run(),
    "tunelab estimate examples/support-routing/config.yaml train.epochs=1 --json": Run(),
    "tunelab estimate CONFIG --no-calibrate": Skip(SYNOPSIS),
    "tunelab estimate CONFIG --prices my-prices.yaml": Skip(SYNOPSIS),
    "tunelab estimate CONFIG --launch \"--num_processes 8\"": Skip(SYNOPSIS),
    # Registry
    "tunelab runs [--task classify] [--status finished] [--json]": Skip(SYNOPSIS + " (run as `tunelab runs` below)"),
    "tunelab show RUN [--json]": Skip(SYNOPSIS),
    "tunelab compare RUN RUN ... [--json]": Skip(SYNOPSIS),
    "tunelab compare base.json tuned.json": Skip(SYNOPSIS),
    "tunelab delete RUN [RUN ...] [--dry-run] [--yes] [--force]": Skip(SYNOPSIS),
    "tunelab delete --status failed [--older-than 30d] --dry-run": Skip(SYNOPSIS),
    # The web UI
    "tunelab ui": Run(serves=7860),
    "tunelab ui --registry runs/registry.db --port 8000": Run(serves=8000),
    "tunelab ui --host 0.0.0.0 --api-key SECRET": Run(serves=7860),
}

# The python blocks, by their first line.
PYTHON_PLAN: dict[str, Run | Skip] = {
    "from tunelab.config import load_config": Skip("a whole training run from a notebook: the same steps `tunelab run` took above"),
    "from openai import OpenAI": Skip(SERVED + " with the france adapter"),
    "from tunelab.config import DataConfig, EvalConfig": Run(),
}

# Commands that read the public data beside the clone.
NEEDS_SHARED = ("../shared/data",)


@dataclass
class Block:
    heading: str
    language: str
    line: int
    text: str
    commands: list[str] = field(default_factory=list)


def readme_blocks(text: str) -> list[Block]:
    """Every fenced block with its section heading and line; bash blocks split into commands."""
    blocks: list[Block] = []
    heading = ""
    lines = text.split("\n")
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("#") and not line.startswith("#!"):
            heading = line.lstrip("#").strip()
        if line.startswith("```"):
            language, start, body = line[3:].strip(), index + 1, []
            index += 1
            while index < len(lines) and not lines[index].startswith("```"):
                body.append(lines[index])
                index += 1
            block = Block(heading, language, start, "\n".join(body))
            if language == "bash":
                block.commands = commands_of(block.text)
            blocks.append(block)
        index += 1
    return blocks


def commands_of(script: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, comments and blank lines dropped."""
    commands, current = [], ""
    for line in script.split("\n"):
        if line.endswith("\\"):
            current += line[:-1].rstrip() + " "
            continue
        current += line
        command = re.sub(r"\s+#(?![^']*'\s*$).*$", "", current).strip() if not current.lstrip().startswith("#") else ""
        if command:
            commands.append(re.sub(r"(?<=\S) {2,}(?=-)", " ", command))
        current = ""
    return commands


@dataclass
class Outcome:
    heading: str
    command: str
    status: str  # ran, failed, skipped
    detail: str = ""
    seconds: float = 0.0


def _wait_for(port: int, process: subprocess.Popen, timeout: float = 180.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            return False
        try:
            # Any HTTP answer (an API key's 401 included) means it is up.
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)  # noqa: S310 - loopback
            return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            time.sleep(1)
    return False


def run_readme(clone: Path, *, tiny: bool, only: str | None, log) -> list[Outcome]:
    text = (clone / "README.md").read_text(encoding="utf-8")
    outcomes: list[Outcome] = []
    servers: list[subprocess.Popen] = []
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(clone / "src")}
    bin_dir = Path(sys.executable).parent
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    try:
        for block in readme_blocks(text):
            # A background server serves the block that starts it (a later block may want its port).
            while servers:
                process = servers.pop()
                os.killpg(process.pid, signal.SIGINT)
                process.wait(timeout=60)
            if only and only.lower() not in block.heading.lower():
                continue
            items: list[tuple[str, Run | Skip | None]] = []
            if block.language == "bash":
                items = [(command, PLAN.get(command)) for command in block.commands]
            elif block.language == "python":
                first = block.text.strip().split("\n")[0]
                items = [(block.text, PYTHON_PLAN.get(first))]
            for command, entry in items:
                shown = command if block.language == "bash" else "python: " + command.strip().split("\n")[0]
                if entry is None:
                    outcomes.append(Outcome(block.heading, shown, "failed", "no entry in PLAN: run it or say why not"))
                    continue
                if isinstance(entry, Skip):
                    outcomes.append(Outcome(block.heading, shown, "skipped", entry.reason))
                    continue
                if any(marker in command for marker in NEEDS_SHARED) and not (clone.parent / "shared" / "data").is_dir():
                    outcomes.append(Outcome(block.heading, shown, "skipped", "../shared/data is not beside this clone"))
                    continue
                started = time.perf_counter()
                if block.language == "python":
                    argv = [sys.executable, "-c", command]
                else:
                    background = command.endswith("&")
                    words = shlex.split(command.rstrip("&").strip())
                    if tiny and entry.tiny:
                        words += list(entry.tiny)
                    if words[0] == "tunelab":
                        words = [str(bin_dir / "tunelab") if (bin_dir / "tunelab").exists() else "tunelab", *words[1:]]
                    argv = words
                    if entry.serves is not None:
                        log(f"$ {command}  (in the background until :{entry.serves} answers)")
                        process = subprocess.Popen(argv, cwd=clone, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                                   start_new_session=True)
                        up = _wait_for(entry.serves, process)
                        seconds = time.perf_counter() - started
                        if background and up:
                            servers.append(process)
                        elif process.poll() is None:  # one that exited at once (a refused option) has no group left
                            os.killpg(process.pid, signal.SIGINT)
                            process.wait(timeout=60)
                        detail = "answered" if up else f"did not come up: {process.stderr.read().decode()[-400:] if process.stderr else ''}"
                        outcomes.append(Outcome(block.heading, command, "ran" if up else "failed", detail, seconds))
                        continue
                log(f"$ {command}" + (f"   [tiny: {' '.join(entry.tiny)}]" if tiny and entry.tiny else ""))
                done = subprocess.run(argv, cwd=clone, env=env, capture_output=True, text=True, timeout=3600)
                seconds = time.perf_counter() - started
                ok = done.returncode in entry.expect_exit
                tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] if not ok else []
                outcomes.append(Outcome(block.heading, shown, "ran" if ok else "failed",
                                        f"exit {done.returncode}" + (f": {tail[0]}" if tail else ""), seconds))
                log(f"  -> {outcomes[-1].status} ({seconds:.0f} s) {outcomes[-1].detail}")
    finally:
        for process in servers:
            os.killpg(process.pid, signal.SIGINT)
            process.wait(timeout=60)
    return outcomes


def fresh_clone(into: Path) -> Path:
    clone = into / "tunelab"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    shared = ROOT.parent / "shared"
    if not shared.is_dir():
        shared = ROOT.parents[1] / "shared"
    if shared.is_dir():
        (into / "shared").symlink_to(shared)
    return clone


def markdown(outcomes: list[Outcome], tiny: bool) -> str:
    lines = [f"README commands in a fresh clone ({'tiny settings' if tiny else 'as written'}): "
             f"{sum(o.status == 'ran' for o in outcomes)} ran, {sum(o.status == 'failed' for o in outcomes)} failed, "
             f"{sum(o.status == 'skipped' for o in outcomes)} skipped", "", "| section | command | outcome | seconds |", "|---|---|---|---|"]
    for o in outcomes:
        command = o.command.replace("|", "\\|")
        lines.append(f"| {o.heading} | `{command}` | {o.status}{': ' + o.detail.replace('|', '/') if o.detail else ''} | {o.seconds:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--as-written", action="store_true", help="no tiny overrides (an hour or more on 2 cores)")
    parser.add_argument("--only", help="only blocks whose section heading contains this")
    parser.add_argument("--keep", action="store_true", help="keep the clone and print where it is")
    parser.add_argument("--out", type=Path, help="write the table (markdown) and the outcomes (.json beside it) here")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="tunelab-readme-"))
    try:
        clone = fresh_clone(folder)
        outcomes = run_readme(clone, tiny=not args.as_written, only=args.only, log=lambda line: print(line, flush=True))
    finally:
        if args.keep:
            print(f"clone kept at {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    table = markdown(outcomes, not args.as_written)
    print(table)
    if args.out:
        args.out.write_text(table)
        args.out.with_suffix(".json").write_text(json.dumps([o.__dict__ for o in outcomes], indent=1))
    return 1 if any(o.status == "failed" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
