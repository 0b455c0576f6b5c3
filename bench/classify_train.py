"""Classify LoRA training on BANKING77, tunelab vs TRL SFTTrainer with the label token as completion
(see compare.py; accuracy by one-pass label scoring for both). Usage: python bench/classify_train.py [--steps 6 ...]"""

import sys

from compare import main

if __name__ == "__main__":
    main(["--task", "classify", "--batch-size", "16", "--max-length", "128", "--validation", "200", *sys.argv[1:]])
