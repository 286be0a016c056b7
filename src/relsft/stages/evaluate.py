"""Stage evaluate: score the merged model (and the base beside it) on test, test_ood and gold."""

import sys

from . import run_stage


def evaluate(args, params):
    from ..evaluate import evaluate_settings, run_evaluate

    cfg = evaluate_settings(params["evaluate"], params["format"]["max_length"])
    run_evaluate(args.model, args.base, args.datasets, args.data, args.metrics, args.reports, cfg)


if __name__ == "__main__":
    sys.exit(run_stage("evaluate", ("model", "base", "datasets", "data", "metrics", "reports"), evaluate))
