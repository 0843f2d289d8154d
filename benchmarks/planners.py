"""Benchmark: compute per MPC step of each planner and model, on HalfCheetah's sizes.

One planning step from one state (and for N states in one vmapped call),
with a dynamics MLP 23-500-17 (n = 17, m = 6, ReLU, float32; the model of
Nagabandi et al. 2018) or an ensemble of 5 such MLPs with Gaussian heads
(23-500-34, Chua et al. 2018):

* random shooting, K = 1000, H = 20, one model (Nagabandi et al. 2018);
* CEM, K = 500, 5 iterations, H = 20, one model;
* MPPI, K = 500, 5 iterations, H = 20, one model;
* PETS-CEM: CEM, K = 500, 5 iterations, H = 30, 20 particles through the
  ensemble (TS-inf, `jaxctl.plan_with_particles`), the setting of Chua et
  al. (2018) on HalfCheetah.

Reported per setting: member evaluations per step (K x iterations x H x
particles), ms per step (min of interleaved repeats, compile apart), and the
ratio to random shooting measured in the same run.

Run: `python benchmarks/planners.py [--single-thread] [--states N] [--out DIR]`.
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
    p.add_argument("--states", type=int, default=1, help="N states planned in one vmapped call")
    p.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds (min reported)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    p.add_argument("--single-thread", action="store_true",
                   help="pin XLA to one thread (set before jax starts)")
    p.add_argument("--out", default=None, help="folder for planners.json")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.single_thread:
        _common.request_single_thread()
    import jax
    import jax.numpy as jnp

    import jaxctl

    n, m, hidden = 17, 6, (16,) if args.quick else (500,)
    scale = 10 if args.quick else 1
    stats = jaxctl.NormStats(jnp.zeros(n), jnp.ones(n), jnp.zeros(m), jnp.ones(m),
                             jnp.zeros(n), 0.1 * jnp.ones(n))
    key = jax.random.PRNGKey(0)
    single = jaxctl.dynamics_init(key, stats, hidden)
    ensemble = jaxctl.dynamics_init(key, stats, hidden, ensemble_size=5, head="gaussian")
    reward = lambda s, a, s2: s2[8] - 0.1 * a @ a  # forward velocity minus a control cost
    bounds = dict(action_low=-jnp.ones(m), action_high=jnp.ones(m))

    def planner_step(planner, K, H, **opts):
        def step(model, s, k):
            f = jax.tree_util.Partial(jaxctl.dynamics_predict, model)
            return planner(f, reward, s, k, num_samples=K // scale, horizon=H, **bounds,
                           **opts).actions[0]
        return step

    def pets_step(K, H, P):
        def step(model, s, k):
            return jaxctl.plan_with_particles(jaxctl.cem, model, reward, s, k, horizon=H,
                                              num_particles=P, num_samples=K // scale,
                                              **bounds).actions[0]
        return step

    settings = {  # name: (step, model, member evaluations per step)
        "random shooting K=1000 H=20": (planner_step(jaxctl.random_shooting, 1000, 20), single,
                                        1000 * 20),
        "CEM K=500 x5 H=20": (planner_step(jaxctl.cem, 500, 20), single, 500 * 5 * 20),
        "MPPI K=500 x5 H=20": (planner_step(jaxctl.mppi, 500, 20), single, 500 * 5 * 20),
        "PETS-CEM K=500 x5 H=30 P=20 E=5": (pets_step(500, 30, 20), ensemble, 500 * 5 * 30 * 20),
    }
    N = args.states
    states = jax.random.normal(jax.random.PRNGKey(1), (N, n))
    keys = jax.random.split(jax.random.PRNGKey(2), N)
    compiled, compile_s = {}, {}
    for name, (step, model, _) in settings.items():
        t0 = time.perf_counter()
        compiled[name] = jax.jit(jax.vmap(step, in_axes=(None, 0, 0))).lower(
            model, states, keys).compile()
        compile_s[name] = time.perf_counter() - t0
    best = {name: float("inf") for name in settings}
    for _ in range(args.repeats):
        for name, (_, model, _) in settings.items():
            t0 = time.perf_counter()
            jax.block_until_ready(compiled[name](model, states, keys))
            best[name] = min(best[name], time.perf_counter() - t0)
    base = best["random shooting K=1000 H=20"]
    rows, results = [], {}
    for name, (_, _, evals) in settings.items():
        results[name] = {"member_evaluations_per_state": evals // scale, "ms": 1e3 * best[name],
                         "compile_s": compile_s[name], "ratio_to_random_shooting": best[name] / base}
        rows.append([name, f"{evals // scale:,}", f"{1e3 * best[name]:.1f}",
                     f"{best[name] / base:.1f}x", f"{compile_s[name]:.1f}"])
    print(f"jax {jax.__version__}, {N} state(s) per call, "
          f"{'1 thread' if args.single_thread else 'default threads'}")
    print(_common.markdown_table(["setting", "member evaluations per state", "ms per call",
                                  "vs random shooting", "compile s"], rows))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "planners.json"), "w") as f:
            json.dump({"jax": jax.__version__, "states": N, "results": results}, f, indent=1)
    return results


if __name__ == "__main__":
    main()
