"""Benchmark: Hessian-free through the closed loop on the arm task of DeWolf
(2016), jaxctl against DeWolf's library (hessianfree 0.4.0), in one run.

Settings (DeWolf 2016): RNN [8, 32, 32, 4] with the arm in the loop, 64
targets, T = 40 steps, final-state loss + torque penalty alpha = 10e-3 dt,
`CG_iter = 96`, initial damping 100, regime (a) (roll out, one HF update,
repeat), single thread on both sides.

- jaxctl: `jaxctl.experiments.reach_train.ReachTrainer` (exact closed-loop gradient and
  Gauss-Newton curvature, one compiled HF step per iteration); compile time
  measured apart; seconds per iteration = wall time of each compiled step
  with `block_until_ready` (median and min over the run).
- hessianfree: `benchmarks/hessianfree_arm_baseline.py` in its own venv
  (`--hf-python`, default .venv-hessianfree/bin/python), run as a subprocess with
  the same settings; skipped with a message if the interpreter is missing.
- Both: loss and mean final hand error after the same number of iterations.
  The two losses differ slightly: the baseline penalises the network's four
  outputs `y` (the library's SparseL2 on layer 3), jaxctl the folded torques
  `u = y[:2] + y[2:]`; the state term (which dominates) is the same. The
  final hand error is the definition-free figure.
- Also: the cost of one Gauss-Newton product `G v` (forward pass, `J v`,
  loss Hessian, `J^T u`, all through the closed loop) over the cost of one
  gradient, interleaved minimum of many repeats; and the cost of one product
  inside CG (`matvec` of a model linearised once, as every HF iteration
  uses it: no forward pass), the minimum over repeats of 40 products.
- Per CG step, on both sides: the median seconds per iteration over the mean
  CG steps per iteration (everything an iteration does, spread over its CG
  steps), and the ratios per iteration, per CG step and per product.

Correctness first: before timing, the jaxctl gradient is checked against a
central finite difference of the closed-loop loss.

    /work/venv/bin/python benchmarks/reach.py --iters 40 --out runs/bench-reach
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=40, help="HF iterations on each side")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--cg-maxiter", type=int, default=96, help="CG budget per HF step")
    parser.add_argument("--damping", type=float, default=100.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hf-python", default=".venv-hessianfree/bin/python",
                        help="interpreter of a venv with hessianfree 0.4.0 (skip if missing)")
    parser.add_argument("--multi-thread", action="store_true",
                        help="let XLA and BLAS use every core (default: one thread each side)")
    parser.add_argument("--out", default=None, help="folder for results.json")
    args = parser.parse_args(argv)

    import jaxctl.apps.common as _common

    if not args.multi_thread:
        _common.request_single_thread()
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxctl.experiments.reach_model as reach
    from jaxctl.core.gauss_newton import gauss_newton_model
    from jaxctl.experiments.reach_train import ReachTrainer

    load0 = os.getloadavg()
    # alpha = 10e-3 dt: the torque penalty of DeWolf (2016), as the baseline uses.
    s = reach.ReachSettings(hidden=args.hidden, steps=args.steps, cg_maxiter=args.cg_maxiter,
                            damping=args.damping, seed=args.seed, alpha=10e-3 * 0.01)
    trainer = ReachTrainer(s)
    state = trainer.initial_state()
    exp = trainer.exp
    batch = exp.make_batch(trainer.key, 0)

    model = lambda p: reach.closed_loop_batch(p, s, batch)
    lossfn = lambda out: reach.batch_loss(out, batch, s)

    # --- correctness: exact closed-loop gradient vs central differences
    v = jax.tree.map(lambda a: jax.random.normal(jax.random.PRNGKey(7), a.shape), state.params)
    dot = lambda a, b: sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    grad_fn = jax.jit(jax.grad(lambda p: lossfn(model(p))))
    f = jax.jit(lambda t: lossfn(model(jax.tree.map(lambda p, d: p + t * d, state.params, v))))
    eps = 1e-3
    fd = float((f(eps) - f(-eps)) / (2 * eps))
    slope = float(dot(grad_fn(state.params), v))
    rel = abs(slope - fd) / abs(fd)
    print(f"gradient check: g.v = {slope:.6g}, central difference {fd:.6g} (rel. diff {rel:.2e})")
    assert rel < 2e-2, "closed-loop gradient disagrees with finite differences"

    # --- GN product / gradient cost on the closed loop
    linearised = jax.jit(lambda p: gauss_newton_model(model, lossfn, p))
    gn = gauss_newton_model(model, lossfn, state.params)

    @jax.jit
    def gv_of(p, vec):
        return gauss_newton_model(model, lossfn, p).matvec(vec)

    for fn, a in ((grad_fn, (state.params,)), (gv_of, (state.params, v))):
        _common.block(fn(*a))
    t = _common.interleaved_min_seconds({
        "gradient": lambda: grad_fn(state.params),
        "GN product": lambda: gv_of(state.params, v),
    }, repeats=20, min_total=3.0)
    gn_ms = 1e3 * t["GN product"]
    grad_ms = 1e3 * t["gradient"]
    print(f"gradient {grad_ms:.2f} ms; Gauss-Newton product (forward, J v, H_L, J^T) {gn_ms:.2f} ms; "
          f"ratio {gn_ms / grad_ms:.2f}")
    del linearised, gn

    @jax.jit
    def cg_products(p, vec):
        # 40 products of one linearisation: the cost of a CG step's curvature.
        mv = gauss_newton_model(model, lossfn, p).matvec
        return jax.lax.fori_loop(0, 40, lambda i, x: jax.tree.map(lambda a: 1e-3 * a, mv(x)), vec)

    @jax.jit
    def one_product(p, vec):
        return jax.lax.fori_loop(0, 1, lambda i, x: jax.tree.map(
            lambda a: 1e-3 * a, gauss_newton_model(model, lossfn, p).matvec(x)), vec)

    for fn in (cg_products, one_product):
        _common.block(fn(state.params, v))
    t = _common.interleaved_min_seconds({"40": lambda: cg_products(state.params, v),
                                         "1": lambda: one_product(state.params, v)},
                                        repeats=10, min_total=3.0)
    cg_product_ms = 1e3 * (t["40"] - t["1"]) / 39
    print(f"Gauss-Newton product inside CG (linearised once): {cg_product_ms:.3f} ms")

    # --- jaxctl HF iterations
    compile_s = trainer.compile(state)
    seconds, losses, cg = [], [], []

    t_all = time.perf_counter()
    st = state
    for i in range(args.iters):
        t0 = time.perf_counter()
        st = trainer.run(st, i + 1, eval_every=0)
        seconds.append(time.perf_counter() - t0)
        losses.append(st.history["loss"][-1])
        cg.append(int(st.history["cg_steps"][-1]))
    total = time.perf_counter() - t_all
    ev = trainer.evaluate(st.params)
    jax_res = {
        "compile_seconds": compile_s,
        "seconds_per_iteration_median": float(np.median(seconds)),
        "seconds_per_iteration_min": float(np.min(seconds)),
        "total_seconds": total,
        "loss_per_iteration": losses,
        "loss_initial": losses[0],
        "loss_after_iterations": float(ev["loss"]),
        "cg_steps": cg,
        "final_hand_error_mm_mean": float(np.mean(ev["hand_error_mm"])),
        "final_hand_error_mm_max": float(np.max(ev["hand_error_mm"])),
        "gradient_ms": grad_ms,
        "gauss_newton_product_ms": gn_ms,
        "gn_over_gradient": gn_ms / grad_ms,
        "cg_product_ms": cg_product_ms,
        "ms_per_cg_step": 1e3 * float(np.median(seconds)) / float(np.mean(cg)),
        "gradient_check": {"g_dot_v": slope, "central_difference": fd},
    }
    print(f"jaxctl: {jax_res['seconds_per_iteration_median'] * 1e3:.1f} ms/iteration (median), "
          f"compile {compile_s:.1f} s; loss {losses[0]:.4g} -> {jax_res['loss_after_iterations']:.4g} "
          f"after {args.iters}; hand error {jax_res['final_hand_error_mm_mean']:.3g} mm mean")

    # --- hessianfree 0.4.0 in its own venv
    hf_res = None
    if not os.path.exists(args.hf_python):
        print(f"hessianfree side skipped: {args.hf_python} not found "
              "(create it: python3 -m venv .venv-hessianfree && .venv-hessianfree/bin/pip install "
              "hessianfree==0.4.0 numpy matplotlib; or pass --hf-python)")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [args.hf_python, os.path.join(HERE, "hessianfree_arm_baseline.py"),
                   "--iters", str(args.iters), "--T", str(args.steps), "--hidden", str(args.hidden),
                   "--cg-iter", str(args.cg_maxiter), "--init-damping", str(args.damping),
                   "--seed", str(args.seed), "--threads", "0" if args.multi_thread else "1",
                   "--out", tmp]
            print("running:", " ".join(cmd), flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stdout[-2000:], proc.stderr[-4000:])
                print("hessianfree side failed; reported as missing")
            else:
                with open(os.path.join(tmp, "results.json")) as fh:
                    hf_res = json.load(fh)

    rows = [["jaxctl", jax_res["seconds_per_iteration_median"], jax_res["seconds_per_iteration_min"],
             float(np.mean(cg)), jax_res["ms_per_cg_step"], jax_res["loss_initial"],
             jax_res["loss_after_iterations"], jax_res["final_hand_error_mm_mean"],
             jax_res["gn_over_gradient"]]]
    speedup, ratios = None, None
    if hf_res is not None:
        hf_res["ms_per_cg_step"] = (1e3 * hf_res["seconds_per_iteration_median"]
                                    / float(np.mean(hf_res["cg_steps"])))
        rows.append(["hessianfree 0.4.0", hf_res["seconds_per_iteration_median"],
                     hf_res["seconds_per_iteration_min"], float(np.mean(hf_res["cg_steps"])),
                     hf_res["ms_per_cg_step"], hf_res["loss_initial"],
                     hf_res["loss_after_iterations"], hf_res["final_hand_error_mm_mean"],
                     hf_res["gauss_newton_product_ms"] / hf_res["gradient_ms"]])
        speedup = hf_res["seconds_per_iteration_median"] / jax_res["seconds_per_iteration_median"]
        ratios = {"per_iteration": speedup,
                  "per_cg_step": hf_res["ms_per_cg_step"] / jax_res["ms_per_cg_step"],
                  "per_gauss_newton_product": hf_res["gauss_newton_product_ms"] / cg_product_ms}
    load1 = os.getloadavg()
    print()
    print(_common.markdown_table(
        ["", "s/iteration (median)", "s/iteration (min)", "CG steps (mean)", "ms/CG step",
         "loss at start", f"loss after {args.iters}", "mean hand error (mm)", "GN product / gradient"], rows))
    if speedup is not None:
        print(f"\njaxctl is {speedup:.1f}x faster per HF iteration (median), "
              f"{ratios['per_cg_step']:.1f}x per CG step ({jax_res['ms_per_cg_step']:.2f} vs "
              f"{hf_res['ms_per_cg_step']:.2f} ms), {ratios['per_gauss_newton_product']:.1f}x per "
              f"Gauss-Newton product ({cg_product_ms:.2f} vs {hf_res['gauss_newton_product_ms']:.2f} "
              f"ms); load average {load0[0]:.1f} -> {load1[0]:.1f}")
    results = {"settings": vars(args), "jaxctl": jax_res, "hessianfree": hf_res,
               "speedup_per_iteration_median": speedup, "speedups": ratios,
               "load_average_start": load0, "load_average_end": load1,
               "environment": _common.environment_info()}
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "results.json")
        _common.atomic_write_bytes(path, json.dumps(_common.to_jsonable(results), indent=2).encode())
        print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
