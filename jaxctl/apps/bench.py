"""`jaxctl bench`: the curvature benchmark (`--suite all`: every headline kernel).

Policy: MLP 4-32-32-2 tanh with a diagonal-Gaussian head (P = 1,284),
T = 200 and 2,000 scores, float32. Three parts, each checked for
correctness before it is timed, compile time reported apart from run time,
both sides of every comparison interleaved in one process (minimum of many
repeats):

1. per-sample gradients: `jit(vmap(grad))` against an un-jitted Python loop
   of `jax.grad` (the approach of DeWolf 2018) and against one batched gradient of
   the mean (the lower bound: materialising G is memory-bound);
2. the full normalized NPG step (scores, Fisher solve, step) with every
   pseudo-inverse method against a numpy pipeline (numpy `eigh` of the
   dense Fisher), and the damped step (`rel_damping = 0.01`) by `"chol"`
   against the same pipeline with the damping;
3. a matrix-free Fisher-vector product + 20 CG iterations at P >= 100k,
   with XLA's own memory analysis of the compiled solve at several widths
   (memory grows like O(P), while a dense G or F would not fit).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import jaxctl.apps.common as _common
from jaxctl.apps.bench_suite import policy_batch
from jaxctl.apps.flags import integer, real
from jaxctl.experiments.progress import Progress

POLICY_SIZES = (4, 32, 32, 2)
METHODS = ("qr", "svd", "gram", "eigh", "cg")
REL_DAMPING = 0.01  # the damped comparison: (F + 0.01 lambda_max I)^-1 g
CG_ITERS = 20
ACCURATE_COSINE = 0.999


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `jaxctl bench`."""
    parser.add_argument("--suite", choices=("curvature", "all"), default="curvature",
                        help="curvature: the solver comparison against numpy (the flags below); "
                             "all: every headline kernel on the default device, with its "
                             "fraction of the matmul rate (see jaxctl/apps/bench_suite.py)")
    parser.add_argument("--sizes", type=integer(1), nargs="+", default=[200, 2000],
                        help="numbers of scores T to benchmark")
    parser.add_argument("--repeats", type=integer(1), default=30,
                        help="timing repeats (minimum is reported)")
    parser.add_argument("--delta", type=real(0, low_open=True), default=0.01,
                        help="normalized step size delta")
    parser.add_argument("--loop-samples", type=integer(1), default=200,
                        help="samples timed in the un-jitted Python loop (its per-sample cost is "
                             "extrapolated to T beyond this)")
    parser.add_argument("--wide-hidden", type=integer(1), nargs="+", default=[64, 128, 256],
                        help="hidden widths of the 3-layer MLP for the matrix-free part "
                             "(256 gives P = 133k)")
    parser.add_argument("--wide-T", type=integer(1), default=2000,
                        help="scores T in the matrix-free part")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed of the problems")


def prepare(args: argparse.Namespace) -> None:
    """`--quick` shrinks the sizes (argparse has range-checked every flag)."""
    if args.quick:
        args.sizes = [200]
        args.repeats = min(args.repeats, 5)
        args.loop_samples = min(args.loop_samples, 30)
        args.wide_hidden = [64]
        args.wide_T = min(args.wide_T, 500)


# ------------------------------------------------------------------ problem


def _reference_direction(G, g, rtol, rel_damping=0.0):
    """float64 numpy clipped pseudo-inverse (or damped) solve via the SVD of G (the accuracy oracle)."""
    import numpy as np

    G = np.asarray(G, np.float64)
    g = np.asarray(g, np.float64)
    _, s, Vt = np.linalg.svd(G, full_matrices=False)
    e = s * s / G.shape[0]
    if rel_damping:
        lam = rel_damping * e.max()
        return Vt.T @ ((Vt @ g) / (e + lam)) + (g - Vt.T @ (Vt @ g)) / lam
    c = np.where(e > rtol * e.max(), 1.0 / np.where(e > 0, e, 1.0), 0.0)
    return Vt.T @ (c * (Vt @ g))


def _cosine(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ---------------------------------------------------------- 1. per-sample


def bench_per_sample(T: int, args, progress) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.flatten_util import ravel_pytree

    from jaxctl.core.jacobians import per_sample_grads, ravel_per_sample

    log_prob, params, states, actions, _ = policy_batch(jax.random.PRNGKey(args.seed), POLICY_SIZES, T)
    scores = jax.jit(lambda p, s, a: ravel_per_sample(per_sample_grads(log_prob, p, s, a))[0])
    mean_grad = jax.jit(jax.grad(lambda p, s, a: jnp.mean(jax.vmap(log_prob, (None, 0, 0))(p, s, a))))
    compile_scores = _common.compile_seconds(scores, params, states, actions)
    compile_mean = _common.compile_seconds(mean_grad, params, states, actions)

    # Correctness first: rows equal the Python loop, their mean the batched gradient.
    G = np.asarray(scores(params, states, actions))
    grad = jax.grad(log_prob)
    n_loop = min(T, args.loop_samples)
    loop_rows = [ravel_pytree(grad(params, states[t], actions[t]))[0] for t in range(min(n_loop, 20))]
    max_err = float(np.max(np.abs(G[: len(loop_rows)] - np.stack(loop_rows))))
    mean_err = float(np.max(np.abs(G.mean(0) - ravel_pytree(mean_grad(params, states, actions))[0])))
    if max_err > 1e-4 or mean_err > 1e-4:
        raise RuntimeError(f"per-sample gradients disagree with jax.grad: {max_err}, {mean_err}")

    def python_loop():
        return [grad(params, states[t], actions[t]) for t in range(n_loop)]

    best = _common.interleaved_min_seconds(
        {"vmap": lambda: scores(params, states, actions),
         "mean": lambda: mean_grad(params, states, actions)},
        repeats=args.repeats,
    )
    loop_seconds = _common.interleaved_min_seconds({"loop": python_loop}, repeats=1)["loop"]
    loop_seconds *= T / n_loop
    progress()
    return {
        "T": T,
        "P": G.shape[1],
        "vmap_ms": best["vmap"] * 1e3,
        "batched_mean_grad_ms": best["mean"] * 1e3,
        "python_loop_ms": loop_seconds * 1e3,
        "python_loop_extrapolated_from": n_loop,
        "vmap_over_mean_grad": best["vmap"] / best["mean"],
        "python_loop_over_vmap": loop_seconds / best["vmap"],
        "compile_s": {"vmap": compile_scores, "mean": compile_mean},
        "max_abs_error_vs_grad_loop": max_err,
    }


# ---------------------------------------------------------- 2. NPG step


def _jax_npg_step(log_prob, method: str, delta: float):
    import jax

    from jaxctl.core.fisher import natural_gradient
    from jaxctl.core.jacobians import per_sample_grads, ravel_per_sample
    from jaxctl.optim.npg import normalized_step

    def step(params, states, actions, advantages):
        G, unravel = ravel_per_sample(per_sample_grads(log_prob, params, states, actions))
        g = G.T @ advantages / G.shape[0]
        # mjrl's matrix-free setting: 10 CG iterations, damping 1e-4.
        extra = ({"maxiter": 10, "damping": 1e-4} if method == "cg"
                 else {"rel_damping": REL_DAMPING} if method == "chol" else {})
        nat = natural_gradient(G, g, method=method, **extra)
        flat_step, size = normalized_step(g, nat, delta)
        return unravel(flat_step), size

    return jax.jit(step)


def _numpy_npg_step(scores, delta: float, rtol: float = 1e-6, rel_damping: float = 0.0):
    """The pipeline of DeWolf (2018) in numpy: dense Fisher, eigh, clip, normalized step.

    numpy.linalg computes in float64 even for float32 input, so this is also
    the accuracy reference of the dense route. With `rel_damping` the
    eigenvalues get `rel_damping * max` added instead of the clip.
    """
    import numpy as np

    def step(params, states, actions, advantages):
        G = np.asarray(scores(params, states, actions))
        A = np.asarray(advantages)
        T = G.shape[0]
        g = G.T @ A / T
        F = G.T @ G / T
        e, V = np.linalg.eigh(0.5 * (F + F.T))
        if rel_damping:
            c = 1.0 / (np.maximum(e, 0.0) + rel_damping * e.max())
        else:
            c = np.where(e > rtol * e.max(), 1.0 / np.where(e > 0, e, 1.0), 0.0)
        nat = V @ (c * (V.T @ g))
        gFg = g @ nat
        return np.sqrt(delta / gFg) * nat if gFg > 0 else np.zeros_like(nat)

    return step


def bench_npg_step(T: int, args, progress) -> dict[str, Any]:
    import jax
    import numpy as np
    from jax.flatten_util import ravel_pytree

    from jaxctl.core.jacobians import per_sample_grads, ravel_per_sample

    log_prob, params, states, actions, advantages = policy_batch(
        jax.random.PRNGKey(args.seed + 1), POLICY_SIZES, T)
    scores = jax.jit(lambda p, s, a: ravel_per_sample(per_sample_grads(log_prob, p, s, a))[0])
    G = scores(params, states, actions)
    g = np.asarray(G).T.astype(np.float64) @ np.asarray(advantages, np.float64) / T
    reference = _reference_direction(G, g, 1e-6)
    numpy_step = _numpy_npg_step(scores, args.delta)

    numpy_damped = _numpy_npg_step(scores, args.delta, rel_damping=REL_DAMPING)
    damped_reference = _reference_direction(G, g, 1e-6, REL_DAMPING)

    steps = {m: _jax_npg_step(log_prob, m, args.delta) for m in METHODS + ("chol",)}
    compile_s = {m: _common.compile_seconds(f, params, states, actions, advantages)
                 for m, f in steps.items()}
    cosines = {m: _cosine(ravel_pytree(f(params, states, actions, advantages)[0])[0],
                          damped_reference if m == "chol" else reference)
               for m, f in steps.items()}
    cosines["numpy_eigh_float32"] = _cosine(numpy_step(params, states, actions, advantages), reference)
    calls = {m: (lambda f=f: f(params, states, actions, advantages)) for m, f in steps.items()}
    calls["numpy"] = lambda: numpy_step(params, states, actions, advantages)
    calls["numpy_damped"] = lambda: numpy_damped(params, states, actions, advantages)
    best = _common.interleaved_min_seconds(calls, repeats=max(3, args.repeats // (3 if T > 1000 else 1)))
    progress()
    # Only a method that gives the float64 direction counts as a solution.
    accurate = [m for m in METHODS if cosines[m] >= ACCURATE_COSINE] or list(METHODS)
    fastest = min(accurate, key=lambda m: best[m])
    return {
        "T": T,
        "ms": {m: s * 1e3 for m, s in best.items()},
        "compile_s": compile_s,
        "cosine_vs_float64": cosines,
        "fastest_accurate_method": fastest,
        "numpy_over_fastest": best["numpy"] / best[fastest],
        "numpy_damped_over_chol": best["numpy_damped"] / best["chol"],
    }


# ------------------------------------------------------- 3. matrix-free


def bench_matrix_free(args, progress) -> list[dict[str, Any]]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.flatten_util import ravel_pytree

    from jaxctl.core.cg import cg
    from jaxctl.core.fisher import fisher_operator

    rows = []
    for width in args.wide_hidden:
        sizes = (4, width, width, width, 2)
        log_prob, params, states, actions, advantages = policy_batch(
            jax.random.PRNGKey(args.seed + 2), sizes, args.wide_T)
        P = ravel_pytree(params)[0].size

        def solve(params, states, actions, advantages):
            fvp = fisher_operator(log_prob, params, states, actions, damping=1e-3)
            # g = J^T A / T through one vjp: no score matrix is ever formed.
            _, vjp = jax.vjp(lambda p: jax.vmap(lambda s, a: log_prob(p, s, a))(states, actions), params)
            (g,) = vjp(advantages / states.shape[0])
            res = cg(fvp, g, maxiter=CG_ITERS, tol=0.0)
            return res.x, g, res.num_steps

        # One ahead-of-time compilation serves XLA's memory analysis and the timings.
        start = time.perf_counter()
        solve_jit = jax.jit(solve).lower(params, states, actions, advantages).compile()
        compile_s = time.perf_counter() - start
        memory = solve_jit.memory_analysis()
        temp_bytes = int(getattr(memory, "temp_size_in_bytes", -1)) if memory is not None else -1
        x, g, steps = solve_jit(params, states, actions, advantages)
        # Correctness: the CG solution satisfies (F + 1e-3 I) x ~= g better than x = 0 does.
        fvp = jax.jit(lambda p, s, a, v: fisher_operator(log_prob, p, s, a, damping=1e-3)(v))
        residual = ravel_pytree(jax.tree.map(jnp.subtract, g, fvp(params, states, actions, x)))[0]
        rel_residual = float(jnp.linalg.norm(residual) / jnp.linalg.norm(ravel_pytree(g)[0]))
        if not (np.isfinite(rel_residual) and rel_residual < 1.0 and int(steps) == CG_ITERS):
            raise RuntimeError(f"matrix-free CG failed: residual {rel_residual}, steps {int(steps)}")
        best = _common.interleaved_min_seconds(
            {"solve": lambda: solve_jit(params, states, actions, advantages)},
            repeats=max(3, args.repeats // 5))
        rows.append({
            "hidden": width,
            "P": P,
            "T": args.wide_T,
            "cg_iterations": CG_ITERS,
            "solve_ms": best["solve"] * 1e3,
            "ms_per_fvp": best["solve"] * 1e3 / (CG_ITERS + 1),
            "compile_s": compile_s,
            "xla_temp_mb": temp_bytes / 2**20,
            "dense_G_mb": args.wide_T * P * 4 / 2**20,
            "dense_F_mb": P * P * 4 / 2**20,
            "relative_residual": rel_residual,
        })
        progress()
    return rows


# ------------------------------------------------------------------- run


def _ticker(total: int, desc: str):
    """A progress bar and the call that advances it by one finished task."""
    bar = Progress(total, desc=desc)
    done = [0]

    def tick():
        done[0] += 1
        bar.update(done[0])

    return bar, tick


def run_all(args: argparse.Namespace, out_dir: str) -> dict[str, Any]:
    """`--suite all`: writes bench.md and returns the records for results.json."""
    import os

    from jaxctl.apps import bench_suite

    bar, progress = _ticker(bench_suite.suite_size(args.quick), "bench suite")
    start = time.perf_counter()
    result = bench_suite.run_suite(args.quick, args.repeats, progress)
    bar.close()
    report = bench_suite.report(result)
    print(report)
    with open(os.path.join(out_dir, "bench.md"), "w") as f:
        f.write(report + "\n")
    return {**result, "total_seconds": time.perf_counter() - start}


def run(args: argparse.Namespace, out_dir: str) -> dict[str, Any]:
    import os

    if args.suite == "all":
        return run_all(args, out_dir)
    bar, progress = _ticker(2 * len(args.sizes) + len(args.wide_hidden), "bench")

    start = time.perf_counter()
    per_sample = [bench_per_sample(T, args, progress) for T in args.sizes]
    npg_steps = [bench_npg_step(T, args, progress) for T in args.sizes]
    matrix_free = bench_matrix_free(args, progress)
    bar.close()

    tables = [
        "### Per-sample gradients (MLP 4-32-32-2 Gaussian policy, P = 1,284)",
        _common.markdown_table(
            ["T", "jit(vmap(grad)) ms", "batched mean grad ms", "ratio to mean grad",
             "Python loop ms", "loop / vmap"],
            [[r["T"], r["vmap_ms"], r["batched_mean_grad_ms"], r["vmap_over_mean_grad"],
              r["python_loop_ms"], r["python_loop_over_vmap"]] for r in per_sample]),
        "",
        "### Full normalized NPG step (scores + Fisher solve + step), ms; cosine to float64",
        _common.markdown_table(
            ["T"] + list(METHODS) + ["numpy eigh (float64 inside)", "numpy / fastest accurate"]
            + [f"cos {m}" for m in METHODS] + ["cos numpy f32"],
            [[r["T"]] + [r["ms"][m] for m in METHODS] + [r["ms"]["numpy"], r["numpy_over_fastest"]]
             + [r["cosine_vs_float64"][m] for m in METHODS]
             + [r["cosine_vs_float64"]["numpy_eigh_float32"]] for r in npg_steps]),
        "",
        f"### Damped NPG step, lambda = {REL_DAMPING} lambda_max: Cholesky against numpy eigh, ms",
        _common.markdown_table(
            ["T", "chol", "numpy eigh (float64 inside)", "numpy / chol", "cos chol"],
            [[r["T"], r["ms"]["chol"], r["ms"]["numpy_damped"], r["numpy_damped_over_chol"],
              r["cosine_vs_float64"]["chol"]] for r in npg_steps]),
        "",
        f"### Matrix-free Fisher-vector products + {CG_ITERS} CG iterations (MLP 4-h-h-h-2)",
        _common.markdown_table(
            ["hidden", "P", "T", "solve ms", "ms / FVP", "XLA temp MB", "dense G MB", "dense F MB"],
            [[r["hidden"], r["P"], r["T"], r["solve_ms"], r["ms_per_fvp"], r["xla_temp_mb"],
              r["dense_G_mb"], r["dense_F_mb"]] for r in matrix_free]),
    ]
    report = "\n".join(tables)
    print(report)
    with open(os.path.join(out_dir, "bench.md"), "w") as f:
        f.write(report + "\n")
    return {
        "per_sample_grads": per_sample,
        "npg_step": npg_steps,
        "matrix_free": matrix_free,
        "total_seconds": time.perf_counter() - start,
    }
