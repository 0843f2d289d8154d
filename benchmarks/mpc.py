"""Benchmark: one random-shooting MPC planning step, jitted JAX vs batched numpy.

The random-shooting planner of Nagabandi et al. (2018) at the benchmark size: K = 1000
candidate action sequences of horizon H = 10 through an MLP dynamics model
26-500-500-20 (n = 20 states, m = 6 actions, ReLU, float32), scored by a
forward-velocity reward, best sequence returned. Reported:

* ms per planning step for `jaxctl.control.planners.random_shooting` under `jax.jit` and
  for the same algorithm in batched numpy (one `(K, .) @ (., .)` product per
  layer and time step), both in this process, interleaved, min of repeats;
* the planner's FLOP rate (the candidates' matmul FLOPs / time) as a fraction
  of a plain float32 matmul's rate measured here (the higher of a square
  1536^3 product and the planner's dominant layer over all steps at once,
  (K*H x 500) @ (500 x 500)). Both baselines take about as long as one
  planning step, so min-of-repeats on this shared machine favours neither
  side (a 3 ms matmul catches quiet moments a 30 ms step never gets);
* compile time apart.

Correctness is checked first: JAX and numpy score the same candidates alike,
and the planner's returned fields agree with a numpy re-simulation.

Run: `python benchmarks/mpc.py [--single-thread] [--out DIR]`.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from jaxctl.apps import common as _common  # noqa: E402  (no numpy / jax work at import)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--num-samples", type=int, default=1000, help="K candidate sequences")
    p.add_argument("--horizon", type=int, default=10, help="H planning horizon")
    p.add_argument("--hidden", type=int, nargs="+", default=[500, 500], help="hidden widths")
    p.add_argument("--state-dim", type=int, default=20)
    p.add_argument("--action-dim", type=int, default=6)
    p.add_argument("--repeats", type=int, default=20, help="interleaved timing rounds (min reported)")
    p.add_argument("--min-seconds", type=float, default=3.0, help="keep timing at least this long")
    p.add_argument("--single-thread", action="store_true",
                   help="pin XLA and BLAS to one thread (set before numpy and jax start)")
    p.add_argument("--out", default=None, help="run folder for results.json")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.single_thread:
        _common.request_single_thread()  # before numpy's BLAS and XLA start their threads
    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxctl.control import planners as mpc
    from jaxctl.control.simulate import rollout
    from jaxctl.models.mlp import mlp_apply, mlp_init

    K, H, n, m = args.num_samples, args.horizon, args.state_dim, args.action_dim
    sizes = (n + m, *args.hidden, n)
    params = mlp_init(jax.random.PRNGKey(0), sizes, output_scale=0.1)
    low, high = -jnp.ones(m), jnp.ones(m)

    def dynamics(x, u):
        return x + mlp_apply(params, jnp.concatenate([x, u]), "relu")

    def reward(x, u, y):
        return y[0] - 0.1 * jnp.sum(u ** 2)

    plan = jax.jit(functools.partial(mpc.random_shooting, dynamics, reward, num_samples=K,
                                     horizon=H, action_low=low, action_high=high))

    np_params = [(np.asarray(l["w"]), np.asarray(l["b"])) for l in params]
    rng = np.random.default_rng(0)

    def np_scores(x0, cand):
        """Returns of (K, H, m) candidates, batched over K, a Python loop over H only."""
        s = np.broadcast_to(x0, (cand.shape[0], n)).astype(np.float32)
        total = np.zeros(cand.shape[0], np.float32)
        for t in range(cand.shape[1]):
            u = cand[:, t]
            h = np.concatenate([s, u], axis=1)
            for w, b in np_params[:-1]:
                h = np.maximum(h @ w + b, 0.0)
            s = s + h @ np_params[-1][0] + np_params[-1][1]
            total += s[:, 0] - 0.1 * np.sum(u * u, axis=1)
        return total

    def np_plan(x0):
        cand = rng.uniform(-1.0, 1.0, (K, H, m)).astype(np.float32)
        scores = np_scores(x0, cand)
        scores = np.where(np.isfinite(scores), scores, -np.inf)
        best = int(np.argmax(scores))
        return cand[best], scores[best]

    x0 = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (n,)), np.float32)
    key = jax.random.PRNGKey(2)

    # --- correctness first ---------------------------------------------------
    cand = rng.uniform(-1.0, 1.0, (64, H, m)).astype(np.float32)
    jax_totals = jax.jit(jax.vmap(lambda a: jnp.sum(rollout(dynamics, reward, jnp.asarray(x0), a)[1])))(cand)
    np.testing.assert_allclose(np.asarray(jax_totals), np_scores(x0, cand), rtol=1e-3, atol=1e-3)
    compile_s = _common.compile_seconds(plan, x0, key)
    res = plan(x0, key)
    resim = np_scores(x0, np.asarray(res.actions)[None])[0]
    np.testing.assert_allclose(float(res.total_reward), resim, rtol=1e-3, atol=1e-3)
    assert res.states.shape == (H + 1, n) and int(res.num_finite) == K
    print(f"correctness: JAX and numpy agree on 64 candidates; planner total "
          f"{float(res.total_reward):.4f} == numpy re-simulation {resim:.4f}")

    # --- timing -----------------------------------------------------------------
    sq = 1536
    a_sq = jax.random.normal(key, (sq, sq), jnp.float32)
    b_sq = jax.random.normal(jax.random.PRNGKey(3), (sq, sq), jnp.float32)
    a_layer = jax.random.normal(key, (K * H, args.hidden[-1]), jnp.float32)
    b_layer = jax.random.normal(key, (args.hidden[-1], args.hidden[-1]), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    _common.block(matmul(a_sq, b_sq))
    _common.block(matmul(a_layer, b_layer))
    keys = list(jax.random.split(key, 8))
    counter = [0]

    def jax_call():
        counter[0] += 1
        return plan(x0, keys[counter[0] % len(keys)])

    times = _common.interleaved_min_seconds({
        "jax": jax_call,
        "numpy": lambda: np_plan(x0),
        "matmul_square": lambda: matmul(a_sq, b_sq),
        "matmul_layer": lambda: matmul(a_layer, b_layer),
    }, repeats=args.repeats, min_total=args.min_seconds)

    flops_per_sample_step = 2 * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    plan_flops = K * H * flops_per_sample_step
    rate = {
        "jax": plan_flops / times["jax"],
        "numpy": plan_flops / times["numpy"],
        "matmul_square": 2 * sq ** 3 / times["matmul_square"],
        "matmul_layer": 2 * K * H * args.hidden[-1] ** 2 / times["matmul_layer"],
    }
    peak = max(rate["matmul_square"], rate["matmul_layer"])
    results = {
        "ms_per_step_jax": times["jax"] * 1e3,
        "ms_per_step_numpy": times["numpy"] * 1e3,
        "speedup_vs_numpy": times["numpy"] / times["jax"],
        "gflop_per_step": plan_flops / 1e9,
        "gflops_jax": rate["jax"] / 1e9,
        "gflops_numpy": rate["numpy"] / 1e9,
        "gflops_matmul_square": rate["matmul_square"] / 1e9,
        "gflops_matmul_layer_shape": rate["matmul_layer"] / 1e9,
        "fraction_of_matmul_rate": rate["jax"] / peak,
        "compile_seconds": compile_s,
        "goals": {"speedup_vs_numpy >= 1.5": times["numpy"] / times["jax"] >= 1.5,
                  "fraction_of_matmul_rate >= 0.7": rate["jax"] / peak >= 0.7},
    }
    rows = [
        ["JAX random_shooting (jit)", times["jax"] * 1e3, rate["jax"] / 1e9,
         rate["jax"] / peak],
        ["numpy batched", times["numpy"] * 1e3, rate["numpy"] / 1e9, rate["numpy"] / peak],
        [f"matmul {sq}^3 float32", times["matmul_square"] * 1e3, rate["matmul_square"] / 1e9,
         rate["matmul_square"] / peak],
        [f"matmul ({K * H}x{args.hidden[-1]})@({args.hidden[-1]}x{args.hidden[-1]})",
         times["matmul_layer"] * 1e3, rate["matmul_layer"] / 1e9, rate["matmul_layer"] / peak],
    ]
    threads = "1 thread" if args.single_thread else f"{os.cpu_count()} cores"
    print(f"\nRandom-shooting step, K={K}, H={H}, MLP {'-'.join(map(str, sizes))} ReLU float32, "
          f"{plan_flops / 1e9:.2f} GFLOP per step, {threads}")
    print(_common.markdown_table(["", "ms", "GFLOP/s", "fraction of matmul rate"], rows))
    print(f"\nspeed-up vs numpy: {results['speedup_vs_numpy']:.2f}x; compile "
          f"{compile_s:.2f} s (apart)")
    out = _common.make_run_dir(args.out, "bench-mpc")
    path = _common.write_results(out, "benchmarks/mpc.py", vars(args), results)
    print(f"results: {path}")
    return results


if __name__ == "__main__":
    main()
