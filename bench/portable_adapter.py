"""A classify run's adapter outside tunelab (issue 26): plain PEFT against tunelab on the quickstart's test requests.

Trains the support-routing quickstart (``examples/support-routing``) for a few steps with ``tunelab train`` (or
takes a finished run), then scores its 80 held-out requests three ways:

- ``tunelab``: ``Run.open(run).load()`` and the one classify inference (what evaluation, ``generate`` and
  ``serve`` answer);
- ``plain_peft``: ``peft.PeftModel.from_pretrained`` on the base model's weights (the dequantized bundled GGUF,
  tunelab's converted folder), the chat template, the label tokens' logits at the last position: no tunelab;
- ``plain_peft_without_label_rows``: the same with the adapter's trainable tokens removed (what a LoRA-only
  reader such as vLLM's loads; what plain PEFT got before the label rows were put into the adapter).

Usage: python bench/portable_adapter.py [--steps 6] [--run RUN]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO_DIR, machine_info, machine_markdown, markdown_table, write_results

EXAMPLE = REPO_DIR / "examples" / "support-routing"


def train_short(steps: int, output: Path) -> Path:
    name = f"support-short-{steps}"
    command = [sys.executable, "-m", "tunelab.cli.main", "train", str(EXAMPLE / "config.yaml"), f"name={name}",
               f"train.max_steps={steps}", f"train.output_dir={output}", f"registry={output / 'registry.db'}", "--json"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return output / name


def plain_peft_accuracy(adapter: Path, base_folder: Path, records, label_map, system: str | None, *, label_rows: bool) -> tuple[float, list[str]]:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.data.templates import classify_messages

    if not label_rows:
        stripped = Path(tempfile.mkdtemp(prefix="bare-adapter-")) / "adapter"
        shutil.copytree(adapter, stripped)
        config = json.loads((stripped / "adapter_config.json").read_text())
        config.pop("trainable_token_indices", None)
        (stripped / "adapter_config.json").write_text(json.dumps(config))
        tensors = {k: v for k, v in load_file(str(stripped / "adapter_model.safetensors")).items() if "token_adapter" not in k}
        save_file(tensors, str(stripped / "adapter_model.safetensors"), metadata={"format": "pt"})
        (stripped / "label_head.safetensors").unlink(missing_ok=True)
        adapter = stripped
    tokenizer = AutoTokenizer.from_pretrained(str(base_folder))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base_folder), dtype=torch.float32), str(adapter)).eval()
    predictions = []
    for record in records:
        ids = tokenizer.apply_chat_template(classify_messages(record.text, system), add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]
        with torch.inference_mode():
            logits = model(input_ids=ids).logits[0, -1, label_map.token_ids]
        predictions.append(label_map.labels[int(torch.argmax(logits))])
    return sum(p == r.label for p, r in zip(predictions, records, strict=True)) / len(records), predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="training steps of the short run")
    parser.add_argument("--run", type=Path, help="score this finished classify run instead of training one")
    parser.add_argument("--name", default="portable_adapter", help="results file name under bench/results/")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from tunelab.config import load_config
    from tunelab.data.read import load_records
    from tunelab.inference import Classifier
    from tunelab.models.loader import local_folder_for
    from tunelab.runs import Run

    info = machine_info()
    began = time.perf_counter()
    run_dir = args.run or train_short(args.steps, Path(tempfile.mkdtemp(prefix="tunelab-portable-")))
    run = Run.open(run_dir)
    config = load_config(EXAMPLE / "config.yaml")
    records = load_records(config.data.test, "classify", config.data)
    loaded = run.load()
    answers = Classifier.for_model(loaded).classify(loaded.model, [r.text for r in records])
    tunelab_predictions = [a.label for a in answers]
    tunelab_accuracy = sum(p == r.label for p, r in zip(tunelab_predictions, records, strict=True)) / len(records)
    base_folder = local_folder_for(run.base.source)
    plain, plain_predictions = plain_peft_accuracy(run.folder.adapter, base_folder, records, run.label_map, run.system_prompt, label_rows=True)
    bare, _ = plain_peft_accuracy(run.folder.adapter, base_folder, records, run.label_map, run.system_prompt, label_rows=False)
    agree = sum(a == b for a, b in zip(tunelab_predictions, plain_predictions, strict=True)) / len(records)
    adapter_config = json.loads((run.folder.adapter / "adapter_config.json").read_text())
    result = {
        "machine": info, "run": str(run_dir), "steps": args.steps if args.run is None else None, "n": len(records),
        "accuracy": {"tunelab": tunelab_accuracy, "plain_peft": plain, "plain_peft_without_label_rows": bare},
        "agreement_tunelab_plain_peft": agree, "base_model_name_or_path": adapter_config.get("base_model_name_or_path"),
        "seconds": time.perf_counter() - began,
    }
    rows = [[name, f"{value:.4f}"] for name, value in result["accuracy"].items()]
    markdown = "\n".join([
        "# A classify adapter outside tunelab (bench/portable_adapter.py)", "", machine_markdown(info), "",
        (f"The quickstart ({EXAMPLE.name}) trained for {args.steps} steps" if args.run is None else f"The run {run.name}")
        + f"; its {len(records)} held-out requests.", "",
        markdown_table(["scored by", "accuracy"], rows), "",
        f"tunelab and plain PEFT give the same label on {agree:.1%} of the requests; the adapter names "
        f"`{result['base_model_name_or_path']}` as its base.", "",
    ])
    write_results(args.name, result, markdown)
    print(json.dumps(result["accuracy"]), "agreement", agree)


if __name__ == "__main__":
    main()
