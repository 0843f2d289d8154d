"""NPG agent benchmark: time per batch per session of the vmapped CartPole run.

    python benchmarks/npg.py [--quick] [--single-thread] [--sessions 10 100] [--out DIR]

One batch = rollout of 200 steps + advantages + policy update + value fit,
for every session at once (sessions are a vmap axis of one jitted program,
`chunk` batches per call in a `lax.scan`). For each variant it

1. checks correctness first: the NPG step of one real CartPole batch has
   `step^T (F + lambda I) step = delta` (float64 oracle from the scores), and
   the vmapped program reproduces a session run on its own;
2. measures compile time apart (first call minus a steady call);
3. times all variants interleaved in one process (minimum over rounds; the
   machine is shared) and reports ms per batch per session and the ratio to
   two baselines in the same run: vanilla PG (same batch, Adam instead of
   the natural step) and the rollout alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small and fast (smoke test)")
    parser.add_argument("--single-thread", action="store_true", help="pin XLA to one thread")
    parser.add_argument("--sessions", type=int, nargs="+", default=[10, 100],
                        help="numbers of vmapped sessions to time")
    parser.add_argument("--chunk", type=int, default=10, help="batches per jitted call")
    parser.add_argument("--repeats", type=int, default=10, help="interleaved timing rounds")
    parser.add_argument("--out", default=None, help="folder for results.json and npg_bench.md")
    args = parser.parse_args(argv)

    from jaxctl.apps import common as _common

    if args.single_thread:
        _common.request_single_thread()

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    from jaxctl.experiments import npg_sessions as agent
    from jaxctl.experiments.policy_noise import policy_sampler
    from jaxctl.core.fisher import fisher_matrix
    from jaxctl.core.jacobians import per_sample_grads, ravel_per_sample
    from jaxctl.optim.npg import npg
    from jaxctl.control.rl import episode_ends, gae, rollout, score_gradient

    if args.quick:
        args.sessions, args.chunk, args.repeats = [3], 2, 2
    out = _common.make_run_dir(args.out, "bench-npg")
    base = agent.NPGSettings(bootstrap=True)
    variants = {
        # The headline: the damped step solved by eigh of the P x P Fisher (jaxctl npg's).
        "npg-damped": base._replace(delta=0.002, rel_damping=0.01, method="eigh"),
        "npg-damped-svd": base._replace(delta=0.002, rel_damping=0.01, method="svd"),
        "npg-dewolf": base._replace(delta=0.001),  # DeWolf (2018): undamped pseudo-inverse
        "npg-cg": base._replace(fisher="cg", delta=0.002, damping=1e-3),
        "pg-adam": base._replace(algo="pg"),
    }

    # ---- 1. correctness: the step on a real batch, and vmap == one by one
    env, env_params = agent.make_env(base)
    policy, vf = agent.make_policy_value(base, env, env_params)
    act, noise = policy_sampler(policy, env, env_params)
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    pi_params, v_params = policy.init(k[0]), vf.init(k[1])
    traj, _ = jax.jit(lambda p, key: rollout(env, env_params, policy.sample, p, key, 200))(pi_params, k[2])
    values = jax.vmap(lambda o: vf.apply(v_params, o))(traj.obs)
    next_values = jax.vmap(lambda o: vf.apply(v_params, o))(traj.next_obs)
    adv, _ = gae(traj.rewards, values, next_values, traj.terminated, episode_ends(traj), 0.97, 1.0)
    scores = per_sample_grads(policy.log_prob, pi_params, traj.obs, traj.actions)
    G = np.asarray(ravel_per_sample(scores)[0], np.float64)
    F = G.T @ G / G.shape[0]
    grads = jax.tree.map(jnp.negative, score_gradient(scores, adv))
    checks = {}
    for name in ("npg-damped", "npg-damped-svd", "npg-dewolf"):
        c = variants[name]
        opt = npg(c.delta, rel_damping=c.rel_damping, method=c.method)
        upd, _ = opt.update(grads, opt.init(pi_params), scores=scores)
        s = np.asarray(jax.flatten_util.ravel_pytree(upd)[0], np.float64)
        lam = c.rel_damping * np.linalg.eigvalsh(F).max()
        quad = float(s @ (F + lam * np.eye(len(s))) @ s)
        checks[f"{name}_step_norm_over_delta"] = quad / c.delta
        assert abs(quad / c.delta - 1) < 1e-2, (name, quad, c.delta)
    s_init, s_step = agent.make_session(variants["npg-damped"])
    init_v, chunk_v = agent.make_train(variants["npg-damped"], args.chunk)
    keys = agent.session_keys(0, 2)
    _, m_vmapped = chunk_v(init_v(keys))
    one = jax.jit(lambda key: lax.scan(lambda s, _: s_step(s), s_init(key), None, length=args.chunk))
    _, m_one = one(keys[1])
    assert np.array_equal(np.asarray(m_vmapped.max_return[1]), np.asarray(m_one.max_return))
    checks["vmapped_equals_single_session"] = True

    # ---- 2./3. compile time apart, then interleaved timing
    env_rollout = {}
    rows, records = [], []
    for sessions in args.sessions:
        keys = agent.session_keys(1, sessions)
        calls, compile_s = {}, {}
        for name, config in variants.items():
            init, run_chunk = agent.make_train(config, args.chunk)
            state = init(keys)
            compile_s[name] = _common.compile_seconds(run_chunk, state)
            calls[name] = (lambda f, s: (lambda: f(s)))(run_chunk, state)

        def rollouts_only(keys, params):
            def one_session(key, p):
                def body(key, _):
                    key, sub = jax.random.split(key)
                    traj = rollout(env, env_params, act, p, sub, 200, noise=noise)[0]
                    return key, traj.rewards.sum()
                return lax.scan(body, key, None, length=args.chunk)[1]
            return jax.vmap(one_session)(keys, params)

        roll = jax.jit(rollouts_only)
        params_b = jax.vmap(policy.init)(keys)
        compile_s["rollout-only"] = _common.compile_seconds(roll, keys, params_b)
        calls["rollout-only"] = lambda: roll(keys, params_b)
        best = _common.interleaved_min_seconds(calls, args.repeats, min_total=0.0 if args.quick else 3.0)
        per = {n: 1e3 * t / (args.chunk * sessions) for n, t in best.items()}
        for name in calls:
            record = {
                "variant": name, "sessions": sessions,
                "ms_per_batch_per_session": per[name],
                "ratio_vs_pg_adam": per[name] / per["pg-adam"],
                "ratio_vs_rollout_only": per[name] / per["rollout-only"],
                "compile_seconds": max(compile_s[name] - best[name], 0.0),
            }
            records.append(record)
            rows.append([name, sessions, per[name], record["ratio_vs_pg_adam"],
                         record["ratio_vs_rollout_only"], record["compile_seconds"]])
        env_rollout[sessions] = per["rollout-only"]

    table = _common.markdown_table(
        ["variant", "sessions", "ms / batch / session", "x pg-adam", "x rollout only", "compile s"], rows)
    threads = "1 thread" if args.single_thread else "all threads"
    header = (f"NPG agent, CartPole-v1, 200 steps per batch, {args.chunk} batches per call, "
              f"{threads}, min of {args.repeats}+ interleaved rounds (shared machine)")
    print(header)
    print(table)
    with open(os.path.join(out, "npg_bench.md"), "w") as f:
        f.write(header + "\n\n" + table + "\n")
    payload = {"settings": vars(args), "environment": _common.environment_info(),
               "checks": checks, "results": records}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(_common.to_jsonable(payload), f, indent=2)
    print(f"\nresults: {os.path.join(out, 'results.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
