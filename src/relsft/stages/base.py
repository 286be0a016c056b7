"""Stage base: build (builtin) or fetch and convert (pretrained) the base model every later stage starts from."""

import sys

from . import run_stage


def base(args, params):
    from ..base import build_base

    build_base({"base": params["base"], "data": {"dir": args.data}}, args.out)


if __name__ == "__main__":
    sys.exit(run_stage("base", ("data", "out"), base))
