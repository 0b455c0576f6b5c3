"""Run a tiny training in its own process (for the SIGKILL/resume and two-process tests).

usage: train_child.py MODEL_DIR RUN_DIR MODE [key=value ...]
MODE: fresh | resume | slow (fresh, sleeping after each step so the parent can kill it mid-run).
"""

import errno
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from train_helpers import classify_records, records_split, sft_records, tiny_config  # noqa: E402

from tunelab.data.records import SFTRecord  # noqa: E402
from tunelab.tasks import run_training  # noqa: E402

LONG = " Four score and seven years ago our fathers brought forth on this continent a new nation."


def main() -> None:
    model_dir, run_dir, mode, *overrides = sys.argv[1:]
    settings = {}
    for item in overrides:
        key, value = item.split("=", 1)
        settings[key] = json.loads(value)
    task = settings.pop("task", "sft")
    validation_rows = settings.pop("validation_rows", 4)  # an odd count leaves the processes' shards uneven
    long_answers = settings.pop("long_answers", False)
    if settings.pop("full_disk_on_rank0", False) and os.environ.get("RANK", "0") == "0":
        # The main process alone writes checkpoints: its disk fills up there while the others wait for it.
        from tunelab.train import checkpoints

        def full_disk(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        checkpoints._write_checkpoint = full_disk
    config = tiny_config(Path(model_dir), task, settings.pop("max_length", 64), **settings)
    records = classify_records if task == "classify" else sft_records
    train = records(12)
    if long_answers:  # every other row several times as long: passes of uneven counts
        train = [SFTRecord((r.messages[0], {"role": "assistant", "content": r.messages[1]["content"] + LONG})) if i % 2 else r
                 for i, r in enumerate(train)]
    split = records_split(train, records(12 + validation_rows)[12:])
    seen_steps = []
    if mode == "slow":  # the parent may kill one rank of a launched group: it finds this process's id here
        Path(f"{run_dir}.rank{os.environ.get('RANK', '0')}.pid").write_text(str(os.getpid()))

    def progress(event) -> None:
        seen_steps.append(event.step)
        if mode == "slow":
            time.sleep(0.3)

    result = run_training(config, split, run_dir=Path(run_dir), progress=progress, resume=mode == "resume")
    summary = {"final_loss": result.final_loss, "steps": result.steps, "first_step": seen_steps[0] if seen_steps else None,
               "best_validation_loss": result.best_validation_loss, "best_validation_score": result.best_validation_score}
    # One write of the whole line: under accelerate two ranks share the parent's pipe, and print()
    # may write the text and its newline separately, gluing the two ranks' lines into one.
    os.write(sys.stdout.fileno(), ("RESULT " + json.dumps(summary) + "\n").encode())


if __name__ == "__main__":
    main()
