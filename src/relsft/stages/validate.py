"""Stage validate: Great Expectations checks of the raw inputs and the generated splits, with Data Docs."""

import sys

from . import run_stage


def validate(args, params):
    from ..validate import validate

    validate(args.data, args.datasets, args.docs, args.report, params["validate"])


if __name__ == "__main__":
    sys.exit(run_stage("validate", ("data", "datasets", "docs", "report"), validate))
