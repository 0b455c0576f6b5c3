"""``tunelab env``: versions, threads, device and whether bf16 is native here."""

from __future__ import annotations

import typer
from rich.table import Table

from tunelab.cli.common import console, print_json


def env(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Show the machine, the library versions, and which precision training will use."""
    from tunelab.runtime import environment_info  # imports torch: only for this command

    info = environment_info()
    if as_json:
        print_json(info.as_dict())
        return
    table = Table(title="tunelab environment", show_header=False)
    table.add_row("python", info.python)
    table.add_row("platform", info.platform)
    table.add_row("cpu", f"{info.cpu} ({info.cores} cores)")
    table.add_row("torch threads", str(info.torch_threads))
    table.add_row("device", info.device + (f" ({', '.join(info.cuda_devices)})" if info.cuda_devices else ""))
    native = "yes" if info.bf16_native else "no"
    measured = f"; bf16 matmul {info.cpu_bf16_speedup:.2f}x fp32" if info.cpu_bf16_speedup is not None else ""
    flags = f" (CPU flags: {', '.join(info.cpu_bf16_flags)}{measured})" if info.cpu_bf16_flags else ""
    table.add_row("bf16 native", native + flags + (" -> training uses bf16 autocast" if info.bf16_native else " -> training uses fp32"))
    for name, version in info.versions.items():
        table.add_row(name, version)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("env")(env)
