"""Stage train: SFT with TRL's SFTTrainer and a PEFT LoRA adapter (the recipe's train.sft / train.lora).

Several GPUs: `accelerate launch -m relsft.stages.train --base ... ` (the same flags as dvc.yaml's).
"""

import sys

from . import run_stage


def train(args, params):
    from ..train import train

    cfg = dict(params["train"], max_length=params["format"]["max_length"])
    print(train(args.base, args.formatted, args.out, args.live, cfg))


if __name__ == "__main__":
    sys.exit(run_stage("train", ("base", "formatted", "out", "live"), train))
