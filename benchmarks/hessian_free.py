"""Hessian-free benchmark: Gauss-Newton product cost, and jaxctl against `hessianfree` 0.4.0.

1. Gauss-Newton-vector product / gradient on the same RNN (the reaching
   controller of DeWolf (2016), [8, 32, 32, 2] with a skip connection and the 2-link arm in the
   loop, 64 sequences of 40 steps). Correctness first: symmetry `u^T G v =
   v^T G u`, `v^T G v >= 0`, and agreement of the two product routes.
2. The `integrator` and `plant` demos of `hessianfree` 0.4.0 (DeWolf's
   2016 numpy library), same shapes, CG budget, damping and initial weights: the
   `hessianfree` side runs in its own venv (numpy only) through a
   subprocess; both sides run the same number of iterations and report
   seconds per iteration and the loss of the final weights. For `plant` the
   loss is the true closed-loop loss (a fresh rollout through the plant);
   `hessianfree` trains it holding the fed-back plant state fixed.

Usage:
  python benchmarks/hessian_free.py [--hf-python .venv-hessianfree/bin/python]
      [--out DIR] [--quick] [--threads 1|all]

The hessianfree venv: `python3 -m venv .venv-hessianfree &&
.venv-hessianfree/bin/pip install hessianfree==0.4.0 numpy matplotlib` (numpy
2.4.6 works for the paths used here; only its unused mnist demo needs `np.bool`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

# The hessianfree side: runs in the other venv. It builds the demo networks
# exactly as hessianfree.demos does (shapes, layers, CG budget, damping,
# init), seeds numpy, and prints JSON: initial weights, losses, timings.
HF_SIDE = r'''
import json, sys, time
import numpy as np
import hessianfree as hf

cfg = json.loads(sys.stdin.read())
np.random.seed(cfg["seed"])
out = {"version": hf.__version__ if hasattr(hf, "__version__") else "0.4.0",
       "numpy": np.__version__}

def run(rnn, inputs, targets, opt, iters):
    rnn.optimizer = opt
    W0 = rnn.W.copy()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        rnn._run_epoch(inputs, targets)        # one HF update on the full batch
        times.append(time.perf_counter() - t0)
    return W0, times

if cfg["problem"] == "integrator":
    n_inputs, sig_len = 15, 10
    inputs = np.outer(np.linspace(0.1, 0.9, n_inputs), np.ones(sig_len))[:, :, None].astype(np.float32)
    targets = np.outer(np.linspace(0.1, 0.9, n_inputs), np.linspace(0, 1, sig_len))[:, :, None].astype(np.float32)
    rnn = hf.RNNet(shape=[1, 10, 1], layers=hf.nl.Logistic(), debug=False, use_GPU=False,
                   rng=np.random.RandomState(cfg["seed"]))
    W0, times = run(rnn, inputs, targets, hf.opt.HessianFree(CG_iter=cfg["cg"], init_damping=cfg["damping"]),
                    cfg["iters"])
    final_loss = float(rnn.error(rnn.W, inputs, targets))
    out.update(inputs=inputs.tolist(), targets=targets.tolist())
else:
    n_inputs, sig_len = 32, 15

    class Plant(hf.nl.Plant):
        # the demo's plant: s_{t+1} = s_t A + x B(s_t), B(s)[1, 1] = tanh(s[0])
        def __init__(self, A, targets, init_state):
            super().__init__()
            self.A, self.targets, self.init_state = np.asarray(A), targets, init_state
            self.shape = [n_inputs, sig_len, len(A)]
            self.d_output = np.resize(np.eye(2), (n_inputs, 2, 2, 1))
            self.reset()
        def B(self, state):
            B = np.zeros((state.shape[0], 2, 2)); B[:, 1, 1] = np.tanh(state[:, 0])
            dB = np.zeros((state.shape[0], 2, 2)); dB[:, 1, 1] = 1 - np.tanh(state[:, 0]) ** 2
            return B, dB
        def activation(self, x):
            self.act_count += 1
            self.B_matrix, self.d_B_matrix = self.B(self.state)
            self.state = np.dot(self.state, self.A) + np.einsum("ij,ijk->ik", x, self.B_matrix)
            return self.state[:x.shape[0]]
        def d_activation(self, x, _):
            self.d_act_count += 1
            d_input = self.B_matrix.transpose((0, 2, 1))[..., None]
            d_state = np.resize(self.A.T, np.concatenate(([x.shape[0]], self.A.shape)))
            d_state[:, 1, 0] += x[:, 1] * self.d_B_matrix[:, 1, 1]
            return np.concatenate((d_input, d_state[..., None], self.d_output), axis=-1)
        def __call__(self, _):
            self.inputs = np.concatenate((self.inputs, self.state[:, None, :]), axis=1)
            return self.state
        def get_vecs(self):
            return self.inputs, self.targets
        def reset(self, init=None):
            self.act_count = self.d_act_count = 0
            self.state = self.init_state.copy() if init is None else init.copy()
            self.inputs = np.zeros((self.shape[0], 0, self.shape[-1]), dtype=np.float32)
            self.B_matrix = self.d_B_matrix = None

    init_state = np.random.uniform(-0.5, 0.5, size=(n_inputs, 2))
    targets = np.ones((n_inputs, sig_len, 2), dtype=np.float32)
    targets[:, :, 1] = 0
    targets[:, :-1, :] = np.nan
    plant = Plant([[1, 0], [0.2, 1]], targets, init_state)
    rnn = hf.RNNet(shape=[2, 16, 2], layers=[hf.nl.Linear(), hf.nl.Tanh(), plant],
                   W_init_params={"coeff": 0.1}, W_rec_params={"coeff": 0.1},
                   rng=np.random.RandomState(cfg["seed"]))
    W0, times = run(rnn, plant, None, hf.opt.HessianFree(CG_iter=cfg["cg"], init_damping=cfg["damping"]),
                    cfg["iters"])
    final_loss = float(rnn.error(rnn.W, plant))   # fresh closed-loop rollout
    out.update(init_state=init_state.tolist())

out.update(W0=W0.tolist(), offsets={f"{a}-{b}": list(map(int, v)) for (a, b), v in rnn.offsets.items()},
           times=times,
           final_loss=final_loss, iters=cfg["iters"])
print(json.dumps(out))
'''

DEMOS = {
    # hessianfree.demos: integrator uses CG_iter=100, init_damping=1 and 30 epochs;
    # plant uses CG_iter=20, init_damping=10 and 150 epochs.
    "integrator": dict(cg=100, damping=1.0, iters=30),
    "plant": dict(cg=20, damping=10.0, iters=150),
}


def run_hessianfree(python: str, problem: str, cfg: dict, threads: str) -> dict:
    env = dict(os.environ)
    if threads == "1":
        env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([python, "-c", HF_SIDE], input=json.dumps({"problem": problem, **cfg}),
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"hessianfree side failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hf-python", default=".venv-hessianfree/bin/python",
                        help="python of a venv with hessianfree==0.4.0 (numpy only)")
    parser.add_argument("--out", default=None, help="run folder (default runs/hessian_free-<time>)")
    parser.add_argument("--quick", action="store_true", help="fewer iterations and repeats")
    parser.add_argument("--threads", choices=["1", "all"], default="1",
                        help="pin XLA and BLAS to one thread (default) or use all cores")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from jaxctl.apps import common as _common

    if args.threads == "1":
        _common.request_single_thread()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxctl.envs import arm
    import optax

    from jaxctl.core.martens_cg import martens_cg
    from jaxctl.core.gauss_newton import gauss_newton_model, gauss_newton_vector_product, squared_error
    from jaxctl.optim.hf import hessian_free
    from jaxctl.optim.hf_config import CGConfig, DampingConfig
    from jaxctl.models.rnn import rnn_apply, rnn_init, rnn_spec

    out_dir = _common.make_run_dir(args.out, "hessian_free")
    results: dict = {}
    repeats = 5 if args.quick else 20

    # ---- 1. GN product / gradient on the reaching RNN ------------------------------
    T, B = 40, 64
    spec = rnn_spec([8, 32, 32, 2], conns={0: [1, 2], 1: [2], 2: [3]}, recurrent=[1, 2],
                    plant=lambda s, u: arm.step(s, u))
    params = rnn_init(jax.random.PRNGKey(args.seed), spec, scale=0.5)
    s0 = jnp.tile(jnp.array([*arm.Q0, 0.0, 0.0], jnp.float32), (B, 1))
    angles = jnp.linspace(0, 2 * jnp.pi, B, endpoint=False)
    goal = jnp.stack([jnp.array(arm.Q0[0]) + 0.2 * jnp.cos(angles),
                      jnp.array(arm.Q0[1]) + 0.2 * jnp.sin(angles),
                      jnp.zeros(B), jnp.zeros(B)], -1)
    inputs = jnp.tile(goal[:, None, :], (1, T, 1))
    alpha = 1e-2 * arm.DT

    def model(p):
        out = jax.vmap(lambda x, s: rnn_apply(spec, p, x, s))(inputs, s0)
        return {"final": out.plant_states[:, -1], "torque": out.outputs}

    def loss(z):  # final-state error + L2 torque penalty: a sum of convex losses
        return (jnp.mean(jax.vmap(squared_error)(z["final"], goal))
                + 0.5 * alpha * jnp.mean(jnp.sum(z["torque"] ** 2, (1, 2))))

    grad_fn = jax.jit(jax.grad(lambda p: loss(model(p))))
    gvp_fn = jax.jit(lambda p, v: gauss_newton_vector_product(model, loss, p, v))
    n_cg = 20

    @jax.jit
    def cg_fn(p, b):  # linearise once, then n_cg products inside CG (tol 0: no early stop)
        m = gauss_newton_model(model, loss, p)
        return martens_cg(lambda v: jax.tree.map(lambda a, c: a + 1e-3 * c, m.matvec(v), v),
                          b, maxiter=n_cg, tol=0.0).num_steps

    key_u, key_v = jax.random.split(jax.random.PRNGKey(args.seed + 1))
    u = jax.tree.map(lambda x: jax.random.normal(key_u, x.shape, x.dtype), params)
    v = jax.tree.map(lambda x: jax.random.normal(key_v, x.shape, x.dtype), params)
    compile_s = {"gradient": _common.compile_seconds(grad_fn, params),
                 "gn_product": _common.compile_seconds(gvp_fn, params, v),
                 "cg": _common.compile_seconds(cg_fn, params, v)}
    # correctness before timing
    gu, gv = gvp_fn(params, u), gvp_fn(params, v)
    uGv, vGu, vGv = (float(optax.tree.vdot(a, b)) for a, b in ((u, gv), (v, gu), (v, gv)))
    m_gv = jax.jit(lambda p, v: gauss_newton_model(model, loss, p).matvec(v))(params, v)
    route_err = float(optax.tree.norm(optax.tree.sub(m_gv, gv)) / optax.tree.norm(gv))
    assert abs(uGv - vGu) <= 1e-3 * max(abs(uGv), 1e-12), (uGv, vGu)
    assert vGv >= 0 and route_err < 1e-4, (vGv, route_err)
    assert int(cg_fn(params, v)) == n_cg
    best = _common.interleaved_min_seconds({
        "gradient": lambda: grad_fn(params),
        "gn_product": lambda: gvp_fn(params, v),
        "cg": lambda: cg_fn(params, v),
    }, repeats=repeats)
    per_cg_product = best["cg"] / n_cg
    results["gn_vs_gradient"] = {
        "network": "[8, 32, 32, 2] + arm, skip 0->2, recurrent 1, 2",
        "batch": B, "steps": T,
        "gradient_s": best["gradient"], "gn_product_s": best["gn_product"],
        "gn_product_in_cg_s": per_cg_product,
        "ratio_standalone": best["gn_product"] / best["gradient"],
        "ratio_in_cg": per_cg_product / best["gradient"],
        "symmetry_rel_err": abs(uGv - vGu) / abs(uGv), "compile_s": compile_s,
    }
    print(_common.markdown_table(
        ["quantity", "seconds", "ratio to gradient"],
        [["gradient", best["gradient"], 1.0],
         ["GN product (standalone: forward + tangent + transpose)", best["gn_product"],
          best["gn_product"] / best["gradient"]],
         ["GN product inside CG (linearised once)", per_cg_product,
          per_cg_product / best["gradient"]]]))
    print()

    # ---- 2. against hessianfree 0.4.0 ----------------------------------------------
    rows = []
    for problem, cfg in DEMOS.items():
        cfg = dict(cfg, seed=args.seed)
        if args.quick:
            cfg["iters"] = max(cfg["iters"] // 5, 5)
        hf_res = run_hessianfree(args.hf_python, problem, cfg, args.threads)
        W0 = np.asarray(hf_res["W0"], np.float32)
        off = {tuple(map(int, k.split("-"))): v for k, v in hf_res["offsets"].items()}

        def block(conn, n_pre, n_post, W0=W0, off=off):
            start, w_end, b_end = off[conn]
            return (jnp.asarray(W0[start:w_end].reshape(n_pre, n_post)),
                    jnp.asarray(W0[w_end:b_end]))

        if problem == "integrator":
            jspec = rnn_spec([1, 10, 1], ("linear", "logistic", "logistic"))
            sizes = (1, 10, 1)
            x = jnp.asarray(hf_res["inputs"], jnp.float32)
            y = jnp.asarray(hf_res["targets"], jnp.float32)
            jmodel = lambda p, b: jax.vmap(lambda xi: rnn_apply(jspec, p, xi).outputs)(b[0])
            jloss = lambda o, b: jnp.mean(jax.vmap(squared_error)(o, b[1]))
            batch = (x, y)
        else:
            A = jnp.array([[1.0, 0.0], [0.2, 1.0]])

            def demo_plant(s, xin):
                return s @ A + jnp.array([0.0, xin[1] * jnp.tanh(s[0])])

            jspec = rnn_spec([2, 16, 2], ("linear", "tanh", "linear"), plant=demo_plant)
            sizes = (2, 16, 2)
            init_state = jnp.asarray(hf_res["init_state"], jnp.float32)
            target = jnp.array([1.0, 0.0])
            jmodel = lambda p, b: jax.vmap(
                lambda s: rnn_apply(jspec, p, None, s, length=15).plant_states)(b)
            jloss = lambda o, b: jnp.mean(jax.vmap(lambda st: squared_error(st[-1], target))(o))
            batch = init_state
        # hessianfree's flat weights -> jaxctl's pytree; its recurrent block (1, 1)
        # holds W_rec and the "bias" added on the first step (our h0)
        w01, b1 = block((0, 1), sizes[0], sizes[1])
        w12, b2 = block((1, 2), sizes[1], sizes[2])
        w11, h0 = block((1, 1), sizes[1], sizes[1])
        assert W0.size == max(v[2] for v in off.values())
        params0 = {"w": {"0->1": w01, "1->2": w12}, "b": {"1": b1, "2": b2},
                   "rec": {"1": w11}, "h0": {"1": h0}}
        # hessianfree: LM factor 0.66 down, 1.5 up; Armijo c = 0.01, shrink 0.8, 60 tries
        opt = hessian_free(jmodel, jloss, cg=CGConfig(maxiter=cfg["cg"]),
                           damping=DampingConfig(initial=cfg["damping"], decrease=0.66))
        step = jax.jit(opt.step)
        state = opt.init(params0)
        loss0 = float(jax.jit(jloss)(jmodel(params0, batch), batch))
        t0 = time.perf_counter()
        p, state, _ = _common.block(step(params0, state, batch))
        compile_and_first = time.perf_counter() - t0
        # a second run from the same start, timed per iteration (compiled)
        p, state = params0, opt.init(params0)
        times = []
        for _ in range(cfg["iters"]):
            t0 = time.perf_counter()
            p, state, stats = _common.block(step(p, state, batch))
            times.append(time.perf_counter() - t0)
        j_loss = float(jax.jit(jloss)(jmodel(p, batch), batch))
        hf_t, j_t = np.asarray(hf_res["times"]), np.asarray(times)
        # mean = total / iterations (same iterations on both sides); min = the
        # iteration least disturbed by other load on this shared machine
        results[problem] = {
            "iterations": cfg["iters"], "cg_iter": cfg["cg"], "init_damping": cfg["damping"],
            "initial_loss": loss0,
            "hessianfree": {"s_per_iter_mean": float(hf_t.mean()), "s_per_iter_min": float(hf_t.min()),
                            "s_per_iter_median": float(np.median(hf_t)),
                            "final_loss": hf_res["final_loss"], "numpy": hf_res["numpy"]},
            "jaxctl": {"s_per_iter_mean": float(j_t.mean()), "s_per_iter_min": float(j_t.min()),
                       "s_per_iter_median": float(np.median(j_t)),
                       "compile_and_first_s": compile_and_first, "final_loss": j_loss},
            "speedup_mean": float(hf_t.mean() / j_t.mean()),
            "speedup_min": float(hf_t.min() / j_t.min()),
        }
        rows.append([problem, cfg["iters"], cfg["cg"], cfg["damping"], loss0,
                     float(hf_t.mean()), float(j_t.mean()), float(hf_t.mean() / j_t.mean()),
                     float(hf_t.min() / j_t.min()), hf_res["final_loss"], j_loss])
    print(_common.markdown_table(
        ["problem", "iters", "CG", "damping", "initial loss", "hessianfree s/iter (mean)",
         "jaxctl s/iter (mean)", "speed-up (mean)", "speed-up (min)", "hessianfree loss",
         "jaxctl loss"], rows))
    print(f"(jaxctl compile + first step: "
          + ", ".join(f"{k} {results[k]['jaxctl']['compile_and_first_s']:.1f} s" for k in DEMOS)
          + "; plant losses are closed-loop rollouts of the final weights)")
    path = _common.write_results(out_dir, "hessian_free",
                                 {"quick": args.quick, "threads": args.threads, "seed": args.seed,
                                  "hf_python": args.hf_python}, results)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
