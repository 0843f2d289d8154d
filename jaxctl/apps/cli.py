"""The `jaxctl` command: one sub-command per headline experiment.

Each sub-command lives in a module of `jaxctl.agents` that provides
`add_arguments(parser)` and `run(args, out_dir) -> dict`. This file only
parses flags, prepares the run folder and writes `results.json`.
`--single-thread` is applied before jax runs anything.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command name -> (module, one-line help)
COMMANDS = {
    "reach": ("jaxctl.apps.reach", "the main job: train the seed's recurrent network by Hessian-free through the exact closed loop to drive a 2-link arm to 64 targets"),
    "bench": ("jaxctl.apps.bench", "curvature benchmark: per-sample gradients, NPG step, matrix-free CG"),
    "npg": ("jaxctl.apps.npg", "natural policy gradient vs vanilla PG on CartPole (seed experiment) and NPG on Pendulum"),
    "mpc": ("jaxctl.apps.mpc", "model-based RL: learned MLP dynamics + jitted MPC on Pendulum, HalfCheetah, Swimmer"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxctl",
        description="Second-order policy optimization and model-based control in JAX.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.add_argument("--out", default=None,
                       help="run folder for results.json and plots (default: a fresh runs/<command>-<time>)")
        p.add_argument("--quick", action="store_true",
                       help="a small version that finishes in well under a minute (smoke tests)")
        p.add_argument("--single-thread", action="store_true",
                       help="pin XLA and BLAS to one thread (stable timing ratios)")
        importlib.import_module(module_name).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    from jaxctl.apps import common as _common

    argv = sys.argv[1:] if argv is None else argv
    if "--single-thread" in argv:
        _common.request_single_thread()
    args = build_parser().parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    out_dir = _common.make_run_dir(args.out, args.command)
    results = module.run(args, out_dir)
    path = _common.write_results(out_dir, args.command, vars(args), results)
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
