"""Where one tunelab training step spends its time: a torch.profiler table per op, against the machine's peak (issue 13).

The job is the one of the TRL comparison (``bench/compare.py --task sft``): the default model, LoRA
r=16 / alpha=32 on all linear layers (tunelab's defaults otherwise: dropout 0, fused AdamW, fp32 on
a CPU without native bf16), a batch of GSM8K examples at ``--max-length``, packed as the loop packs
them, tunelab's own loss (LM head only at target positions, chunked). One warm-up step, then
``--steps`` profiled steps (forward + backward + AdamW + zero_grad), each inside one profiler window.

Each op's self CPU time is attributed to a group (matmul, attention, the loss's head matmuls,
elementwise / norm / activation, copies and dtype casts, optimizer, autograd and Python overhead);
for ops with a FLOP count (``with_flops``: mm, addmm, bmm, matmul) the achieved GFLOP/s is set
against the fp32 ``torch.mm`` peak measured in the same process at the start (n = 1024, 2048).
The top matmul shapes are each timed alone (what this CPU does with exactly that shape), and so are
the top elementwise ops with their shapes (``aten::mul``, ``add``, ...), in GB/s of the bytes they read
and write, beside the bandwidth of a large ``copy_`` measured in the same process: memory-bound ops
are judged against memory speed, not against the matmul peak.

    PYTHONPATH=src python bench/profile_step.py --batch-size 8 --max-length 512 --steps 2

Writes bench/results/profile_step.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from common import machine_info, machine_markdown, markdown_table, sft_data, write_results  # noqa: E402

# Which group an op's self time belongs to (first match wins; names are aten op names).
GROUPS = [
    ("matmul (mm / addmm / bmm)", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")),
    ("attention (SDPA)", ("aten::_scaled_dot_product", "aten::scaled_dot_product", "flash_attention", "_efficient_attention")),
    ("optimizer (fused AdamW)", ("aten::_fused_adamw", "Optimizer.step", "aten::_foreach")),
    ("copies, casts, layout", ("aten::copy_", "aten::to", "aten::_to_copy", "aten::contiguous", "aten::clone", "aten::cat",
                               "aten::index", "aten::gather", "aten::scatter", "aten::embedding", "aten::fill_", "aten::zero_",
                               "aten::zeros", "aten::empty", "aten::ones", "aten::full", "aten::transpose", "aten::view", "aten::reshape",
                               "aten::permute", "aten::slice", "aten::select", "aten::expand", "aten::as_strided", "aten::t",
                               "aten::unsqueeze", "aten::squeeze", "aten::split", "aten::chunk", "aten::narrow", "aten::masked")),
    ("loss (log-softmax, NLL)", ("aten::_log_softmax", "aten::log_softmax", "aten::nll_loss", "aten::cross_entropy")),
    ("elementwise, norms, activations", ("aten::mul", "aten::add", "aten::sub", "aten::div", "aten::pow", "aten::rsqrt", "aten::mean",
                                         "aten::silu", "aten::sigmoid", "aten::neg", "aten::cos", "aten::sin", "aten::sum", "aten::exp",
                                         "aten::tanh", "aten::where", "aten::threshold", "aten::_softmax", "aten::sqrt", "aten::rms",
                                         "aten::_fused_rms", "aten::native", "aten::addcmul", "aten::clamp", "aten::norm")),
]


def group_of(name: str) -> str:
    base = name.replace("autograd::engine::evaluate_function: ", "")
    if base.endswith("Backward0") or base.endswith("Backward1"):
        return "autograd nodes (Python-free backward bookkeeping)"
    for group, prefixes in GROUPS:
        if any(base.startswith(p) for p in prefixes):
            return group
    return "other (Python, dispatcher, hooks)"


def matmul_peak(dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """``dtype`` torch.mm TFLOP/s, best of 5 after a warm-up, at n = 1024 and 2048 (this process, these threads)."""
    peaks = {}
    for n in (1024, 2048):
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        torch.mm(a, b)
        best = min(_timed(lambda a=a, b=b: torch.mm(a, b)) for _ in range(5))
        peaks[str(n)] = 2 * n**3 / best / 1e12
    return peaks


def matmul_shapes(profiler, top: int, dtype: torch.dtype = torch.float32) -> list[dict]:
    """The ``top`` aten::mm shapes by self time in the step, each also timed alone (best of 5, same threads):
    what this CPU does with exactly that shape, so the step's matmul time can be judged against it."""
    rows = []
    for event in profiler.key_averages(group_by_input_shape=True):
        if event.key != "aten::mm" or not event.input_shapes or len(event.input_shapes) < 2:
            continue
        (m, k), (k2, n) = event.input_shapes[0], event.input_shapes[1]
        rows.append({"shape": f"[{m}x{k}] @ [{k2}x{n}]", "m": m, "k": k, "n": n, "calls": event.count,
                     "self_s": event.self_cpu_time_total / 1e6, "flops": 2 * m * k * n * event.count})
    rows.sort(key=lambda r: -r["self_s"])
    for row in rows[:top]:
        a, b = torch.randn(row["m"], row["k"]).to(dtype), torch.randn(row["k"], row["n"]).to(dtype)
        repeat = max(1, int(2e8 / max(1, 2 * row["m"] * row["k"] * row["n"])))
        torch.mm(a, b)
        best = min(_timed(lambda a=a, b=b, r=repeat: [torch.mm(a, b) for _ in range(r)]) for _ in range(5)) / repeat
        row["in_step_gflops"] = row["flops"] / row["self_s"] / 1e9 if row["self_s"] else None
        row["alone_gflops"] = 2 * row["m"] * row["k"] * row["n"] / best / 1e9
    return rows[:top]


ELEMENTWISE_OPS = ("aten::mul", "aten::add", "aten::sub", "aten::div", "aten::silu", "aten::silu_backward", "aten::exp", "aten::pow")


def copy_bandwidth() -> float:
    """GB/s of ``dst.copy_(src)`` on 64M floats (read + write), best of 5: this process's memory speed."""
    src, dst = torch.randn(64 * 2**20), torch.empty(64 * 2**20)
    dst.copy_(src)
    best = min(_timed(lambda: dst.copy_(src)) for _ in range(5))
    return 2 * src.numel() * 4 / best / 1e9


def elementwise_shapes(profiler, top: int) -> list[dict]:
    """The ``top`` elementwise (op, input shapes) by self time, each re-run alone on random tensors of those
    shapes (2.0 for each scalar: the profiler keeps no values; RMSNorm squares), best of 5: GB/s in the step and alone, bytes = every
    tensor input read once + the output written once (fp32)."""
    rows = []
    for event in profiler.key_averages(group_by_input_shape=True):
        shapes = [list(s) for s in (event.input_shapes or [])]
        tensors = [s for s in shapes if s]
        if event.key not in ELEMENTWISE_OPS or not tensors:
            continue
        output = list(torch.broadcast_shapes(*[torch.Size(s) for s in tensors]))
        moved = 4 * (sum(torch.Size(s).numel() for s in tensors) + torch.Size(output).numel()) * event.count
        rows.append({"op": event.key, "shapes": shapes, "calls": event.count, "self_s": event.self_cpu_time_total / 1e6,
                     "bytes": moved})  # fmt: skip
    rows.sort(key=lambda r: -r["self_s"])
    for row in rows[:top]:
        op = getattr(torch.ops.aten, row["op"].split("::")[1])
        per_call = row["bytes"] / row["calls"]
        # Enough distinct input sets to pass 256 MB per round, so the inputs come from memory as in the
        # step (whose activations are far larger than the caches), not from a cache a loop would warm.
        sets = [[torch.randn(s) if s else 2.0 for s in row["shapes"]] for _ in range(max(1, min(64, int(2.56e8 // per_call))))]
        try:
            op(*sets[0])
        except (RuntimeError, TypeError):  # e.g. add's alpha is keyword-only: the tensors alone
            sets = [[a for a in args if isinstance(a, torch.Tensor)] for args in sets]
        best = min(_timed(lambda o=op, c=sets: [o(*args) for args in c]) for _ in range(5)) / len(sets)
        row["in_step_gbs"] = row["bytes"] / row["self_s"] / 1e9 if row["self_s"] else None
        row["alone_gbs"] = per_call / best / 1e9
    return rows[:top]


def _timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2, help="profiled steps (after one warm-up)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rows", type=int, default=25, help="ops listed in the per-op table")
    parser.add_argument("--shapes", type=int, default=12, help="matmul shapes set against their own standalone speed")
    parser.add_argument("--elementwise", type=int, default=10, help="elementwise (op, shape) rows set against their standalone speed")
    parser.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32",
                        help="bf16: the step under bf16 autocast, as training on a CPU with AMX runs it; auto: as the run resolves it")
    parser.add_argument("--compile", default="false", help="train.compile of the job (false, elementwise, blocks)")
    parser.add_argument("--name", default="profile_step", help="results file name under bench/results/")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from tunelab.config import parse_config
    from tunelab.data.tokenize import tokenize_records
    from tunelab.models.adapters import apply_method
    from tunelab.models.fused import compile_model
    from tunelab.runs import load_model
    from tunelab.runtime import resolve_precision
    from tunelab.train.batching import LMCollate
    from tunelab.train.loop import make_optimizer
    from tunelab.train.losses import lm_loss_sum

    precision = resolve_precision(args.precision, "cpu")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    compile_mode = {"false": False, "true": True}.get(args.compile, args.compile)
    info = machine_info()
    peak = matmul_peak(dtype)
    bandwidth = copy_bandwidth()
    config = parse_config({"task": "sft", "model": "default", "data": {"max_length": args.max_length},
                           "lora": {"r": 16, "alpha": 32}, "train": {"batch_size": args.batch_size, "compile": compile_mode}},
                          source="bench")  # fmt: skip
    from tunelab.models import loader

    if hasattr(loader, "load_for_training"):  # the frozen weights as training holds them (bf16 under bf16 autocast)
        loaded = loader.load_for_training(config, precision)
    else:
        loaded = load_model("default")
    records, _, source = sft_data(args.batch_size * (2 + args.steps), 0)
    examples, _ = tokenize_records(records, "sft", loaded.tokenizer, max_length=args.max_length)
    model = apply_method(loaded.model, config)
    compile_model(model, compile_mode)
    model.train()
    optimizer = make_optimizer(model, config.train)
    collate = LMCollate(loaded.tokenizer.pad_token_id, args.max_length)
    batches = [collate(examples[i * args.batch_size : (i + 1) * args.batch_size]) for i in range(2 + args.steps)]

    def step(batch) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = lm_loss_sum(model, batch) / max(1, int((batch["targets"] != -100).sum()))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    # Warm-up: oneDNN primitives, the allocator, compiled kernels (two steps: a compiled graph's second
    # call may specialise again); the profiled steps are other batches.
    warm_started = time.perf_counter()
    step(batches[0])
    step(batches[1])
    warmup_s = time.perf_counter() - warm_started
    batches = batches[1:]
    real_tokens = sum(len(e.input_ids) for e in examples[2 * args.batch_size :])
    from torch.profiler import ProfilerActivity, profile

    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as profiler:
        for batch in batches[1:]:
            step(batch)
    wall = time.perf_counter() - start
    # Profiling adds overhead per op; an unprofiled pass over the same batches gives the real step time.
    unprofiled = _timed(lambda: [step(b) for b in batches[1:]])

    by_op: dict[str, dict] = defaultdict(lambda: {"self_s": 0.0, "calls": 0, "flops": 0})
    for event in profiler.key_averages():
        row = by_op[event.key]
        row["self_s"] += event.self_cpu_time_total / 1e6
        row["calls"] += event.count
        row["flops"] += getattr(event, "flops", 0) or 0
    total = sum(r["self_s"] for r in by_op.values())
    groups: dict[str, dict] = defaultdict(lambda: {"self_s": 0.0, "flops": 0})
    for name, row in by_op.items():
        group = groups[group_of(name)]
        group["self_s"] += row["self_s"]
        group["flops"] += row["flops"]
    best_peak = max(peak.values())
    shapes = matmul_shapes(profiler, args.shapes, dtype)
    elementwise = elementwise_shapes(profiler, args.elementwise)
    # Model FLOPs per token as in the TRL comparison: 4 x frozen matrix weights (the embedding counts
    # once, as the tied LM head) + 6 x adapter weights.
    n_frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad and p.ndim == 2)
    n_adapter = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result = {
        "machine": info,
        "command": "python bench/profile_step.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "data": source,
        "precision": precision,
        "compile": args.compile,
        "warmup_s": round(warmup_s, 1),
        "peak_tflops_fp32": peak,  # of the step's dtype (the key keeps its old name for older result files)
        "steps": args.steps,
        "real_tokens": real_tokens,
        "profiled_wall_s": round(wall, 2),
        "unprofiled_wall_s": round(unprofiled, 2),
        "real_tokens_per_s": round(real_tokens / unprofiled, 1),
        "model_tflops": round(real_tokens / unprofiled * (4 * n_frozen + 6 * n_adapter) / 1e12, 4),
        "ops": sorted(({"op": k, **v} for k, v in by_op.items()), key=lambda r: -r["self_s"]),
        "groups": sorted(({"group": k, **v} for k, v in groups.items()), key=lambda r: -r["self_s"]),
        "self_total_s": round(total, 3),
        "matmul_shapes": shapes,
        "copy_bandwidth_gbs": round(bandwidth, 1),
        "elementwise_shapes": elementwise,
    }
    write_results(args.name, result, render(result, args.rows, best_peak))


def render(result: dict, rows: int, best_peak: float) -> str:
    total = result["self_total_s"]

    def rate(flops: float, seconds: float) -> str:
        return f"{flops / seconds / 1e9:.1f}" if flops and seconds else ""

    def share_of_peak(flops: float, seconds: float) -> str:
        return f"{flops / seconds / 1e12 / best_peak:.0%}" if flops and seconds else ""

    lines = ["### One training step, profiled (torch.profiler, self CPU time)", "", machine_markdown(result["machine"]), "",
             f"Command: `{result['command']}`; data: {result['data']}. {result.get('precision', 'fp32')} `torch.mm` peak in this process: "
             + ", ".join(f"n={n}: {v:.3f} TFLOP/s" for n, v in result["peak_tflops_fp32"].items())
             + f". {result['steps']} steps, {result['real_tokens']} real tokens: {result['unprofiled_wall_s']} s unprofiled "
             f"({result['real_tokens_per_s']} real tokens/s, {result['model_tflops']} TFLOP/s of model FLOPs = "
             f"{result['model_tflops'] / best_peak:.0%} MFU), {result['profiled_wall_s']} s under the profiler.", ""]
    group_rows = [[g["group"], f"{g['self_s']:.2f}", f"{g['self_s'] / total:.1%}",
                   *((rate(g["flops"], g["self_s"]), share_of_peak(g["flops"], g["self_s"])) if g["group"].startswith("matmul") else ("", ""))]
                  for g in result["groups"]]
    lines += [markdown_table(["group", "self s", "share", "GFLOP/s", "of mm peak"], group_rows), ""]
    op_rows = [[r["op"], r["calls"], f"{r['self_s']:.3f}", f"{r['self_s'] / total:.1%}",
                *((rate(r["flops"], r["self_s"]), share_of_peak(r["flops"], r["self_s"])) if r["op"] in ("aten::mm", "aten::addmm", "aten::bmm") else ("", ""))]
               for r in result["ops"][:rows]]
    lines += [markdown_table(["op", "calls", "self s", "share", "GFLOP/s", "of mm peak"], op_rows), ""]
    shape_rows = [[r["shape"], r["calls"], f"{r['self_s']:.3f}", f"{r['self_s'] / total:.1%}", f"{r['in_step_gflops']:.1f}",
                   f"{r['alone_gflops']:.1f}", f"{r['in_step_gflops'] / r['alone_gflops']:.0%}"] for r in result["matmul_shapes"]]
    lines += ["Matmul shapes (forward and backward; the same shape timed alone, best of 5):", "",
              markdown_table(["aten::mm shape", "calls", "self s", "share of step", "GFLOP/s in step", "GFLOP/s alone", "in step / alone"], shape_rows)]
    if result.get("elementwise_shapes"):
        rows_ = [[r["op"], " , ".join(f"[{'x'.join(map(str, s))}]" if s else "scalar" for s in r["shapes"]), r["calls"], f"{r['self_s']:.3f}",
                  f"{r['self_s'] / total:.1%}", f"{r['in_step_gbs']:.1f}", f"{r['alone_gbs']:.1f}", f"{r['in_step_gbs'] / r['alone_gbs']:.0%}"]
                 for r in result["elementwise_shapes"]]
        lines += ["", f"Elementwise ops by input shapes (bytes read + written, fp32; the same op and shapes timed alone, best of 5; "
                  f"`copy_` of 64M floats in this process: {result['copy_bandwidth_gbs']} GB/s):", "",
                  markdown_table(["op", "input shapes", "calls", "self s", "share of step", "GB/s in step", "GB/s alone", "in step / alone"], rows_)]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
