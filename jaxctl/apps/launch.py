"""`python -m jaxctl.apps.launch [launcher flags] COMMAND [flags]`: `jaxctl` on many processes.

Starts `jax.distributed` in this process, then runs `jaxctl COMMAND
[flags]` (`jaxctl.apps.cli.main`). Run one such process per host (or per
GPU); together they see every device of every process in `jax.devices()`,
so a command's mesh (`jaxctl reach --devices N`) spans them all and XLA's
collectives (gloo on CPU, NCCL on GPU) cross the processes.

Launcher flags (each defaults to the environment variable in brackets):

- `--coordinator HOST:PORT` [`JAX_COORDINATOR_ADDRESS`]: process 0's address;
- `--num-processes N` [`JAX_NUM_PROCESSES`];
- `--process-id I` [`JAX_PROCESS_ID`], 0 <= I < N;
- `--cpu-devices K`: K fake CPU devices in this process (testing on one
  machine; leave it out on GPUs).

Without `--coordinator` and `--num-processes`, `jax.distributed.initialize()`
detects the cluster itself (SLURM, Open MPI, Cloud TPU). Examples:

    # 2 processes x 2 CPU devices on this machine (two shells):
    python -m jaxctl.apps.launch --coordinator localhost:8476 --num-processes 2 \\
        --process-id 0 --cpu-devices 2 reach --quick --devices 4 --out runs/p0
    python -m jaxctl.apps.launch --coordinator localhost:8476 --num-processes 2 \\
        --process-id 1 --cpu-devices 2 reach --quick --devices 4 --out runs/p1
    # a SLURM job, one task per GPU node:
    srun python -m jaxctl.apps.launch reach --devices 16

Every process writes its own run folder: give each its own `--out`.
"""

from __future__ import annotations

import argparse
import os
import sys

from jaxctl.apps.flags import Parser, integer


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m jaxctl.apps.launch",
                    description="Runs a jaxctl command as one process of a jax.distributed job.")
    parser.add_argument("--coordinator", default=os.environ.get("JAX_COORDINATOR_ADDRESS"),
                        help="HOST:PORT of process 0 (default $JAX_COORDINATOR_ADDRESS)")
    parser.add_argument("--num-processes", type=integer(1),
                        default=os.environ.get("JAX_NUM_PROCESSES"),
                        help="number of processes (default $JAX_NUM_PROCESSES)")
    parser.add_argument("--process-id", type=integer(0), default=os.environ.get("JAX_PROCESS_ID"),
                        help="this process's index (default $JAX_PROCESS_ID)")
    parser.add_argument("--cpu-devices", type=integer(1), default=None,
                        help="fake CPU devices in this process (one-machine tests)")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="the jaxctl command and its flags")
    return parser


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, cpu_devices: int | None = None) -> None:
    """Starts `jax.distributed` (before any computation), CPU collectives by gloo.

    With `coordinator`, `num_processes` and `process_id` all `None`, jax
    detects the cluster (SLURM, Open MPI, Cloud TPU). `cpu_devices` sets
    `jax_num_cpu_devices` (fake CPU devices for one-machine runs).
    """
    import jax

    if cpu_devices is not None:
        jax.config.update("jax_num_cpu_devices", int(cpu_devices))
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=None if num_processes is None else int(num_processes),
        process_id=None if process_id is None else int(process_id))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not args.command:
        parser.error("give the jaxctl command to run, e.g. `reach --quick`")
    given = [v is not None for v in (args.coordinator, args.num_processes, args.process_id)]
    if any(given) and not all(given):
        parser.error("--coordinator, --num-processes and --process-id go together "
                     "(or set none of them to detect the cluster)")
    if all(given) and not args.process_id < args.num_processes:
        parser.error(f"--process-id must be < --num-processes ({args.num_processes}), "
                     f"got {args.process_id}")
    initialize(args.coordinator, args.num_processes, args.process_id, args.cpu_devices)
    from jaxctl.apps.cli import main as cli_main

    return cli_main(args.command)


if __name__ == "__main__":
    sys.exit(main())
