"""Stage generate: compose the synthetic train/val/test/test_ood passages from data/ (relsft.synthetic)."""

import sys

from . import run_stage


def generate(args, params):
    from ..synthetic.passages import generate

    counts = generate(args.data, args.out, params["generate"])
    print("generate: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    sys.exit(run_stage("generate", ("data", "out"), generate))
