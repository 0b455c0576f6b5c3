"""``tunelab predict``: answer a whole file of requests with a model, offline, into a .jsonl or .csv file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from tunelab.cli.common import (
    cancel_on_sigterm,
    check_output_file,
    config_from_options,
    console,
    error_console,
    progress_display,
)
from tunelab.config import DataConfig


def predict(
    model: str = typer.Argument(..., metavar="MODEL", help="A classify or sft run folder, or a model (a merged export, a .gguf, a hub id)."),
    path: str = typer.Argument(..., metavar="FILE", help="The requests: a file, folder or glob `tunelab data check` reads; no label or answer needed."),
    out: Path = typer.Option(..., "--out", "-o", help="Where the answers go: .jsonl or .csv (every input column, then the answer's)."),
    text_field: str | None = typer.Option(None, "--text-field", help="classify: the column of the text (default: text)."),
    prompt_field: str | None = typer.Option(None, "--prompt-field", help="sft: the column of the prompt (default: prompt; chat messages are read too)."),
    messages_field: str | None = typer.Option(None, "--messages-field", help="sft: the column of the chat messages (default: messages)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Requests per forward pass, and per write of the unfinished answers (another size starts a stopped job over)."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Leave invalid rows out (each is listed) instead of stopping."),
    allow_network: bool = typer.Option(False, "--allow-network", help="Allow downloading a hub model."),
    label_next: int | None = typer.Option(
        None, "--label-next", metavar="N", min=1,
        help="classify: answer every request, then write only the N the run is least sure of, to label first: the smallest "
             "margin between its two most probable labels' calibrated probabilities first, with runner_up and margin; a "
             "near-duplicate of an earlier request is left out; out-of-scope requests are ranked like the others."),
) -> None:
    """Answer every request in FILE with MODEL and write them to --out: a classify run's label, probability and
    out_of_scope, an sft run's answer, each after the row's own columns.

    A run answers as it was evaluated and as it is served (its prompt, label head, calibrated probability and
    out-of-scope rule; its system prompt and decoding). Killed or stopped, the answers so far are kept beside --out:
    the same command continues from them. --out appears only once every request is answered. --label-next N writes
    only the N requests a classify run is least sure of: the ones to label first.
    """
    from tunelab.cli.generate import DEFAULT_NEW_TOKENS
    from tunelab.data.read import error_summary
    from tunelab.tasks.predict import partial_path, predict_file

    check_output_file(out)
    data = config_from_options(DataConfig, text_field=text_field, prompt_field=prompt_field, messages_field=messages_field,
                               skip_invalid=skip_invalid)
    try:
        with progress_display() as display, cancel_on_sigterm():

            def on_event(name: str, details: dict[str, Any]) -> None:
                if name == "started_over":
                    error_console.print(details["reason"], markup=False, highlight=False, soft_wrap=True)
                elif name == "start":
                    if details["resumed"]:
                        error_console.print(f"continuing: {details['resumed']:,} of {details['total']:,} requests were answered before")
                    display.begin(f"answering with {details['model']}", total=details["total"] - details["resumed"], unit="requests")

            outcome = predict_file(model, path, out, data=data, batch_size=batch_size, allow_network=allow_network,
                                   default_new_tokens=DEFAULT_NEW_TOKENS, on_event=on_event, progress=display.advance,
                                   label_next=label_next)
    except (KeyboardInterrupt, typer.Exit):  # Ctrl-C, or SIGTERM as cancel_on_sigterm ends it
        if partial_path(out).is_file():
            error_console.print(f"the answers so far are kept in {partial_path(out)}: the same command continues from them", soft_wrap=True)
        raise
    if outcome.skipped:
        error_console.print(f"warning: left out {len(outcome.skipped)} invalid row(s):\n  {error_summary(outcome.skipped)}",
                            markup=False, highlight=False, soft_wrap=True)
    if outcome.replaced:
        error_console.print(f"warning: the input's column(s) {', '.join(outcome.replaced)} are replaced by the answer's in {out}",
                            markup=False, highlight=False, soft_wrap=True)
    resumed = f" ({outcome.resumed:,} from the earlier, stopped run)" if outcome.resumed else ""
    ranking = outcome.ranking
    if ranking is None:
        console.print(f"{outcome.rows:,} answers written to {out}{resumed}", soft_wrap=True, highlight=False)
        return
    copies = f" ({ranking.duplicates:,} near-duplicates counted once)" if ranking.duplicates else ""
    console.print(f"ranked {ranking.ranked:,} requests{copies}{resumed}: the {len(ranking.chosen):,} least sure, margin "
                  f"{min(ranking.margins):.3f}-{max(ranking.margins):.3f}, written to {out} to label next",
                  soft_wrap=True, highlight=False)


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
