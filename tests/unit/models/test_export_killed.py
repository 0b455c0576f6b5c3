"""`tunelab export` and what a crash leaves: an export killed midway leaves nothing a later export (or a reader) takes
for complete, the same command run again finishes it, and an export never copies out the temporary of a write
killed in the run folder.

The kills are real SIGKILLs of a real ``tunelab export`` process (``TUNELAB_KILL_AT``, see ``tunelab.faults``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.faults import KILL_ENV
from tunelab.models.gguf_export import modelfile_path
from tunelab.runs import export_folder

SRC = Path(__file__).resolve().parents[3] / "src"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir, tiny_tokenizer) -> Path:
    from tests.unit.models.test_gguf_export import write_lora_run

    return write_lora_run(tmp_path_factory.mktemp("runs") / "sft-run", tiny_model_dir, tiny_tokenizer, seed=1)


def _export(args: list[str], **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
                   "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    environment.pop(KILL_ENV, None)
    environment.update(env)
    return subprocess.run([sys.executable, "-m", "tunelab.cli.main", "export", *args], env=environment,
                          capture_output=True, text=True, timeout=600)


def test_a_gguf_export_killed_before_its_modelfile_leaves_no_gguf_and_runs_again(lora_run, tmp_path):
    """The GGUF was renamed into place before its Modelfile was written: killed between the two, `model.gguf` stood
    there complete-looking without the Modelfile `ollama create` needs, and the same command refused ("already exists")."""
    out = tmp_path / "model.gguf"
    command = [str(lora_run), str(out), "--format", "gguf", "--ollama"]
    killed = _export(command, **{KILL_ENV: f"atomic-write.before-rename:{modelfile_path(out).name}"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not out.exists()  # nothing in place says "complete" while a part of the export is missing
    done = _export(command)
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.is_file() and modelfile_path(out).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.Modelfile", "model.gguf"]  # the killed one's temporaries gone


def test_a_gguf_export_killed_after_its_modelfile_runs_again(lora_run, tmp_path):
    """Killed once the Modelfile is in place and the GGUF not yet: the Modelfile alone is a killed export's, not refused."""
    out = tmp_path / "model.gguf"
    command = [str(lora_run), str(out), "--format", "gguf", "--ollama"]
    killed = _export(command, **{KILL_ENV: "export.modelfile-written"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not out.exists() and modelfile_path(out).is_file()
    done = _export(command)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.Modelfile", "model.gguf"]


def test_an_adapter_export_leaves_out_the_temporary_of_a_write_killed_in_the_run(lora_run, tmp_path):
    """A run killed while its register step rewrote adapter/README.md is finished (adapter/ and config.yaml are there):
    `tunelab export` copied the dead writer's `.README.md.PID.*.tmp` into the export."""
    leftover = lora_run / "adapter" / ".README.md.999999.x1y2.tmp"
    leftover.write_text("half a model card")
    try:
        out = export_folder(lora_run, tmp_path / "exported", merge=False)
    finally:
        leftover.unlink()
    assert (out / "adapter_model.safetensors").is_file()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
