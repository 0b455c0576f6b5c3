"""Peer and tunelab on the same training job, back to back in one invocation, each in its own process.

The machine is shared and noisy, so absolute numbers drift between invocations; the ratios between
runners measured in the same invocation are what the tables report as speed-ups.

MFU (model FLOPs utilisation) uses the same formula for every runner:
``FLOPs per real token = 4 * N_frozen + 6 * N_adapter`` for LoRA with a frozen base, where
N_frozen is the number of weights of the base model's linear layers including the LM head (the
forward costs 2 FLOPs per weight and token, the backward 2 more for the activation gradients; a
frozen weight needs no weight gradient), and N_adapter the LoRA weights (forward, activation and
weight gradients: 6). Attention's sequence-length term is left out (small at these lengths).
Recomputation (TRL's gradient checkpointing) is not counted, and neither is tunelab skipping the
LM head on positions without a target: model FLOPs, not hardware FLOPs. MFU is against this
machine's measured matmul peak of the precision the runner computes in.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from common import machine_info, machine_markdown, markdown_table, run_child, write_results

SFT_RUNNERS = {
    "trl_fp32": ("trl_peer.py", ["--precision", "fp32"]),
    "trl_bf16": ("trl_peer.py", ["--precision", "bf16"]),
    "tunelab_fp32": ("tunelab_train.py", ["--precision", "fp32"]),
    "tunelab_bf16": ("tunelab_train.py", ["--precision", "bf16"]),
    # What a user gets: `train.precision: auto` (fp32 on a CPU without AMX, bf16 where it is native).
    "tunelab_auto": ("tunelab_train.py", ["--precision", "auto"]),
}


def lora_flops_per_token(r: int = 16) -> dict[str, float]:
    """4·N_frozen + 6·N_adapter for the default model with LoRA rank ``r`` on every linear layer but the head."""
    import torch

    from tunelab.runs import load_model

    model = load_model("default").model
    frozen = 0
    adapter = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            frozen += module.weight.numel()
            if name != "lm_head" and not name.endswith("lm_head"):
                adapter += r * (module.in_features + module.out_features)
    return {"n_frozen_linear": frozen, "n_adapter": adapter, "flops_per_token": 4 * frozen + 6 * adapter}


def run_comparison(task: str, runners: list[str], child_args: list[str], peak_tflops: dict[str, float] | None) -> dict[str, Any]:
    flops = lora_flops_per_token()
    results = {}
    for name in runners:
        script, extra = SFT_RUNNERS[name]
        print(f"[{time.strftime('%H:%M:%S')}] {task}: {name} ...", flush=True)
        result = run_child(script, ["--task", task, *child_args, *extra])
        if "error" not in result and peak_tflops:
            precision = "bf16" if "bf16" in result.get("runner", name) else "fp32"
            achieved = result["real_tokens_per_s"] * flops["flops_per_token"] / 1e12
            result["model_tflops"] = round(achieved, 4)
            result["mfu"] = round(achieved / peak_tflops[precision], 4)
        results[name] = result
        print(f"    -> {({k: v for k, v in result.items() if k not in ('machine', 'settings')})}", flush=True)
    return {"task": task, "args": child_args, "flops": flops, "peak_tflops": peak_tflops, "runs": results}


def _four(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def comparison_markdown(data: dict[str, Any], machine: dict[str, Any], command: str) -> str:
    task = data["task"]
    runs = data["runs"]
    metric = "validation_loss" if task == "sft" else "accuracy"
    reference = {k: v for k, v in runs.items() if k.startswith("trl_") and "error" not in v}
    rows = []
    for name, r in runs.items():
        if "error" in r:
            rows.append([name, "failed: " + r["error"], *[""] * 9])
            continue
        ratios = [
            f"{r['real_tokens_per_s'] / ref['real_tokens_per_s']:.2f}x" if ref["real_tokens_per_s"] else ""
            for ref in reference.values()
        ]
        rows.append(
            [
                name,
                r["real_tokens_per_s"],
                r["examples_per_s"],
                " / ".join(ratios),
                r.get("mfu", 0.0) * 100 if "mfu" in r else None,
                r["seconds_per_step"],
                _four(r.get(f"base_{metric}")),
                _four(r.get(metric)),
                r["peak_rss_mb"],
                r["first_step_s"],
            ]
        )
    headers = [
        "runner",
        "real tokens/s",
        "examples/s",
        "speed vs " + " / ".join(reference) if reference else "speed",
        "MFU %",
        "s/step",
        f"base {metric}",
        metric,
        "peak RSS MiB",
        "s to 1st step",
    ]
    settings = " ".join(data["args"])
    return (
        f"### {task} LoRA training: tunelab vs TRL SFTTrainer\n\n"
        f"{machine_markdown(machine)}\n\n"
        f"Command: `{command}`; child settings `{settings}` (one untimed step before and after the timed ones; "
        f"MFU: {data['flops']['flops_per_token'] / 1e6:.0f} MFLOPs per real token = 4·{data['flops']['n_frozen_linear'] / 1e6:.1f}M "
        f"+ 6·{data['flops']['n_adapter'] / 1e6:.2f}M, against the measured peak {data['peak_tflops']}).\n\n"
        + markdown_table(headers, rows)
    )


def main(argv: list[str] | None = None) -> None:
    import json
    import sys

    from common import RESULTS_DIR

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["sft", "classify"], default="sft")
    parser.add_argument("--runners", nargs="+", default=list(SFT_RUNNERS), choices=list(SFT_RUNNERS))
    parser.add_argument("--name", default=None, help="results file name (default: <task>_train)")
    parser.add_argument("--render-only", action="store_true", help="rewrite the markdown from the saved JSON")
    args, child_args = parser.parse_known_args(argv)
    if args.render_only:
        path = RESULTS_DIR / f"{args.name or args.task + '_train'}.json"
        data = json.loads(path.read_text())
        peak_path = RESULTS_DIR / "matmul_peak.json"
        if peak_path.is_file():  # MFU against the newest measured peak (matmul_peak.py may run after the comparison)
            data["peak_tflops"] = json.loads(peak_path.read_text())["peak_tflops"]
            for result in data["runs"].values():
                if "model_tflops" in result:
                    precision = "bf16" if "bf16" in result.get("runner", "") else "fp32"
                    result["mfu"] = round(result["model_tflops"] / data["peak_tflops"][precision], 4)
        write_results(path.stem, data, comparison_markdown(data, data["machine"], data["command"]))
        return
    peak_path = RESULTS_DIR / "matmul_peak.json"
    peak = json.loads(peak_path.read_text())["peak_tflops"] if peak_path.is_file() else None
    machine = machine_info()
    data = run_comparison(args.task, args.runners, child_args, peak)
    data["machine"] = machine
    command = "python bench/compare.py " + " ".join(sys.argv[1:] if argv is None else argv)
    data["command"] = command
    write_results(args.name or f"{args.task}_train", data, comparison_markdown(data, machine, command))


if __name__ == "__main__":
    main()
