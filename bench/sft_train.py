"""SFT LoRA training, tunelab vs TRL SFTTrainer (see compare.py). Usage: python bench/sft_train.py [--steps 6 ...]"""

import sys

from compare import main

if __name__ == "__main__":
    main(["--task", "sft", *sys.argv[1:]])
