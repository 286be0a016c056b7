"""Stage format: prompt/completion records through the base model's chat template."""

import sys

from . import run_stage


def format_records(args, params):
    from ..formatting import format_dataset

    format_dataset(args.base, args.datasets, args.out, params["format"])


if __name__ == "__main__":
    sys.exit(run_stage("format", ("base", "datasets", "out"), format_records))
