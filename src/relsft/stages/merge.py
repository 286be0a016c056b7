"""Stage merge: fold the adapter into the base weights and prove greedy parity with base + adapter."""

import sys

from . import run_stage


def merge(args, params):
    from ..merge import merge

    merge(args.base, args.adapter, args.datasets, args.out,
          dict(params["merge"], max_new_tokens=params["evaluate"]["max_new_tokens"]))


if __name__ == "__main__":
    sys.exit(run_stage("merge", ("base", "adapter", "datasets", "out"), merge))
