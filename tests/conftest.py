"""Shared fixtures: a tiny tokenizer and a tiny random-weight Llama, built in-process, offline.

Unit tests never touch the network nor the real default model; the few end-to-end tests that use
the real default model are marked ``slow`` and share one converted cache per machine.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Two threads on an idle 2-core machine; a job given fewer cores (OMP_NUM_THREADS=1 beside another) keeps to them.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _threads_unpinned():
    # A test that trains with train.threads pins it for the process (tunelab.runtime.pin_threads): the next
    # test starts from the suite's own threads again.
    from tunelab.runtime import pin_threads

    threads = torch.get_num_threads()
    yield
    pin_threads(None)
    torch.set_num_threads(threads)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Classify the following text. Answer with the category only.",
    "my card has not arrived yet, I need help with billing and my account",
    "Four score and seven years ago our fathers brought forth on this continent a new nation.",
    "What is two plus two? Two plus two is four. Question answer prompt completion.",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz 0123456789",
    "billing technical account refund shipping cancel login other positive negative",
] * 20


def build_tiny_tokenizer():
    """A byte-level BPE tokenizer (vocab ~400) with ChatML special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_gpt2(vocab_size: int, n_positions: int, seed: int = 0):
    """A 1-layer GPT-2 with ``n_positions`` absolute positions (a position past them is an IndexError, where a Llama
    degrades quietly): the model for the tests of the model's context."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=32, n_layer=1, n_head=2, bos_token_id=1, eos_token_id=2)
    return GPT2LMHeadModel(config).eval()


def save_tiny_gpt2(folder: Path, tokenizer, n_positions: int) -> Path:
    """``build_tiny_gpt2`` saved with ``tokenizer`` as a model folder (usable as ``model.name``); ``folder``."""
    build_tiny_gpt2(len(tokenizer), n_positions).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_model(vocab_size: int, seed: int = 0):
    """A 2-layer Llama with hidden size 64 and random weights (about 60k parameters)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    model = LlamaForCausalLM(config)
    model.eval()
    return model


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A saved tiny model folder (config.json + safetensors + tokenizer): usable as ``model.name``."""
    folder = tmp_path_factory.mktemp("tiny-model")
    model = build_tiny_model(len(tiny_tokenizer))
    model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_model(tiny_tokenizer):
    """A fresh tiny model (function scope: tests may train it)."""
    return build_tiny_model(len(tiny_tokenizer))


@pytest.fixture(scope="session")
def default_model():
    """The real default model (SmolLM2-135M-Instruct), converted once per machine into the user cache."""
    from tunelab.runs import load_model

    return load_model("default")


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or skip the test cleanly when this checkout has none beside it."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


# Python run with ``-c`` before a script's own lines: every matplotlib savefig writes half its image, then the process
# dies of SIGKILL (a kill while a chart is written). ``sys.argv[1:]`` are the script's own arguments.
DIE_IN_SAVEFIG = """
import io, os, signal
import matplotlib.figure
original = matplotlib.figure.Figure.savefig
def dying(self, fname, *args, **kwargs):
    buffer = io.BytesIO()
    original(self, buffer, *args, **kwargs)
    half = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    if isinstance(fname, (str, os.PathLike)):
        with open(fname, "wb") as handle:
            handle.write(half)
    else:
        fname.write(half)
    os.kill(os.getpid(), signal.SIGKILL)
matplotlib.figure.Figure.savefig = dying
"""


@pytest.fixture
def killed_while_saving_a_chart():
    """Run ``script`` (Python source) in a fresh process with this checkout's tunelab, killed in its first savefig
    (half the image written); returns the CompletedProcess."""
    import subprocess
    import sys

    import tunelab

    def run(script: str, *args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": str(Path(tunelab.__file__).parents[1])}
        return subprocess.run([sys.executable, "-c", DIE_IN_SAVEFIG + script, *args], env=env, check=False,
                              capture_output=True, text=True)

    return run
