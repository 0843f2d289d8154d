"""The `jaxctl` command: one sub-command per headline experiment.

Each sub-command lives in a module of `jaxctl.apps` that provides
`add_arguments(parser)`, `prepare(args)` (checks that relate several flags,
quick defaults) and `run(args, out_dir) -> dict`. This file parses and
checks the flags, and only then creates the run folder, runs the command
and writes `results.json`. A rejected value is one line on stderr and exit
code 2; Ctrl-C is one line and exit code 130. `--single-thread` is applied
before jax runs anything.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

import jaxctl.apps.common as _common
from jaxctl.apps.flags import Parser, UsageError
from jaxctl.util.checkpoint import CheckpointError

# command name -> (module, one-line help)
COMMANDS = {
    "reach": ("jaxctl.apps.reach", "the main job: train the recurrent network of DeWolf (2016) by "
              "Hessian-free through the exact closed loop to drive a 2-link arm to 64 targets"),
    "bench": ("jaxctl.apps.bench", "curvature benchmark: per-sample gradients, NPG step, "
              "matrix-free CG"),
    "npg": ("jaxctl.apps.npg", "natural policy gradient vs vanilla PG on CartPole (DeWolf 2018) "
            "and NPG on Pendulum"),
    "mpc": ("jaxctl.apps.mpc", "model-based RL (Nagabandi et al. 2018): learned MLP dynamics + "
            "jitted MPC on Pendulum, HalfCheetah, Swimmer"),
    "spiking": ("jaxctl.apps.spiking", "rate networks run as spiking neurons (DeWolf 2020): the "
                "8x8 digits conversion story, then a spiking CartPole controller"),
}


def build_parser() -> argparse.ArgumentParser:
    """The `jaxctl` parser with one sub-parser per command."""
    parser = Parser(prog="jaxctl",
                    description="Second-order policy optimization and model-based control in JAX.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parser.commands = {}
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.add_argument("--out", default=None,
                       help="run folder for results.json and plots (default: a fresh "
                            "runs/<command>-<time>)")
        p.add_argument("--quick", action="store_true",
                       help="a small version that finishes in well under a minute (smoke tests)")
        p.add_argument("--single-thread", action="store_true",
                       help="pin XLA and BLAS to one thread (stable timing ratios)")
        importlib.import_module(module_name).add_arguments(p)
        parser.commands[name] = p
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs `jaxctl <command> <flags>`; returns the exit code (0)."""
    argv = sys.argv[1:] if argv is None else argv
    if "--single-thread" in argv:
        _common.request_single_thread()
    parser = build_parser()
    args = parser.parse_args(argv)
    command = parser.commands[args.command]
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        if args.out is not None and os.path.exists(args.out) and not os.path.isdir(args.out):
            raise UsageError(f"--out: {args.out} exists and is not a folder")
        module.prepare(args)
    except (UsageError, ValueError, CheckpointError) as exc:
        command.error(str(exc))
    with _common.interrupt_handler():
        out_dir = _common.make_run_dir(args.out, args.command)
        results = module.run(args, out_dir)
        path = _common.write_results(out_dir, args.command, vars(args), results)
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
