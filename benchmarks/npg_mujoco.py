"""Benchmark: env steps per second of the whole NPG loop on gymnasium MuJoCo, vector vs sequential.

One NPG iteration of `jaxctl.experiments.npg_mujoco` (N trajectories of the
linear Gaussian policy, then the jitted update) with two samplers, in this
process, interleaved, min over rounds:

* vector: a `gymnasium.make_vec(..., "sync")` env of N sub-envs, one jitted
  policy call for all N per vector step (`collect_vector`);
* sequential, mjrl-style: one env, the N trajectories one after the other,
  one jitted policy call on one observation per step (`collect_sequential`).

Both feed the same update, so the ratio is that of the sampling. Compile time
is reported apart. Checked first: both samplers give N whole trajectories
(Swimmer and HalfCheetah never terminate early, so N * H valid steps) and a
finite update.

Run: `python benchmarks/npg_mujoco.py [--task swimmer] [--single-thread] [--out DIR]`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from jaxctl.apps import common as _common  # noqa: E402  (no numpy / jax work at import)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", default="swimmer", choices=["swimmer", "halfcheetah"])
    p.add_argument("--num-traj", type=int, default=10, help="N trajectories per iteration")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (min reported)")
    p.add_argument("--single-thread", action="store_true",
                   help="pin XLA and BLAS to one thread (set before numpy and jax start)")
    p.add_argument("--out", default=None, help="folder for results.json")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.single_thread:
        _common.request_single_thread()
    import gymnasium
    import jax
    import numpy as np

    import jaxctl.experiments.npg_mujoco as nm

    cfg = nm.MujocoSettings(task=args.task, num_traj=args.num_traj)
    envs = nm.make_envs(args.task, args.num_traj, 0)
    env = gymnasium.make(nm.TASKS[args.task])
    env.reset(seed=1)
    space = envs.single_action_space
    _, init, act, update = nm.make_agent(cfg, envs.single_observation_space.shape[0],
                                         space.shape[0], space.low, space.high)
    state = init(jax.random.PRNGKey(0))
    key = jax.random.PRNGKey(1)
    samplers = {"vector": lambda s: nm.collect_vector(envs, act, s, key, cfg.horizon),
                "sequential": lambda s: nm.collect_sequential(env, act, s, key, cfg.num_traj,
                                                              cfg.horizon)}

    def iteration(name, s):
        batch = samplers[name](s)
        new, metrics = update(s, batch)
        jax.block_until_ready(new)
        return new, metrics, int(batch.mask.sum())

    compile_seconds = {}
    for name in samplers:  # warm-up: compiles act (N and 1 observations) and the update
        t0 = time.perf_counter()
        _, metrics, steps = iteration(name, state)
        compile_seconds[name] = time.perf_counter() - t0
        if steps != cfg.num_traj * cfg.horizon or not np.isfinite(float(metrics["return"])):
            raise SystemExit(f"{name}: {steps} valid steps, return {metrics['return']}")
    best = {name: float("inf") for name in samplers}
    for _ in range(args.rounds):
        for name in samplers:
            t0 = time.perf_counter()
            state, _, steps = iteration(name, state)
            best[name] = min(best[name], time.perf_counter() - t0)
    steps = cfg.num_traj * cfg.horizon
    res = {"task": nm.TASKS[args.task], "num_traj": cfg.num_traj, "steps_per_iteration": steps,
           "steps_per_second": {k: steps / v for k, v in best.items()},
           "seconds_per_iteration": best, "first_iteration_seconds": compile_seconds,
           "speedup": best["sequential"] / best["vector"], "jax": jax.__version__,
           "single_thread": args.single_thread, "rounds": args.rounds}
    print(json.dumps(res, indent=2))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
