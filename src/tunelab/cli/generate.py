"""``tunelab generate``: answer one prompt with a model, streaming the output."""

from __future__ import annotations

import sys

import typer

from tunelab.cli.common import error_console


def generate(
    prompt: str = typer.Argument(..., help="The user message (the model's chat template is applied)."),
    model: str = typer.Option("default", "--model", "-m", help="default, a model or run folder, a .gguf, or a hub id."),
    system: str = typer.Option(None, "--system", help="Optional system message."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, help="Longest answer in tokens."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 is greedy."),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0),
    allow_network: bool = typer.Option(False, "--allow-network", help="Allow downloading a hub model."),
) -> None:
    """Answer PROMPT with a model, printing tokens as they are generated (a classify run prints its label)."""
    # Imported here: they pull in torch and transformers, which commands without a model never pay for.
    from tunelab.models.generate import stream_generate
    from tunelab.models.loader import is_cached, load_model
    from tunelab.models.resolve import resolve_model

    source = resolve_model(model)
    if not is_cached(source):
        error_console.print(f"[dim]converting {source.display_name} from GGUF once (about 20 s); later loads are fast[/dim]")
    loaded = load_model(source, allow_network=allow_network)
    if loaded.label_map:
        # A classify run answers with one label, as it does when served: its own prompt, label head and threshold.
        from tunelab.evaluation.evaluate import classify_texts

        (answer,) = classify_texts(loaded, [prompt])
        sys.stdout.write(answer["label"] + "\n")
        error_console.print(f"[dim]top label {answer['top_label']} with probability {answer['confidence']:.3f}[/dim]")
        return
    for piece in stream_generate(
        loaded.model, loaded.tokenizer, prompt, system=system, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p
    ):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
