"""Baseline: DeWolf's library (hessianfree 0.4.0) on the 2-link arm reaching task of DeWolf (2016).

Runs in its OWN virtual environment (hessianfree pins nothing, but it is a
numpy-only library that jaxctl does not depend on):

    python3 -m venv .venv-hessianfree
    .venv-hessianfree/bin/pip install hessianfree==0.4.0 numpy matplotlib
    .venv-hessianfree/bin/python benchmarks/hessianfree_arm_baseline.py --iters 20 --out runs/hf-baseline

(hessianfree imports matplotlib at import time; numpy 2.4 works for every
code path used here.)

The task is that of DeWolf (2016), with the same shapes and HF budget jaxctl's own HF
will be compared at:

- arm: the 2-link arm of `jaxctl.envs.arm` (same constants, same semi-implicit
  Euler at dt = 0.01, same tanh squashing beyond +-2 pi), written here in
  vectorised numpy because this venv has no jax;
- plant derivatives: central finite differences of the step, as DeWolf (2016) did
  (d state'/d input and d state'/d state), identity output Jacobian;
- network: `RNNet(shape=[8, 32, 32, 4, 4], layers=[Linear, Tanh, Tanh, Linear,
  plant], conns={0: [1, 2], 1: [2], 2: [3], 3: [4]}, rec_layers=[1, 2])`; the
  plant turns its 4 inputs into torques `u_i = x_i + x_{i+2}`; the 3->4
  weights are fixed to the identity (masked out of every update);
- loss: `SquaredError` on the plant state against `[q*, 0, 0]` at the final
  step only (NaN targets elsewhere) + `SparseL2(10e-3 * dt)` on layer 3 (the
  library's way to penalise the network output; with identity 3->4 weights
  that is DeWolf's (2016) torque penalty up to the u = x_i + x_{i+2} fold);
- 64 targets on the circle centre (0, 0.35) m, radius 0.075 m, joint angles
  from closed-form inverse kinematics; start q0 = [0.736134824578,
  1.85227640003], zero velocity; T = 40 steps;
- optimizer: `HessianFree(CG_iter=96, init_damping=100)`; regime (a) of
  DeWolf (2016): every iteration rolls the plant out with the current weights, then
  computes one HF update on that rollout.

What it measures (single thread by default, see --threads): seconds per HF
iteration (rollout with derivatives + gradient + CG + backtracking + line
search), the cost of one Gauss-Newton product and one gradient, the loss
before each iteration, the loss of a fresh rollout after N iterations, and
the final hand errors (mm) over the 64 targets. Before timing it checks the
setup: inverse kinematics round-trips, the library's loss equals the loss
recomputed here from the rollout, and it compares the library's gradient
with central finite differences of the true closed-loop loss (they differ:
the library treats the fed-back plant state as a constant network input; the
figures are reported, not asserted).

Known properties of the library that this baseline inherits (REFERENCE.md):
its Gauss-Newton product counts every time step even where the target is
NaN (`SquaredError.d2_loss` is ones everywhere), so its curvature is
overstated; and the closed loop through the network input is not
differentiated.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

# --- the arm, in numpy (same equations and constants as jaxctl.envs.arm) ---------

L1, L2, M1, M2 = 0.31, 0.27, 1.98, 1.32
DT = 0.01
Q0 = (0.736134824578, 1.85227640003)
CENTRE, RADIUS, N_TARGETS = (0.0, 0.35), 0.075, 64
ALPHA = 10e-3 * DT
SQUASH = 2.0 * math.pi


def squash_np(x):
    """The squashing of DeWolf (2016): identity inside +-2 pi, tanh-saturated outside."""
    import numpy as np

    return np.where(x > SQUASH, np.tanh(x - SQUASH) + SQUASH,
                    np.where(x < -SQUASH, np.tanh(x + SQUASH) - SQUASH, x))


def arm_step_np(state, u, dt=DT):
    """Batched 2-link arm step: state (B, 4), u (B, 2) -> (B, 4); semi-implicit Euler + squash."""
    import numpy as np

    k1 = (M1 / 3.0 + M2) * L1**2 + M2 * L2**2 / 3.0
    k2 = M2 * L1 * L2
    k3 = M2 * L2**2 / 3.0
    k4 = M2 * L1 * L2 / 2.0
    q0, q1, dq0, dq1 = state[:, 0], state[:, 1], state[:, 2], state[:, 3]
    c, s = np.cos(q1), np.sin(q1)
    m11, m12, m22 = k1 + k2 * c, k3 + k4 * c, k3
    h0 = -k2 * s * (dq0 * dq1 + 0.5 * dq1**2)
    h1 = 0.5 * k2 * s * dq0**2
    f0, f1 = u[:, 0] - h0, u[:, 1] - h1
    # Cramer's rule with the factored determinant (always > 0); the elimination
    # order of DeWolf (2016) divides by M12, which vanishes at q1 = +-2.19 rad.
    det = k3 * (k1 - k3) - (k4 * c) ** 2
    ddq0 = (m22 * f0 - m12 * f1) / det
    ddq1 = (m11 * f1 - m12 * f0) / det
    new_dq0 = dq0 + dt * ddq0
    new_dq1 = dq1 + dt * ddq1
    new = np.stack([q0 + dt * new_dq0, q1 + dt * new_dq1, new_dq0, new_dq1], axis=1)
    return squash_np(new)


def hand_np(q):
    import numpy as np

    return np.stack([L1 * np.cos(q[:, 0]) + L2 * np.cos(q[:, 0] + q[:, 1]),
                     L1 * np.sin(q[:, 0]) + L2 * np.sin(q[:, 0] + q[:, 1])], axis=1)


def targets_np():
    """64 targets (xy (64, 2), joint states (64, 4)) by closed-form IK, elbow q1 > 0."""
    import numpy as np

    theta = np.linspace(0, 2 * np.pi, N_TARGETS + 1)[:-1]
    xy = np.stack([CENTRE[0] + RADIUS * np.cos(theta), CENTRE[1] + RADIUS * np.sin(theta)], 1)
    c = (np.sum(xy**2, 1) - L1**2 - L2**2) / (2 * L1 * L2)
    q1 = np.arccos(np.clip(c, -1, 1))
    q0 = np.arctan2(xy[:, 1], xy[:, 0]) - np.arctan2(L2 * np.sin(q1), L1 + L2 * np.cos(q1))
    q = np.stack([q0, q1], 1)
    return xy, np.concatenate([q, np.zeros_like(q)], 1)


# --- the benchmark ----------------------------------------------------------


def make_plant_class(hf, np):
    class ArmPlant(hf.nl.Plant):
        """The arm as a hessianfree Plant: network input generator and output layer.

        `__call__` gives the network input `[target state, plant state]`;
        `activation(x)` applies torques `u = x[:, :2] + x[:, 2:]` for one
        step; `d_activation` returns central finite-difference Jacobians
        (as DeWolf 2016 did) stacked as [d state'/d x, d state'/d state, I].
        """

        def __init__(self, target_states, T, eps=1e-6):
            super().__init__(stateful=True)
            self.target_states = np.asarray(target_states, np.float64)
            n = self.target_states.shape[0]
            self.init_state = np.tile(np.array([Q0[0], Q0[1], 0.0, 0.0]), (n, 1))
            self.shape = [n, T, 8]
            self.eps = eps
            targets = np.repeat(self.target_states[:, None, :], T, axis=1).astype(np.float32)
            targets[:, :-1] = np.nan  # final-state loss only (the NaN targets of DeWolf 2016)
            self.targets = targets
            self.d_output = np.broadcast_to(np.eye(4), (n, 4, 4))[..., None]
            self.reset()

        def _step(self, state, x):
            return arm_step_np(state, x[:, :2] + x[:, 2:])

        def activation(self, x):
            self.act_count += 1
            x = np.asarray(x, np.float64)
            self.prev_state, self.last_x = self.state, x
            self.state = self._step(self.state, x)
            return self.state.astype(np.float32)

        def d_activation(self, x, _):
            self.d_act_count += 1
            assert self.act_count == self.d_act_count
            s0, x0, eps = self.prev_state, self.last_x, self.eps
            n = s0.shape[0]
            d_input = np.zeros((n, 4, 4))
            d_state = np.zeros((n, 4, 4))
            for i in range(4):
                dx = np.zeros_like(x0)
                dx[:, i] = eps
                d_input[:, :, i] = (self._step(s0, x0 + dx) - self._step(s0, x0 - dx)) / (2 * eps)
                ds = np.zeros_like(s0)
                ds[:, i] = eps
                d_state[:, :, i] = (self._step(s0 + ds, x0) - self._step(s0 - ds, x0)) / (2 * eps)
            return np.concatenate([d_input[..., None], d_state[..., None], self.d_output], axis=-1)

        def __call__(self, _):
            inp = np.concatenate([self.target_states, self.state], axis=1).astype(np.float32)
            self.inputs = np.concatenate([self.inputs, inp[:, None, :]], axis=1)
            return inp

        def get_vecs(self):
            return self.inputs, self.targets

        def reset(self, init=None):
            self.act_count = 0
            self.d_act_count = 0
            self.state = self.init_state.copy() if init is None else np.asarray(init, np.float64)
            self.inputs = np.zeros((self.shape[0], 0, self.shape[-1]), np.float32)

    return ArmPlant


def own_loss(np, activations, target_states):
    """The loss of DeWolf (2016) recomputed from a rollout: mean over targets of
    ||x_T - x*||^2 / 2 + alpha sum_t ||a3_t||^2 / 2."""
    final = activations[-1][:, -1].astype(np.float64)
    state_cost = 0.5 * np.sum((final - target_states) ** 2, axis=1)
    control = 0.5 * ALPHA * np.sum(activations[3].astype(np.float64) ** 2, axis=(1, 2))
    return float(np.mean(state_cost + control))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=20, help="HF iterations to run")
    parser.add_argument("--T", type=int, default=40, help="time steps per reach")
    parser.add_argument("--hidden", type=int, default=32, help="units per tanh layer")
    parser.add_argument("--cg-iter", type=int, default=96, help="CG iteration budget")
    parser.add_argument("--init-damping", type=float, default=100.0, help="initial Tikhonov damping")
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    parser.add_argument("--threads", type=int, default=1,
                        help="BLAS threads (set before numpy loads; 0 leaves the environment alone)")
    parser.add_argument("--out", default=None, help="folder for results.json (default: print only)")
    args = parser.parse_args(argv)

    if args.threads > 0:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    import numpy as np
    import hessianfree as hf
    from hessianfree.loss_funcs import SparseL2, SquaredError

    xy, target_states = targets_np()
    # Check 1: inverse kinematics round-trips (and the start posture is on the branch).
    ik_err = float(np.max(np.abs(hand_np(target_states[:, :2]) - xy)))
    assert ik_err < 1e-12, ik_err
    start_hand = hand_np(np.array([Q0]))[0]
    assert np.allclose(start_hand, CENTRE, atol=1e-9), start_hand

    plant = make_plant_class(hf, np)(target_states, args.T)
    n_dof = 2
    net = hf.RNNet(shape=[8, args.hidden, args.hidden, 2 * n_dof, 4],
                   layers=[hf.nl.Linear(), hf.nl.Tanh(), hf.nl.Tanh(), hf.nl.Linear(), plant],
                   conns={0: [1, 2], 1: [2], 2: [3], 3: [4]}, rec_layers=[1, 2],
                   loss_type=[SquaredError(), SparseL2(ALPHA, layers=[3])],
                   rng=np.random.RandomState(args.seed))
    # Fix the 3 -> 4 connection to the identity (no bias) and mask it out of updates.
    start, w_end, b_end = net.offsets[(3, 4)]
    net.W[start:w_end] = np.eye(4, dtype=net.W.dtype).ravel()
    net.W[w_end:b_end] = 0.0
    net.mask = np.zeros(net.W.shape, bool)
    net.mask[start:b_end] = True
    n_params = int(net.W.size - (b_end - start))

    opt = hf.opt.HessianFree(CG_iter=args.cg_iter, init_damping=args.init_damping, plotting=True)
    net.optimizer = opt

    # Check 2: the library's loss equals the loss recomputed from the rollout.
    net.cache_minibatch(plant, None)
    lib_loss = float(net.error())
    mine = own_loss(np, net.activations, target_states)
    assert abs(lib_loss - mine) <= 1e-4 * max(1.0, abs(mine)), (lib_loss, mine)

    # Cost of the two HF primitives on the cached rollout (min of repeats).
    def best_of(fn, reps=5):
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        return best

    v = np.random.RandomState(1).randn(net.W.size).astype(net.W.dtype)
    grad_s = best_of(net.calc_grad)
    gv_s = best_of(lambda: net.calc_G(v, damping=1.0))

    # Diagnostic: library gradient vs central differences of the true closed-loop loss.
    # "inputs held" re-runs the network on the recorded inputs (the plant
    # still integrates, but its state is not fed back): the objective the
    # library actually differentiates. "closed loop" re-runs the plant.
    grad = net.calc_grad()
    grad[net.mask] = 0
    held_inputs, held_targets = plant.get_vecs()
    held_inputs, held_targets = held_inputs.copy(), held_targets.copy()
    rng = np.random.RandomState(2)
    grad_check = []
    for _ in range(3):
        d = rng.randn(net.W.size)
        d[net.mask] = 0
        d /= np.linalg.norm(d)
        eps = 1e-3
        w64 = net.W.astype(np.float64)
        wp, wm = (w64 + eps * d).astype(net.W.dtype), (w64 - eps * d).astype(net.W.dtype)
        closed = (float(net.error(wp, plant)) - float(net.error(wm, plant))) / (2 * eps)
        held = (float(net.error(wp, held_inputs, held_targets))
                - float(net.error(wm, held_inputs, held_targets))) / (2 * eps)
        grad_check.append({"library": float(grad @ d), "finite_difference_inputs_held": held,
                           "finite_difference_closed_loop": closed})
    net.cache_minibatch(plant, None)

    print(f"hessianfree {hf.__version__ if hasattr(hf, '__version__') else '0.4.0'}, numpy {np.__version__}, "
          f"{n_params} trainable parameters, T = {args.T}, CG_iter = {args.cg_iter}, "
          f"init_damping = {args.init_damping}")
    print(f"gradient {1e3 * grad_s:.1f} ms, Gauss-Newton product {1e3 * gv_s:.1f} ms")

    losses, seconds, dampings, cg_steps = [], [], [], []
    for it in range(args.iters):
        t0 = time.perf_counter()
        net.cache_minibatch(plant, None)  # regime (a): fresh rollout with the current weights
        losses.append(float(net.error()))
        update = opt.compute_update(False)
        update[net.mask] = 0
        net.W += update
        seconds.append(time.perf_counter() - t0)
        dampings.append(float(opt.damping))
        cg_steps.append(int(opt.plots["CG iterations"][-1]))
        print(f"iter {it + 1:3d}  loss {losses[-1]:.5g}  {seconds[-1]:.2f} s  "
              f"damping {dampings[-1]:.3g}  CG {cg_steps[-1]}", flush=True)

    activations = net.forward(plant, net.W)
    final_loss = own_loss(np, activations, target_states)
    final_states = activations[-1][:, -1].astype(np.float64)
    hand_err_mm = 1000 * np.linalg.norm(hand_np(final_states[:, :2]) - xy, axis=1)
    joint_speed = np.linalg.norm(final_states[:, 2:], axis=1)

    results = {
        "settings": {**vars(args), "n_targets": N_TARGETS, "dt": DT, "alpha": ALPHA,
                     "network": [8, args.hidden, args.hidden, 4, 4], "trainable_params": n_params,
                     "regime": "roll out, one HF update, repeat"},
        "load_average_1_5_15min": list(os.getloadavg()),
        "versions": {"hessianfree": "0.4.0", "numpy": np.__version__,
                     "python": platform.python_version(), "platform": platform.platform()},
        "checks": {"ik_roundtrip_max_err_m": ik_err, "library_loss": lib_loss,
                   "recomputed_loss": mine, "gradient_vs_finite_difference": grad_check},
        "gradient_ms": 1e3 * grad_s,
        "gauss_newton_product_ms": 1e3 * gv_s,
        "seconds_per_iteration_median": float(np.median(seconds)) if seconds else None,
        "seconds_per_iteration_min": float(np.min(seconds)) if seconds else None,
        "seconds_per_iteration": seconds,
        "loss_per_iteration": losses,
        "loss_initial": losses[0] if losses else lib_loss,
        "loss_after_iterations": final_loss,
        "iterations": args.iters,
        "damping": dampings,
        "cg_steps": cg_steps,
        "final_hand_error_mm_mean": float(np.mean(hand_err_mm)),
        "final_hand_error_mm_max": float(np.max(hand_err_mm)),
        "final_joint_speed_mean": float(np.mean(joint_speed)),
    }
    print(f"\nloss {results['loss_initial']:.4g} -> {final_loss:.4g} after {args.iters} iterations; "
          f"{results['seconds_per_iteration_median']:.2f} s/iteration (median); "
          f"final hand error {results['final_hand_error_mm_mean']:.1f} mm (mean)")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "results.json")
        with open(path, "w") as f:
            json.dump(results, f, indent=2)
        print(f"results: {path}")
    return results


if __name__ == "__main__":
    main()
    sys.exit(0)
