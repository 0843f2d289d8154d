"""Sharding benchmark: NPG step, HF iteration and CEM planning step against the device count.

    python benchmarks/sharding.py [--fake-cpu-devices 8] [--devices 1 2 4 8] [--quick] [--out DIR]

On fake CPU devices (`--fake-cpu-devices K` sets
`--xla_force_host_platform_device_count=K` before jax starts) every "device"
is a thread of the same CPU, so the times show the overhead of partitioning
and collectives, not a speed-up: the devices share the machine's cores. On a
multi-GPU machine run it as is without `--fake-cpu-devices`
(`python benchmarks/sharding.py --devices 1 2 4 8`); with several processes,
start it through `jaxctl.apps.launch.initialize` (see that module).

For each device count N (a 1-D `data_mesh(N)`), each workload is
1. checked first: its result against the N = 1 run (relative error);
2. compiled apart (compile seconds reported);
3. timed (minimum over `--repeats` calls, `block_until_ready`);
4. measured for communication: the bytes of every collective in the
   optimized HLO, summed per op kind (an op inside a loop is counted once;
   it runs once per CG step or per CEM iteration).

Workloads: NPG = sharded scores of T samples of a softmax policy + 10 CG
steps on the sharded Fisher (`jaxctl.core.sharded`); HF = one `jaxctl
reach` iteration with its targets split over the devices; CEM = one CEM plan
with its K candidates split over the devices.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fake-cpu-devices", type=int, default=None,
                        help="fake CPU devices (set before jax starts)")
    parser.add_argument("--devices", type=int, nargs="+", default=None,
                        help="device counts to time (default 1, 2, 4, ... up to all)")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per workload")
    parser.add_argument("--out", default=None, help="folder for results.json and sharding.md")
    args = parser.parse_args(argv)
    if args.fake_cpu_devices:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.fake_cpu_devices}")

    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxctl.apps import common as _common
    from jaxctl.control.planners import cem
    from jaxctl.core.sharded import sharded_natural_gradient, sharded_scores
    from jaxctl.experiments.reach_model import ReachSettings
    from jaxctl.experiments.reach_train import ReachTrainer
    from jaxctl.util.mesh import data_mesh, hlo_collectives, shape_bytes, shard_along

    total = len(jax.devices())
    counts = args.devices or [n for n in (1, 2, 4, 8, 16, 32) if n <= total]
    T, n_obs, n_act = (1024, 16, 4) if args.quick else (16384, 64, 8)
    K, H = (256, 10) if args.quick else (4096, 20)
    reach = ReachSettings(hidden=16, steps=20 if args.quick else 40,
                          targets=16 if args.quick else 64, cg_maxiter=20)

    def log_prob(w, obs, action):
        return jax.nn.log_softmax(jnp.tanh(obs) @ w)[action]

    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    w = 0.1 * jax.random.normal(k1, (n_obs, n_act))
    obs = jax.random.normal(k2, (T, n_obs))
    actions = jax.random.randint(k3, (T,), 0, n_act)

    def dynamics(x, u):  # a damped pendulum-like 4-state plant, 2 actions
        return x + 0.05 * jnp.concatenate([x[2:], jnp.tanh(u) - jnp.sin(x[:2]) - 0.1 * x[2:]])

    def reward(x, u, y):
        return -(y[:2] @ y[:2]) - 0.01 * (u @ u)

    def timed(fn, *xs):
        t0 = time.perf_counter()
        compiled = jax.jit(fn).lower(*xs).compile()
        compile_s = time.perf_counter() - t0
        result = jax.block_until_ready(compiled(*xs))
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(*xs))
            times.append(time.perf_counter() - t0)
        return result, compile_s, min(times), compiled.as_text()

    def comm(hlo):
        return {op: sum(shape_bytes(s) for s in shapes)
                for op, shapes in hlo_collectives(hlo).items() if shapes}

    rows, reference = [], {}
    for n in counts:
        mesh = data_mesh(n)
        o, a, adv = shard_along((obs, actions, jnp.linspace(-1.0, 1.0, T)), mesh)

        def npg_step(w, o, a, adv):
            G = sharded_scores(log_prob, w, o, a, mesh=mesh)
            g = jnp.matmul(adv, G) / T  # sharded rows: local products + an all-reduce
            return sharded_natural_gradient(G, g, mesh=mesh, method="cg", damping=1e-2,
                                            maxiter=10, tol=0.0)

        plan = functools.partial(cem, dynamics, reward, num_samples=K, horizon=H,
                                 action_low=-jnp.ones(2), action_high=jnp.ones(2),
                                 num_iterations=3, mesh=mesh)
        trainer = ReachTrainer(reach, mesh)
        state = trainer.initial_state()

        def hf_step(params, hf_state):
            return trainer._iteration(params, hf_state, jnp.int32(0), None)[:2]

        workloads = {
            "npg_step": (npg_step, (w, o, a, adv), lambda r: r),
            "hf_iteration": (hf_step, (state.params, state.hf_state), lambda r: r[0]),
            "cem_plan": (plan, (jnp.array([1.0, -0.5, 0.0, 0.2]), jax.random.PRNGKey(1)),
                         lambda r: r.actions),
        }
        for name, (fn, xs, pick) in workloads.items():
            result, compile_s, run_s, hlo = timed(fn, *xs)
            leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(pick(result))]
            reference.setdefault(name, leaves)
            err = max(float(np.max(np.abs(x - r)) / max(np.max(np.abs(r)), 1e-30))
                      for x, r in zip(leaves, reference[name]))
            rows.append({"workload": name, "devices": n, "ms": 1e3 * run_s,
                         "compile_s": compile_s, "rel_err_vs_1": err,
                         "collective_bytes": comm(hlo)})
            print(f"{name:13s} N={n:2d}  {1e3 * run_s:9.2f} ms  compile {compile_s:5.1f} s  "
                  f"err {err:.1e}  collectives {comm(hlo)}", flush=True)

    out = _common.make_run_dir(args.out, "bench-sharding")
    info = {"jax": jax.__version__, "platform": jax.devices()[0].platform,
            "fake_cpu_devices": args.fake_cpu_devices, "cpu_count": os.cpu_count(),
            "T": T, "P": n_obs * n_act, "K": K, "H": H, "reach": reach._asdict()}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"info": info, "rows": rows}, f, indent=1)
    lines = ["| workload | devices | ms | compile s | rel. err vs 1 | collective bytes |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['workload']} | {r['devices']} | {r['ms']:.2f} | {r['compile_s']:.1f} | "
              f"{r['rel_err_vs_1']:.1e} | {r['collective_bytes']} |" for r in rows]
    with open(os.path.join(out, "sharding.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
