"""``tunelab generate``: answer one prompt with a model, streaming the output."""

from __future__ import annotations

import sys

import typer

from tunelab.cli.common import error_console
from tunelab.errors import ConfigError

DEFAULT_NEW_TOKENS = 256


def generate(
    prompt: str = typer.Argument(..., help="The user message (the model's chat template is applied; a text run continues it as raw text)."),
    model: str = typer.Option("default", "--model", "-m", help="default, a model or run folder, a .gguf, or a hub id."),
    system: str = typer.Option(None, "--system", help="System message (default: the run's own data.system_prompt)."),
    max_new_tokens: int | None = typer.Option(
        None, "--max-new-tokens", min=1, show_default=False,
        help=f"Longest answer in tokens (default: a run's own eval.max_new_tokens, a plain model's generation_config max_new_tokens, else {DEFAULT_NEW_TOKENS}; or fewer when the model's context leaves less after the "
        "prompt); a prompt plus this many tokens past the model's context is refused.",
    ),
    temperature: float | None = typer.Option(
        None, "--temperature", min=0.0, show_default=False, help="0 is greedy (default: a run's own eval.temperature, else the model's generation_config, else 0)."
    ),
    top_p: float | None = typer.Option(None, "--top-p", min=0.0, max=1.0, show_default=False, help="Nucleus mass (default: a run's own eval.top_p, else the model's generation_config, else 1)."),
    allow_network: bool = typer.Option(False, "--allow-network", help="Allow downloading a hub model."),
) -> None:
    """Answer PROMPT with a model, printing tokens as they are generated (a classify run prints its label).

    A run answers as it was evaluated and as it is served: its system prompt, its max_length, its stop tokens, its
    decoding (eval.temperature, eval.top_p) and answer length (eval.max_new_tokens).
    """
    # Imported here: they pull in torch and transformers, which commands without a model never pay for.
    from tunelab.inference import Classifier, chat_prompt, completion_prompt
    from tunelab.models.generate import (
        Decoding,
        configured_decoding,
        context_length,
        stream_generate,
    )
    from tunelab.models.loader import is_cached, on_inference_device
    from tunelab.runs import load_model, resolve_model

    source = resolve_model(model)
    if not is_cached(source):
        error_console.print(f"[dim]converting {source.display_name} from GGUF once (about 20 s); later loads are fast[/dim]")
    loaded = load_model(source, allow_network=allow_network)
    # Loaded on the CPU: answered on the GPU where the model fits it, as `tunelab serve` answers.
    with on_inference_device(loaded.model):
        run = loaded.run
        if loaded.label_map is not None:
            # A classify run answers with one label, as it does when evaluated and served: the one classify inference.
            (answer,) = Classifier.for_model(loaded).classify(loaded.model, [prompt])
            sys.stdout.write(answer.label + "\n")
            error_console.print(f"[dim]top label {answer.top_label} with probability {answer.confidence:.3f}[/dim]")
            return
        max_length = run.max_length if run is not None else None
        if run is not None and run.task == "text":
            prepared = completion_prompt(loaded.tokenizer, prompt, max_length=max_length)  # a text run continues raw text
        else:
            system_prompt = system if system is not None else loaded.system_prompt
            prepared = chat_prompt(loaded.tokenizer, [{"role": "user", "content": prompt}], system_prompt=system_prompt, max_length=max_length)
        if prepared.truncated:
            error_console.print(f"[yellow]warning[/yellow] the prompt is longer than the run's max_length ({max_length}): its last tokens are kept")
        # A run decodes as its evaluation judged it (as `tunelab serve` and `tunelab eval` do), a plain model as its own
        # generation_config says (a merged export's: as its run was judged; greedy where it says nothing), unless told otherwise.
        decoding = run.decoding if run is not None else configured_decoding(loaded.model, Decoding())
        decoding = decoding.told(temperature, top_p)
        max_new_tokens = _new_tokens(len(prepared.ids), max_new_tokens, context_length(loaded.model), decoding.max_new_tokens)
        for piece in stream_generate(
            loaded.model, loaded.tokenizer, prepared.ids, max_new_tokens=max_new_tokens, temperature=decoding.temperature, top_p=decoding.top_p
        ):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")


def _new_tokens(prompt_tokens: int, requested: int | None, context: int, configured: int | None = None) -> int:
    """As the server does: past the model's context is refused (a GPT-2-style model would fail with an IndexError, a
    RoPE model answer beyond its context); without --max-new-tokens the answer gets ``configured`` (the model's own:
    a run's eval.max_new_tokens, a plain folder's generation_config max_new_tokens) or DEFAULT_NEW_TOKENS, at most what
    the context leaves."""
    if prompt_tokens >= context:
        raise ConfigError(f"the prompt has {prompt_tokens} tokens, the model's context is {context}: shorten the prompt")
    if requested is None:
        return min(configured or DEFAULT_NEW_TOKENS, context - prompt_tokens)
    if prompt_tokens + requested > context:
        raise ConfigError(
            f"the prompt has {prompt_tokens} tokens and --max-new-tokens asks for {requested} more, past the model's context "
            f"of {context}: give --max-new-tokens {context - prompt_tokens} or less, or shorten the prompt"
        )
    return requested


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
