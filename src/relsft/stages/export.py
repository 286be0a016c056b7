"""Stage export: the servable model directory (weights in the evaluated dtype, tokenizer, model card)."""

import sys

from . import run_stage

# The sections of params.yaml a model is made from: the export records them in relsft.json.
MODEL_SECTIONS = ("recipe", "base", "generate", "validate", "format", "train", "evaluate", "merge")


def export(args, params):
    from ..export import export

    export(args.merged, args.metrics, args.data, args.out, {s: params[s] for s in MODEL_SECTIONS})


if __name__ == "__main__":
    sys.exit(run_stage("export", ("merged", "metrics", "data", "out"), export))
