"""The reach experiment: a recurrent network trained by Hessian-free through
the exact closed loop to drive the 2-link arm to 64 targets.

The experiment of DeWolf (2016), after Sutskever (2013, ch. 6),
differentiated exactly:

    input_t  = [x*_t, s_t]                                    (8 values)
    h1_t     = tanh(input_t W01 + h1_{t-1} R1 + b1)
    h2_t     = tanh(input_t W02 + h1_t W12 + h2_{t-1} R2 + b2)
    y_t      = h2_t W23 + b3                                  (2 DOF = 4 outputs)
    u_t      = y_t[:2] + y_t[2:]                              (torques)
    s_{t+1}  = arm_step(s_t, u_t + noise_t)                   (plant, fed back)

The network is `jaxctl.models.rnn` with the arm as its plant, so one
`lax.scan` runs network and arm together and `jax.linearize` differentiates
the loop "network -> torque -> arm -> state -> network" exactly. The
Gauss-Newton outputs are `z = (s_1..s_T, y_0..y_{T-1})` and the loss

    L = mean_targets [ sum_t alpha ||u_t||^2 / 2 + sum_t w_t ||x*_t - s_{t+1}||^2 / 2 ]

(`w_t` the final step only, every step, or the ends of both legs of an
out-and-back reach) is convex in `z`, so `G = J^T H_L J` is positive
semi-definite (Martens 2010; Martens & Sutskever 2011).

Two training regimes (DeWolf 2016):

- `closed` (a): every iteration rolls the closed loop out with the current
  weights and takes one HF step on the exact closed-loop loss;
- `fixed-inputs` (b): roll out, record the network's inputs, then take
  `hold` HF steps (DeWolf 2016: 32) with those inputs held fixed.

Variants: out-and-back reaches, a feedback delay of K steps, Gaussian torque
noise (fresh every iteration), N random targets in a disc per iteration.

The torque penalty bounds how close the optimum lets the hand get: at
T = 40 and DeWolf's (2016) `alpha = 1e-4`, optimal open-loop control of this
loss stops 3.56 mm short on average (max 6.2 mm); the default
`alpha = 1e-6` moves that bound to 0.04 mm.

References:
  T. DeWolf (2016), "Deep learning for control using augmented Hessian-free
  optimization", studywolf blog.
  I. Sutskever (2013), "Training recurrent neural networks", PhD thesis,
  University of Toronto, ch. 6.
  J. Martens (2010), "Deep learning via Hessian-free optimization", ICML.
  J. Martens and I. Sutskever (2011), "Learning recurrent neural networks
  with Hessian-free optimization", ICML.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import jaxctl.envs.arm as _arm
import jaxctl.envs.reach_task as rt
from jaxctl.envs.closed_loop import dense_tangent_step
from jaxctl.models.rnn import rnn_apply, rnn_init, rnn_spec
from jaxctl.optim.hf import hessian_free
from jaxctl.optim.hf_config import CGConfig, DampingConfig
from jaxctl.util.checks import PyTree

DEFAULT_ALPHA = 1e-6
"""Default torque-penalty gain: 100x weaker than DeWolf's (2016), so that the loss's
optimum lies below 0.1 mm (see the module docstring)."""

DOF = 2
N_STATE = 2 * DOF
_ARM_STEP = dense_tangent_step(_arm.step)
"""The arm step whose linearisation keeps the dense 4 x 6 step Jacobian (fewer
kernels per step in every Gauss-Newton product)."""
RANDOM_TARGET_RADIUS = 0.085
"""Radius (m) of the disc around the centre that `--random-targets` samples
(a little beyond the 0.075 m circle, so the circle is inside the training set)."""


class ReachSettings(NamedTuple):
    """Everything that defines a training run (a resumed run must match it).

    Attributes:
      hidden: units per tanh layer (DeWolf 2016: 32; Sutskever 2013: 100).
      steps: time steps per reach `T` (DeWolf 2016: 40; Sutskever 2013: 100).
      targets: training targets on the circle (64).
      regime: `"closed"` (a) or `"fixed-inputs"` (b).
      hold: HF updates per recorded rollout in regime (b) (DeWolf 2016: 32).
      seed: PRNG seed (weights, random targets, noise).
      cg_maxiter: CG budget per HF step.
      damping: initial Levenberg-Marquardt damping.
      loss: `"final"` (DeWolf 2016) or `"every-step"`.
      out_and_back: reach out then back to the centre.
      delay: feedback delay in steps.
      torque_noise: standard deviation (N m) of the applied-torque noise.
      random_targets: 0, or N random targets per iteration.
      init_scale: feed-forward initial gain; output layer gets a tenth.
      alpha: torque-penalty gain (default 1e-6; DeWolf's (2016) is `10e-3 dt = 1e-4`).
    """

    hidden: int = 32
    steps: int = rt.T_DEWOLF
    targets: int = rt.N_TARGETS
    regime: str = "closed"
    hold: int = 32
    seed: int = 0
    cg_maxiter: int = 50
    damping: float = 1e-3
    loss: str = "final"
    out_and_back: bool = False
    delay: int = 0
    torque_noise: float = 0.0
    random_targets: int = 0
    init_scale: float = 1.0
    alpha: float = DEFAULT_ALPHA

    def validate(self) -> "ReachSettings":
        """Raises `ValueError` naming the bad flag."""
        checks = [
            (self.hidden >= 1, f"--hidden must be >= 1, got {self.hidden}"),
            (self.steps >= 2, f"--steps must be >= 2, got {self.steps}"),
            (self.targets >= 1, f"--targets must be >= 1, got {self.targets}"),
            (self.regime in ("closed", "fixed-inputs"),
             f"--regime must be 'closed' or 'fixed-inputs', got {self.regime!r}"),
            (self.hold >= 1, f"--hold must be >= 1, got {self.hold}"),
            (self.cg_maxiter >= 1, f"--cg-maxiter must be >= 1, got {self.cg_maxiter}"),
            (1e-8 <= self.damping <= 1e8, f"--damping must be in [1e-8, 1e8], got {self.damping}"),
            (self.loss in ("final", "every-step"),
             f"--loss must be 'final' or 'every-step', got {self.loss!r}"),
            (0 <= self.delay < self.steps, f"--delay must be in [0, steps), got {self.delay}"),
            (self.torque_noise >= 0 and math.isfinite(self.torque_noise),
             f"--torque-noise must be a finite number >= 0, got {self.torque_noise}"),
            (self.random_targets >= 0, f"--random-targets must be >= 0, got {self.random_targets}"),
            (self.init_scale > 0, f"--init-scale must be > 0, got {self.init_scale}"),
            (self.alpha >= 0 and math.isfinite(self.alpha),
             f"--alpha must be a finite number >= 0, got {self.alpha}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        return self


def fold_torque(y: jax.Array) -> jax.Array:
    """The torque of DeWolf (2016) from the `2 DOF` outputs: `u_i = y_i + y_(i+DOF)`."""
    return y[..., :DOF] + y[..., DOF:]


def network_spec(hidden: int, plant=None, observe=None):
    """The layered RNN of DeWolf (2016): `[8, hidden, hidden, 2 DOF]`, conns
    `{0: [1, 2], 1: [2], 2: [3]}`, recurrent layers 1 and 2, tanh hidden
    layers, linear input and output (`jaxctl.models.rnn.rnn_spec`)."""
    return rnn_spec([2 * N_STATE, hidden, hidden, 2 * DOF], "tanh",
                    recurrent=[1, 2], conns={0: [1, 2], 1: [2], 2: [3]},
                    plant=plant, observe=observe)


def init_params(key: jax.Array, s: ReachSettings) -> PyTree:
    """Initial weights (`rnn_init`: fan-in normal, orthogonal recurrence), the
    output layer scaled down by 10 so the untrained torques are small."""
    params = rnn_init(key, network_spec(s.hidden), scale=s.init_scale)
    params["w"]["2->3"] = params["w"]["2->3"] * 0.1
    return params


def closed_loop(params: PyTree, s: ReachSettings, target: jax.Array,
                noise: jax.Array | None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One closed-loop reach of the RNN + arm (`rnn_apply` with the plant).

    Args:
      params: network weights.
      s: settings (hidden, delay).
      target: target schedule `x*_t`, shape `(T, 4)`.
      noise: torque noise, shape `(T, 2)`, or `None`.

    Returns:
      `(states (T, 4) = s_1..s_T, outputs y (T, 4), inputs (T, 8))`: the
      inputs are what the network saw (the recorded inputs of regime (b)).
    """
    x0 = rt.start_state(dtype=target.dtype)
    if s.delay == 0 and noise is None:
        spec = network_spec(s.hidden, plant=lambda x, y: _ARM_STEP(x, fold_torque(y)))
        out = rnn_apply(spec, params, target, x0)
        states = out.plant_states
        seen = jnp.concatenate([x0[None], states[:-1]], axis=0)
    else:
        noise = jnp.zeros(target.shape[:1] + (DOF,), target.dtype) if noise is None else noise

        def plant(p, y):
            u = fold_torque(y) + noise[p["t"].astype(jnp.int32)]
            new = {"x": _ARM_STEP(p["x"], u), "t": p["t"] + 1}
            if s.delay:
                new["buf"] = jnp.concatenate([p["buf"][1:], p["x"][None]], axis=0)
            return new

        def observe(p):
            return p["buf"][0] if s.delay else p["x"]

        # The step counter is a float that follows the inputs' dtype (the RNN
        # promotes integer plant states); it indexes the noise after a cast.
        p0 = {"x": x0, "t": jnp.zeros_like(target[0, 0])}
        if s.delay:
            p0["buf"] = jnp.broadcast_to(x0, (s.delay, N_STATE))
        spec = network_spec(s.hidden, plant=plant, observe=observe)
        out = rnn_apply(spec, params, target, p0)
        states = out.plant_states["x"]
        if s.delay:
            seen = jnp.concatenate([jnp.broadcast_to(x0, (s.delay, N_STATE)), x0[None],
                                    states[:-1]], axis=0)[:target.shape[0]]
        else:
            seen = jnp.concatenate([x0[None], states[:-1]], axis=0)
    return states, out.outputs, jnp.concatenate([target, seen], axis=1)


def open_loop(params: PyTree, s: ReachSettings, inputs: jax.Array,
              noise: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """Regime (b): the network on recorded inputs `(T, 8)`, its torques drive
    the arm from the start state (no feedback). Returns `(states, outputs)`."""
    y = rnn_apply(network_spec(s.hidden), params, inputs).outputs
    u = fold_torque(y)
    if noise is not None:
        u = u + noise

    def body(x, u_t):
        x = _ARM_STEP(x, u_t)
        return x, x

    _, states = jax.lax.scan(body, rt.start_state(dtype=inputs.dtype), u)
    return states, y


def closed_loop_batch(params: PyTree, s: ReachSettings, batch: dict) -> tuple[jax.Array, jax.Array]:
    """The Gauss-Newton model of regime (a): `closed_loop` vmapped over the
    batch's targets (and noise). Returns `(states (B, T, 4), outputs (B, T, 4))`."""
    st, y, _ = jax.vmap(lambda t, n: closed_loop(params, s, t, n))(batch["target"], batch.get("noise"))
    return st, y


def state_weights(s: ReachSettings, dtype=jnp.float32) -> jax.Array:
    """`w_t`, shape `(T,)`: final step, every step, or both legs' ends."""
    if s.out_and_back:
        x0 = rt.start_state(dtype=dtype)
        return rt.out_and_back(x0, x0, s.steps)[1]
    if s.loss == "every-step":
        return rt.every_step_weights(s.steps, dtype)
    return rt.final_weights(s.steps, dtype)


def target_schedule(s: ReachSettings, target_states: jax.Array) -> jax.Array:
    """`(k, 4)` target states -> `(k, T, 4)` schedules (out-and-back or held)."""
    if s.out_and_back:
        x0 = rt.start_state(dtype=target_states.dtype)
        return jax.vmap(lambda x: rt.out_and_back(x, x0, s.steps)[0])(target_states)
    return jnp.broadcast_to(target_states[:, None, :],
                            (target_states.shape[0], s.steps, N_STATE))


def batch_loss(outputs: tuple[jax.Array, jax.Array], batch: dict, s: ReachSettings) -> jax.Array:
    """Mean over the batch of `reach_task.reach_loss` on `(states, outputs)`
    (convex in both: the Gauss-Newton outputs)."""
    states, y = outputs
    weights = state_weights(s, states.dtype)
    x0 = rt.start_state(dtype=states.dtype)

    def one(st, yy, tgt):
        full = jnp.concatenate([x0[None], st], axis=0)
        return rt.reach_loss(full, fold_torque(yy), tgt, weights, s.alpha)

    return jnp.mean(jax.vmap(one)(states, y, batch["target"]))


def random_disc_targets(key: jax.Array, n: int, radius: float = RANDOM_TARGET_RADIUS,
                        dtype=jnp.float32) -> jax.Array:
    """`n` joint-space target states uniform in a disc around the centre, shape `(n, 4)`."""
    k1, k2 = jax.random.split(key)
    r = radius * jnp.sqrt(jax.random.uniform(k1, (n,), dtype))
    a = 2 * jnp.pi * jax.random.uniform(k2, (n,), dtype)
    xy = jnp.stack([rt.CENTRE[0] + r * jnp.cos(a), rt.CENTRE[1] + r * jnp.sin(a)], axis=1)
    q = jax.vmap(_arm.inverse_kinematics)(xy)
    return jnp.concatenate([q, jnp.zeros_like(q)], axis=1)


class Experiment(NamedTuple):
    """The compiled-once functions of one training run (from `build`)."""

    settings: ReachSettings
    targets: dict
    make_batch: Any      # (key, iteration) -> batch (closed-loop)
    record: Any          # (params, batch) -> batch with recorded "inputs"
    step: Any            # (params, hf_state, batch) -> (params, hf_state, stats)
    evaluate: Any        # (params, target_states (k, 4), target_xy (k, 2), noise_key) -> metrics
    hf: Any


def build(s: ReachSettings) -> Experiment:
    """Builds the batch maker, the HF step and the evaluation for settings `s`.

    The batch of iteration `i` uses `fold_in(key, i)` for random targets and
    torque noise, so a resumed run sees exactly the batches it would have.
    """
    s = s.validate()
    sets = rt.standard_target_sets(s.targets, dtype=jnp.float32)
    train_states = sets["train"].state
    noisy = s.torque_noise > 0

    def make_batch(key, iteration):
        k = jax.random.fold_in(key, iteration)
        k_targets, k_noise = jax.random.split(k)
        if s.random_targets:
            states = random_disc_targets(k_targets, s.random_targets)
        else:
            states = train_states
        batch = {"target": target_schedule(s, states)}
        if noisy:
            batch["noise"] = s.torque_noise * jax.random.normal(
                k_noise, (states.shape[0], s.steps, DOF), jnp.float32)
        return batch

    def fixed_model(params, batch):
        return jax.vmap(lambda i, n: open_loop(params, s, i, n))(batch["inputs"], batch.get("noise"))

    def record(params, batch):
        _, _, inputs = jax.vmap(lambda t, n: closed_loop(params, s, t, n))(
            batch["target"], batch.get("noise"))
        return {**batch, "inputs": inputs}

    model = (lambda params, batch: closed_loop_batch(params, s, batch)) if s.regime == "closed" else fixed_model
    hf = hessian_free(model, lambda out, batch: batch_loss(out, batch, s),
                      cg=CGConfig(maxiter=s.cg_maxiter), damping=DampingConfig(initial=s.damping))

    def evaluate(params, target_states, target_xy, noise_key):
        tgt = target_schedule(s, target_states)
        noise = None
        if noisy:
            noise = s.torque_noise * jax.random.normal(
                noise_key, tgt.shape[:2] + (DOF,), jnp.float32)
        st, y, _ = jax.vmap(lambda t, n: closed_loop(params, s, t, n))(tgt, noise)
        batch = {"target": tgt}
        loss = batch_loss((st, y), batch, s)
        m = jax.vmap(rt.reach_metrics)(st[:, -1], target_xy if not s.out_and_back else
                                       jnp.broadcast_to(jnp.asarray(rt.CENTRE, st.dtype),
                                                        target_xy.shape),
                                       tgt[:, -1])
        out = {"loss": loss, "hand_error_mm": m.hand_error_mm, "joint_speed": m.joint_speed,
               "paths": jax.vmap(jax.vmap(lambda x: _arm.hand_position(x[:2])))(st),
               "torque": fold_torque(y)}
        if s.out_and_back:
            switch = s.steps // 2
            mid = jax.vmap(rt.reach_metrics)(st[:, switch - 1], target_xy, tgt[:, 0])
            out["out_error_mm"] = mid.hand_error_mm
            out["out_joint_speed"] = mid.joint_speed
        return out

    return Experiment(settings=s, targets=sets, make_batch=make_batch, record=record,
                      step=hf.step, evaluate=evaluate, hf=hf)


def benchmark_problem(targets: int = rt.N_TARGETS, *, hidden: int = 32, steps: int = rt.T_DEWOLF,
                      cg_maxiter: int = 96, damping: float = 100.0, seed: int = 0):
    """DeWolf's (2016) benchmark on `targets` targets: `(experiment, params, batch)`.

    32 units, T = 40, CG budget 96, initial damping 100, torque penalty
    `10e-3 dt`, the targets on the circle, the first iteration's batch.
    """
    s = ReachSettings(hidden=hidden, steps=steps, targets=targets, cg_maxiter=cg_maxiter,
                      damping=damping, seed=seed, alpha=10e-3 * _arm.DT)
    exp = build(s)
    return exp, init_params(jax.random.PRNGKey(seed), s), exp.make_batch(jax.random.PRNGKey(seed), 0)


def hf_iteration(targets: int = rt.N_TARGETS, **settings):
    """One HF iteration of `benchmark_problem(targets, **settings)`, ready to time: `(step_fn, args)`.

    `step_fn(*args)` is the compiled-once HF step (one closed-loop
    linearisation, Martens' CG, backtracking, line search) and returns
    `(params, hf_state, stats)`.

    Example:
      >>> step, args = hf_iteration(4, hidden=4, steps=3, cg_maxiter=2)
      >>> int(step(*args)[2].cg_steps) <= 2
      True
    """
    exp, params, batch = benchmark_problem(targets, **settings)
    return jax.jit(exp.step), (params, exp.hf.init(params), batch)
