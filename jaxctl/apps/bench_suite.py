"""`jaxctl bench --suite all`: every headline kernel on whatever device JAX sees.

Each kernel is one jitted program, built, checked against an oracle, then
timed (the minimum over repeats; nothing in a timed call returns to the
host before its end). For each one the suite reports

- the compile time apart from the run time;
- its model FLOPs (`jaxctl.apps.flops`: matmul-class work counted on the
  jaxpr, scans times their length) and the rate they run at;
- that rate as a fraction of the device's float32 matmul rate, measured in
  the same run (the best of a square product timed before and after).

Kernels: per-sample gradients (MLP Gaussian policy, T scores); the full
normalized NPG step (scores, accurate `"qr"` solve, step) at several T and
P, and damped by `"chol"`; a matrix-free Fisher-vector product + 20 CG iterations at P ~ 1M; on
DeWolf's (2016) arm task (RNN 8-32-32-4, T = 40) a Gauss-Newton product
and one Hessian-free iteration (CG 96, damping 100) at 64 and 4096 targets;
a random-shooting planning step (Nagabandi et al. 2018: MLP 26-500-500-20,
H = 10) at K = 1,000 to 100,000; a spiking ReLU network 784-512-512-10
over 200 steps for 256 inputs (DeWolf 2020). `--quick` shrinks every size
(the test suite runs it on the CPU).
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple

import jaxctl.apps.common as _common
from jaxctl.apps.flops import model_flops


class Kernel(NamedTuple):
    """One benchmark: `fn(*args)` is jitted; `check(output)` raises if it is wrong."""

    group: str
    size: str
    fn: Callable[..., Any]
    args: tuple
    check: Callable[[Any], dict]
    while_trips: int | tuple = 1


def _require(ok: bool, message: str) -> None:
    if not bool(ok):
        raise RuntimeError(f"benchmark check failed: {message}")


# ------------------------------------------------------------------ kernels


def policy_batch(key, sizes: tuple, T: int):
    """Policy `sizes` (tanh MLP mean, log-std -0.5), T states, sampled actions, advantages."""
    import jax

    from jaxctl.models.policies import gaussian_policy

    policy = gaussian_policy(sizes[0], sizes[-1], sizes[1:-1], output_scale=1.0, log_std_init=-0.5)
    k_init, k_s, k_a, k_adv = jax.random.split(key, 4)
    params = policy.init(k_init)
    states = jax.random.normal(k_s, (T, sizes[0]))
    actions = jax.vmap(lambda s, k: policy.sample(params, k, s))(states, jax.random.split(k_a, T))
    advantages = jax.random.normal(k_adv, (T,))
    return policy.log_prob, params, states, actions, advantages


def per_sample_kernel(T: int) -> Kernel:
    """The (T, P) score matrix by `vmap(grad)`; its mean must be the batched gradient."""
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    from jaxctl.core.jacobians import per_sample_grads, ravel_per_sample

    log_prob, params, states, actions, _ = policy_batch(jax.random.PRNGKey(0), (4, 32, 32, 2), T)

    def scores(p, s, a):
        return ravel_per_sample(per_sample_grads(log_prob, p, s, a))[0]

    mean_grad = jax.grad(lambda p: jnp.mean(jax.vmap(log_prob, (None, 0, 0))(p, states, actions)))
    expected = ravel_pytree(mean_grad(params))[0]

    def check(G):
        err = float(jnp.max(jnp.abs(G.mean(0) - expected)) / jnp.max(jnp.abs(expected)))
        _require(err < 1e-4, f"mean score differs from the batched gradient by {err}")
        return {"relative_error_of_mean": err}

    return Kernel("per-sample gradients", f"T={T}, P={expected.size}", scores,
                  (params, states, actions), check)


def npg_step_kernel(T: int, hidden: int, method: str = "qr", delta: float = 0.01) -> Kernel:
    """Scores, natural gradient, normalized step: `s^T (F + lambda I) s` must equal delta.

    `"qr"` is the clipped pseudo-inverse (lambda = 0), `"chol"` the damped
    solve with `rel_damping = 0.01`.
    """
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    from jaxctl.core.fisher import natural_gradient
    from jaxctl.core.jacobians import per_sample_grads, ravel_per_sample
    from jaxctl.optim.npg import normalized_step

    log_prob, params, states, actions, adv = policy_batch(jax.random.PRNGKey(1), (4, hidden, hidden, 2), T)

    def step(p, s, a, A):
        G, _ = ravel_per_sample(per_sample_grads(log_prob, p, s, a))
        g = G.T @ A / G.shape[0]
        nat = natural_gradient(G, g, method=method, rel_damping=rel)
        flat, _ = normalized_step(g, nat, delta)
        return flat, G

    rel = 0.01 if method == "chol" else 0.0

    def check(out):
        flat, G = out
        quad = float(jnp.sum((G @ flat) ** 2) / G.shape[0])
        if rel:
            top = float(jnp.linalg.eigvalsh(G @ G.T / G.shape[0])[-1])
            quad += rel * top * float(flat @ flat)
        _require(abs(quad / delta - 1) < 1e-2, f"step^T (F + lambda I) step = {quad}, delta = {delta}")
        return {"step_norm_over_delta": quad / delta}

    P = ravel_pytree(params)[0].size
    return Kernel(f"NPG step ({method})", f"T={T}, P={P}", step, (params, states, actions, adv), check)


def matrix_free_kernel(hidden: int, T: int, iters: int = 20) -> Kernel:
    """`fisher_operator` + CG (tol 0, `iters` steps): the residual must fall below |g|."""
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    from jaxctl.core.cg import cg
    from jaxctl.core.fisher import fisher_operator

    log_prob, params, states, actions, adv = policy_batch(
        jax.random.PRNGKey(2), (4, hidden, hidden, hidden, 2), T)

    def solve(p, s, a, A):
        fvp = fisher_operator(log_prob, p, s, a, damping=1e-3)
        _, vjp = jax.vjp(lambda q: jax.vmap(lambda x, u: log_prob(q, x, u))(s, a), p)
        (g,) = vjp(A / s.shape[0])
        x = cg(fvp, g, maxiter=iters, tol=0.0).x
        return ravel_pytree(jax.tree.map(jnp.subtract, g, fvp(x)))[0], ravel_pytree(g)[0]

    def check(out):
        residual, g = out
        rel = float(jnp.linalg.norm(residual) / jnp.linalg.norm(g))
        _require(rel < 1.0, f"CG residual {rel} of |g|")
        return {"relative_residual": rel}

    P = ravel_pytree(params)[0].size
    return Kernel("FVP + CG", f"P={P:,}, T={T}, {iters} steps", solve,
                  (params, states, actions, adv), check, while_trips=iters)


def gauss_newton_kernel(targets: int, hidden: int = 32, steps: int = 40) -> Kernel:
    """`G v` through the closed loop; `u^T G v = v^T G u` and `v^T G v >= 0` are checked."""
    import jax
    import jax.numpy as jnp

    import jaxctl.experiments.reach_model as reach
    from jaxctl.core.gauss_newton import gauss_newton_model

    exp, params, batch = reach.benchmark_problem(targets, hidden=hidden, steps=steps)
    s = exp.settings
    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    u, v = (jax.tree.map(lambda a, k=k: jax.random.normal(k, a.shape, a.dtype), params) for k in keys)

    def gv(p, b, vec):
        model = lambda q: reach.closed_loop_batch(q, s, b)
        return gauss_newton_model(model, lambda out: reach.batch_loss(out, b, s), p).matvec(vec)

    dot = lambda a, b: sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    def check(gv_out):
        gu = jax.jit(gv)(params, batch, u)
        uv, vu, vv = float(dot(u, gv_out)), float(dot(v, gu)), float(dot(v, gv_out))
        _require(abs(uv - vu) <= 1e-3 * (abs(uv) + abs(vv) + 1e-30), f"asymmetric: {uv} vs {vu}")
        _require(vv >= 0, f"v^T G v = {vv} < 0")
        return {"symmetry_gap": abs(uv - vu), "vGv": vv}

    return Kernel("Gauss-Newton product (arm)", f"{targets} targets, T={steps}", gv,
                  (params, batch, v), check)


def hf_iteration_kernel(targets: int, hidden: int = 32, steps: int = 40) -> Kernel:
    """One HF iteration (CG 96, damping 100); the loss must stay finite."""
    import jax.numpy as jnp

    import jaxctl.experiments.reach_model as reach

    step, args = reach.hf_iteration(targets, hidden=hidden, steps=steps)

    def check(out):
        stats = out[2]
        _require(bool(jnp.isfinite(stats.loss)), "non-finite loss")
        # The step's loops: CG, then backtracking and line search.
        return {"loss": float(stats.loss), "cg_steps": int(stats.cg_steps),
                "while_trips": (int(stats.cg_steps), int(stats.evaluations))}

    return Kernel("HF iteration (arm)", f"{targets} targets, T={steps}, CG 96", step, args, check)


def planning_kernel(K: int, hidden: int = 500, H: int = 10) -> Kernel:
    """Random shooting over an MLP model; the returned total must be the best of K."""
    import functools

    import jax
    import jax.numpy as jnp

    from jaxctl.control import planners
    from jaxctl.models.mlp import mlp_apply, mlp_init

    n, m = 20, 6
    params = mlp_init(jax.random.PRNGKey(0), (n + m, hidden, hidden, n), output_scale=0.1)

    def dynamics(x, u):
        return x + mlp_apply(params, jnp.concatenate([x, u]), "relu")

    def reward(x, u, y):
        return y[0] - 0.1 * jnp.sum(u ** 2)

    plan = functools.partial(planners.random_shooting, dynamics, reward, num_samples=K, horizon=H,
                             action_low=-jnp.ones(m), action_high=jnp.ones(m))

    def check(res):
        _require(int(res.num_finite) == K, f"{int(res.num_finite)} of {K} candidates finite")
        _require(res.actions.shape == (H, m), f"actions shape {res.actions.shape}")
        return {"total_reward": float(res.total_reward)}

    return Kernel("planning step (random shooting)", f"K={K:,}, H={H}, hidden {hidden}", plan,
                  (jax.random.normal(jax.random.PRNGKey(1), (n,)), jax.random.PRNGKey(2)), check)


def spiking_kernel(sizes: tuple, n_steps: int, batch: int, scale: float = 100.0) -> Kernel:
    """A spiking ReLU network over `n_steps`, vmapped over inputs; outputs finite, neurons fire."""
    import jax
    import jax.numpy as jnp

    from jaxctl.spiking import dense, spiking_network

    net = spiking_network((dense(),) * (len(sizes) - 1), synapses=0.005, scale_firing_rates=scale)
    keys = jax.random.split(jax.random.PRNGKey(4), len(sizes))
    params = [{"w": jax.random.normal(k, (a, b)) / jnp.sqrt(a * 0.5), "b": jnp.full(b, 0.5)}
              for k, a, b in zip(keys, sizes[:-1], sizes[1:])]
    inputs = jax.random.uniform(keys[-1], (batch, sizes[0]))

    def run(p, x):
        res = jax.vmap(lambda xi: net.run(p, xi, n_steps, probe=True))(x)
        return res.output, sum(jnp.sum(c) for c in res.spikes)

    def check(out):
        output, spikes = out
        _require(bool(jnp.all(jnp.isfinite(output))), "non-finite output")
        _require(float(spikes) > 0, "no neuron fired")
        return {"spikes": float(spikes)}

    return Kernel("spiking network", f"{'-'.join(map(str, sizes))}, {n_steps} steps, B={batch}",
                  run, (params, inputs), check)


def kernels(quick: bool) -> list[Callable[[], Kernel]]:
    """Builders of every kernel at the suite's sizes (`quick`: small, for the CPU tests)."""
    import functools

    P = functools.partial
    if quick:
        return [P(per_sample_kernel, 64), P(npg_step_kernel, 64, 16), P(matrix_free_kernel, 32, 64),
                P(gauss_newton_kernel, 4, 8, 8), P(hf_iteration_kernel, 4, 8, 8),
                P(planning_kernel, 256, 32), P(spiking_kernel, (32, 16, 4), 20, 4)]
    return ([P(per_sample_kernel, T) for T in (200, 2000)]
            + [P(npg_step_kernel, T, h) for h in (32, 64) for T in (200, 2000)]
            + [P(npg_step_kernel, T, 32, "chol") for T in (200, 2000)]
            + [P(matrix_free_kernel, 708, 2000)]
            + [P(f, n) for n in (64, 4096) for f in (gauss_newton_kernel, hf_iteration_kernel)]
            + [P(planning_kernel, K) for K in (1000, 10_000, 100_000)]
            + [P(spiking_kernel, (784, 512, 512, 10), 200, 256)])


# ------------------------------------------------------------------ harness


def matmul_rate(n: int, repeats: int) -> float:
    """float32 FLOP/s of an n x n x n product on the default device (min of repeats)."""
    import jax

    a, b = (jax.random.normal(jax.random.PRNGKey(i), (n, n)) for i in (0, 1))
    f = jax.jit(lambda x, y: x @ y)
    _common.block(f(a, b))
    best = _common.interleaved_min_seconds({"mm": lambda: f(a, b)}, repeats, min_total=1.5)["mm"]
    return 2.0 * n ** 3 / best


def time_kernel(k: Kernel, repeats: int, min_total: float) -> dict[str, Any]:
    """Compiles, checks, times one kernel; returns its record (rate fraction added later)."""
    import jax

    start = time.perf_counter()
    compiled = jax.jit(k.fn).lower(*k.args).compile()
    compile_s = time.perf_counter() - start
    checks = k.check(_common.block(compiled(*k.args)))
    best = _common.interleaved_min_seconds({"k": lambda: compiled(*k.args)}, repeats, min_total)["k"]
    flops = model_flops(k.fn, *k.args, while_trips=checks.pop("while_trips", k.while_trips))
    return {"kernel": k.group, "size": k.size, "ms": best * 1e3, "compile_s": compile_s,
            "model_gflop": flops / 1e9, "gflops": flops / best / 1e9, "checks": checks}


def run_suite(quick: bool, repeats: int, progress: Callable[[], None]) -> dict[str, Any]:
    """Runs every kernel between two matmul-rate measurements."""
    import jax

    platform = jax.default_backend()
    n = 256 if quick else (2048 if platform == "cpu" else 8192)
    rates = [matmul_rate(n, repeats)]
    records = []
    for build in kernels(quick):
        records.append(time_kernel(build(), repeats, 0.0 if quick else 1.0))
        progress()
    rates.append(matmul_rate(n, repeats))
    peak = max(rates)
    for r in records:
        r["fraction_of_matmul_rate"] = r["gflops"] * 1e9 / peak
    return {"device": str(jax.devices()[0]), "platform": platform, "matmul_size": n,
            "matmul_gflops": [r / 1e9 for r in rates], "kernels": records}


def report(result: dict[str, Any]) -> str:
    """The markdown table of a suite run."""
    rows = [[r["kernel"], r["size"], r["ms"], r["compile_s"], r["model_gflop"], r["gflops"],
             r["fraction_of_matmul_rate"]] for r in result["kernels"]]
    rate = max(result["matmul_gflops"])
    head = (f"### Benchmark suite on {result['device']} (float32 matmul {result['matmul_size']}^3: "
            f"{rate:.1f} GFLOP/s)")
    return head + "\n\n" + _common.markdown_table(
        ["kernel", "size", "ms", "compile s", "model GFLOP", "GFLOP/s", "fraction of matmul"], rows)


def suite_size(quick: bool) -> int:
    """Number of kernels (for the progress bar)."""
    return len(kernels(quick))
