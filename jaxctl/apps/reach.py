"""Train a recurrent network by Hessian-free through the exact closed loop to
drive the 2-link arm to 64 targets (`jaxctl reach`, the project's main job).

The experiment of the seed (DeWolf 2016, after Sutskever's thesis ch. 6),
differentiated exactly:

    input_t  = [x*_t, s_t]                                    (8 values)
    h1_t     = tanh(input_t W01 + h1_{t-1} R1 + b1)
    h2_t     = tanh(input_t W02 + h1_t W12 + h2_{t-1} R2 + b2)
    y_t      = h2_t W23 + b3                                  (2 DOF = 4 outputs)
    u_t      = y_t[:2] + y_t[2:]                              (torques)
    s_{t+1}  = arm_step(s_t, u_t + noise_t)                   (plant, fed back)

The network is `jaxctl.models.rnn` with the arm as its plant (the torque fold
`u = y[:DOF] + y[DOF:]` is the first thing the plant does), so one `lax.scan`
runs network and arm together and `jax.linearize` / `linear_transpose`
differentiate the loop "network -> torque -> arm -> state -> network"
exactly. The Gauss-Newton "outputs" are the plant states and the network
outputs over time, `z = (s_1..s_T, y_0..y_{T-1})`, and the loss

    L = mean_targets [ sum_t alpha ||u_t||^2 / 2 + sum_t w_t ||x*_t - s_{t+1}||^2 / 2 ]

(`alpha = 10e-3 dt`, `w_t` the final step only, every step, or the ends of
both legs of an out-and-back reach) is a sum of terms convex in `z`, so
`G = J^T H_L J` is positive semi-definite and `jaxctl.optim.hf.hessian_free` can
minimise it.

Two training regimes (the seed's):

- `closed` (a): every iteration rolls the closed loop out with the current
  weights and takes one HF step on the exact closed-loop loss;
- `fixed-inputs` (b): roll out, record the network's inputs (target + plant
  state, after any delay), then take `hold` HF steps (seed: 32) with those
  inputs held fixed: the network runs open loop on the recorded inputs and
  its torques drive the arm, whose final state is scored; then roll out again.

Variants beyond the seed: `--out-and-back` (reach, then return to the
centre), `--delay K` (the network sees the state of K steps ago),
`--torque-noise STD` (Gaussian noise added to the applied torque, fresh
every iteration), `--random-targets N` (N fresh random targets in a disc per
iteration, for generalisation).

The torque penalty sets how close the loss's optimum lets the hand get: at
T = 40 and the seed's `alpha = 1e-4`, per-target optimal open-loop control
of this same loss (float64 L-BFGS on the torques, a lower bound for any
controller) stops 3.56 mm short on average (max 6.2 mm); the trained network
gets within 1% of that bound's loss. The default, `alpha = 1e-6` (a penalty
100 times weaker), moves the bound to 0.04 mm and the network below 0.1 mm;
`--alpha 1e-4` is the seed's loss.

Checkpoints (`checkpoint.npz` in the run folder) hold the parameters, the HF
state, the held inputs of regime (b), the iteration, the PRNG key, the
history and the settings, with a format tag, a version and a SHA-256 of the
contents; they are written atomically every `--checkpoint-every` iterations,
at the end, and on Ctrl-C. `--resume` continues bit-for-bit (every
iteration's randomness is `fold_in(key, iteration)`).

References:
  I. Sutskever (2013), "Training recurrent neural networks", PhD thesis,
  University of Toronto, ch. 6.
  J. Martens (2010), "Deep learning via Hessian-free optimization", ICML.
  J. Martens and I. Sutskever (2011), "Learning recurrent neural networks
  with Hessian-free optimization", ICML.
  T. DeWolf (2016), "Deep learning for control using augmented Hessian-free
  optimization" (the seed).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxctl.envs import arm as _arm
from jaxctl.envs import reach_task as rt

DEFAULT_ALPHA = 1e-6
"""Default torque-penalty gain: 100x weaker than the seed's, so that the loss's
optimum lies below 0.1 mm (see the module docstring)."""
from jaxctl.apps import common as _common
from jaxctl.optim.hf import HFState, hessian_free
from jaxctl.models.rnn import rnn_apply, rnn_init, rnn_spec

PyTree = Any

DOF = 2
N_STATE = 2 * DOF
CHECKPOINT_NAME = "checkpoint.npz"
CHECKPOINT_FORMAT = "jaxctl-reach-checkpoint"
CHECKPOINT_VERSION = 1
RANDOM_TARGET_RADIUS = 0.085
"""Radius (m) of the disc around the centre that `--random-targets` samples
(a little beyond the 0.075 m circle, so the circle is inside the training set)."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, of another format, or of other settings."""


class Settings(NamedTuple):
    """Everything that defines a training run (a resumed run must match it).

    Attributes:
      hidden: units per tanh layer (seed code 32, thesis 100).
      steps: time steps per reach `T` (seed code 40, thesis 100).
      targets: training targets on the circle (64).
      regime: `"closed"` (a) or `"fixed-inputs"` (b).
      hold: HF updates per recorded rollout in regime (b) (seed 32).
      seed: PRNG seed (weights, random targets, noise).
      cg_iters: CG budget per HF step.
      damping: initial Levenberg-Marquardt damping.
      loss: `"final"` (seed) or `"every-step"`.
      out_and_back: reach out then back to the centre.
      delay: feedback delay in steps.
      torque_noise: standard deviation (N m) of the applied-torque noise.
      random_targets: 0, or N random targets per iteration.
      init_scale: feed-forward initial gain; output layer gets a tenth.
      alpha: torque-penalty gain (default 1e-6; the seed's is `10e-3 dt = 1e-4`).
    """

    hidden: int = 32
    steps: int = rt.T_SEED
    targets: int = rt.N_TARGETS
    regime: str = "closed"
    hold: int = 32
    seed: int = 0
    cg_iters: int = 50
    damping: float = 1e-3
    loss: str = "final"
    out_and_back: bool = False
    delay: int = 0
    torque_noise: float = 0.0
    random_targets: int = 0
    init_scale: float = 1.0
    alpha: float = DEFAULT_ALPHA

    def validate(self) -> "Settings":
        """Raises `ValueError` naming the bad flag."""
        checks = [
            (self.hidden >= 1, f"--hidden must be >= 1, got {self.hidden}"),
            (self.steps >= 2, f"--steps must be >= 2, got {self.steps}"),
            (self.targets >= 1, f"--targets must be >= 1, got {self.targets}"),
            (self.regime in ("closed", "fixed-inputs"),
             f"--regime must be 'closed' or 'fixed-inputs', got {self.regime!r}"),
            (self.hold >= 1, f"--hold must be >= 1, got {self.hold}"),
            (self.cg_iters >= 1, f"--cg-iters must be >= 1, got {self.cg_iters}"),
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


# ---------------------------------------------------------------------------
# the network, the closed loop and the loss
# ---------------------------------------------------------------------------

def fold_torque(y: jax.Array) -> jax.Array:
    """The seed's torque from the `2 DOF` outputs: `u_i = y_i + y_(i+DOF)`."""
    return y[..., :DOF] + y[..., DOF:]


def network_spec(hidden: int, plant=None, observe=None):
    """The seed's layered RNN: `[8, hidden, hidden, 2 DOF]`, conns
    `{0: [1, 2], 1: [2], 2: [3]}`, recurrent layers 1 and 2, tanh hidden
    layers, linear input and output (`jaxctl.models.rnn.rnn_spec`)."""
    return rnn_spec([2 * N_STATE, hidden, hidden, 2 * DOF], "tanh",
                    recurrent=[1, 2], conns={0: [1, 2], 1: [2], 2: [3]},
                    plant=plant, observe=observe)


def init_params(key: jax.Array, s: Settings) -> PyTree:
    """Initial weights (`rnn_init`: fan-in normal, orthogonal recurrence), the
    output layer scaled down by 10 so the untrained torques are small."""
    params = rnn_init(key, network_spec(s.hidden), scale=s.init_scale)
    params["w"]["2->3"] = params["w"]["2->3"] * 0.1
    return params


def closed_loop(params: PyTree, s: Settings, target: jax.Array,
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
        spec = network_spec(s.hidden, plant=lambda x, y: _arm.step(x, fold_torque(y)))
        out = rnn_apply(spec, params, target, x0)
        states = out.plant_states
        seen = jnp.concatenate([x0[None], states[:-1]], axis=0)
    else:
        noise = jnp.zeros(target.shape[:1] + (DOF,), target.dtype) if noise is None else noise

        def plant(p, y):
            u = fold_torque(y) + noise[p["t"]]
            new = {"x": _arm.step(p["x"], u), "t": p["t"] + 1}
            if s.delay:
                new["buf"] = jnp.concatenate([p["buf"][1:], p["x"][None]], axis=0)
            return new

        def observe(p):
            return p["buf"][0] if s.delay else p["x"]

        p0 = {"x": x0, "t": jnp.zeros((), jnp.int32)}
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


def open_loop(params: PyTree, s: Settings, inputs: jax.Array,
              noise: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """Regime (b): the network on recorded inputs `(T, 8)`, its torques drive
    the arm from the start state (no feedback). Returns `(states, outputs)`."""
    y = rnn_apply(network_spec(s.hidden), params, inputs).outputs
    u = fold_torque(y)
    if noise is not None:
        u = u + noise

    def body(x, u_t):
        x = _arm.step(x, u_t)
        return x, x

    _, states = jax.lax.scan(body, rt.start_state(dtype=inputs.dtype), u)
    return states, y


def closed_loop_batch(params: PyTree, s: Settings, batch: dict) -> tuple[jax.Array, jax.Array]:
    """The Gauss-Newton model of regime (a): `closed_loop` vmapped over the
    batch's targets (and noise). Returns `(states (B, T, 4), outputs (B, T, 4))`."""
    st, y, _ = jax.vmap(lambda t, n: closed_loop(params, s, t, n))(batch["target"], batch.get("noise"))
    return st, y


def state_weights(s: Settings, dtype=jnp.float32) -> jax.Array:
    """`w_t`, shape `(T,)`: final step, every step, or both legs' ends."""
    if s.out_and_back:
        x0 = rt.start_state(dtype=dtype)
        return rt.out_and_back(x0, x0, s.steps)[1]
    if s.loss == "every-step":
        return rt.every_step_weights(s.steps, dtype)
    return rt.final_weights(s.steps, dtype)


def target_schedule(s: Settings, target_states: jax.Array) -> jax.Array:
    """`(k, 4)` target states -> `(k, T, 4)` schedules (out-and-back or held)."""
    if s.out_and_back:
        x0 = rt.start_state(dtype=target_states.dtype)
        return jax.vmap(lambda x: rt.out_and_back(x, x0, s.steps)[0])(target_states)
    return jnp.broadcast_to(target_states[:, None, :],
                            (target_states.shape[0], s.steps, N_STATE))


def batch_loss(outputs: tuple[jax.Array, jax.Array], batch: dict, s: Settings) -> jax.Array:
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

    settings: Settings
    targets: dict
    make_batch: Any      # (key, iteration) -> batch (closed-loop)
    record: Any          # (params, batch) -> batch with recorded "inputs"
    step: Any            # (params, hf_state, batch) -> (params, hf_state, stats)
    evaluate: Any        # (params, target_states (k, 4), target_xy (k, 2), noise_key) -> metrics
    hf: Any


def build(s: Settings) -> Experiment:
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
                      maxiter=s.cg_iters, init_damping=s.damping)

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


# ---------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------

def _leaves_with_names(tree: PyTree, prefix: str) -> list[tuple[str, np.ndarray]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(prefix + jax.tree_util.keystr(path), np.asarray(leaf)) for path, leaf in flat]


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _settings_json(s: Settings) -> str:
    return json.dumps(s._asdict(), sort_keys=True)


class TrainState(NamedTuple):
    """Where training stands after `iteration` completed HF steps.

    Attributes:
      params: network weights.
      hf_state: `HFState` (count, damping, warm start).
      held: regime (b)'s recorded batch (`None` in regime (a) or before the
        first rollout).
      iteration: completed iterations (Python int).
      key: base PRNG key (raw uint32 `(2,)`).
      history: dict of Python lists (per-iteration stats, evaluations).
    """

    params: PyTree
    hf_state: HFState
    held: dict | None
    iteration: int
    key: jax.Array
    history: dict


HISTORY_FIELDS = ("loss", "new_loss", "damping", "cg_steps", "rho", "accepted", "seconds")
EVAL_FIELDS = ("eval_iteration", "eval_seconds", "eval_mean_mm", "eval_max_mm", "eval_loss")


def new_history() -> dict:
    return {name: [] for name in HISTORY_FIELDS + EVAL_FIELDS}


def save_checkpoint(path: str, state: TrainState, s: Settings) -> None:
    """Writes `state` atomically to `path` (an `.npz` with a SHA-256 of its contents).

    Raises:
      ValueError: if the parameters, HF state or last loss are not finite (a
        bad state never replaces a good checkpoint).
    """
    arrays = dict(_leaves_with_names(state.params, "params"))
    arrays.update(_leaves_with_names(state.hf_state, "hf"))
    if state.held is not None:
        arrays.update(_leaves_with_names(state.held, "held"))
    for name, value in arrays.items():
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            raise ValueError(f"refusing to checkpoint a non-finite state: {name} has "
                             f"non-finite entries (iteration {state.iteration})")
    losses = state.history.get("new_loss", [])
    if losses and not math.isfinite(losses[-1]):
        raise ValueError(f"refusing to checkpoint: the loss at iteration {state.iteration} "
                         f"is {losses[-1]}")
    for name in HISTORY_FIELDS + EVAL_FIELDS:
        arrays["history/" + name] = np.asarray(state.history[name], np.float64)
    arrays["meta/iteration"] = np.asarray(state.iteration, np.int64)
    arrays["meta/key"] = np.asarray(state.key, np.uint32)
    arrays["meta/has_held"] = np.asarray(state.held is not None)
    arrays["meta/format"] = np.asarray(CHECKPOINT_FORMAT)
    arrays["meta/version"] = np.asarray(CHECKPOINT_VERSION, np.int64)
    arrays["meta/settings"] = np.asarray(_settings_json(s))
    arrays["meta/sha256"] = np.asarray(_digest(arrays))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    _common.atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str, s: Settings, template: TrainState) -> TrainState:
    """Reads a checkpoint written by `save_checkpoint` for settings `s`.

    Args:
      path: the `.npz`.
      s: the settings of the run that resumes; must equal the saved ones.
      template: a fresh `TrainState` for `s` (shapes, dtypes, tree structure).

    Raises:
      CheckpointError: missing file, unreadable or corrupt file (checksum),
        wrong format / version, different settings, shape mismatch.
    """
    if not os.path.exists(path):
        raise CheckpointError(f"--resume: no checkpoint at {path}; start without --resume "
                              "(or point --out at the run folder to continue)")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: f[name] for name in f.files}
    except Exception as exc:  # zip / header / pickle errors all mean "corrupt"
        raise CheckpointError(f"--resume: checkpoint {path} is unreadable or corrupt ({exc})") from exc
    if str(arrays.get("meta/format", "")) != CHECKPOINT_FORMAT:
        raise CheckpointError(f"--resume: {path} is not a jaxctl reach checkpoint")
    if int(arrays.get("meta/version", -1)) != CHECKPOINT_VERSION:
        raise CheckpointError(f"--resume: {path} has checkpoint version "
                              f"{int(arrays.get('meta/version', -1))}, this jaxctl reads "
                              f"{CHECKPOINT_VERSION}")
    saved_digest = str(arrays.pop("meta/sha256", ""))
    if _digest(arrays) != saved_digest:
        raise CheckpointError(f"--resume: checkpoint {path} is corrupt (checksum mismatch)")
    saved = json.loads(str(arrays["meta/settings"]))
    mine = json.loads(_settings_json(s))
    diff = {k: (saved.get(k), mine.get(k)) for k in set(saved) | set(mine) if saved.get(k) != mine.get(k)}
    if diff:
        described = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
        raise CheckpointError(f"--resume: the checkpoint in {path} was made with other settings "
                              f"({described}); rerun with the checkpoint's flags or use a new --out")

    def restore(tree, prefix):
        flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
        leaves = []
        for p, leaf in flat:
            name = prefix + jax.tree_util.keystr(p)
            if name not in arrays:
                raise CheckpointError(f"--resume: checkpoint {path} lacks {name}")
            value = arrays[name]
            if value.shape != np.shape(leaf) or value.dtype != np.asarray(leaf).dtype:
                raise CheckpointError(f"--resume: {name} in {path} has shape {value.shape} "
                                      f"{value.dtype}, expected {np.shape(leaf)} "
                                      f"{np.asarray(leaf).dtype}")
            leaves.append(jnp.asarray(value))
        return jax.tree_util.tree_unflatten(treedef, leaves)

    held = None
    if bool(arrays["meta/has_held"]):
        if template.held is None:
            raise CheckpointError(f"--resume: {path} holds recorded inputs but the template has none")
        held = restore(template.held, "held")
    history = {name: arrays["history/" + name].tolist() for name in HISTORY_FIELDS + EVAL_FIELDS}
    return TrainState(params=restore(template.params, "params"),
                      hf_state=restore(template.hf_state, "hf"), held=held,
                      iteration=int(arrays["meta/iteration"]),
                      key=jnp.asarray(arrays["meta/key"]), history=history)


# ---------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------

class Trainer:
    """Compiles the pieces of one run once and runs HF iterations.

    `run(state, until)` advances a `TrainState`; used by the CLI, the
    notebook and the tests (which share one `Trainer` per settings).
    """

    def __init__(self, s: Settings):
        self.settings = s.validate()
        self.exp = build(self.settings)
        self.key = jax.random.PRNGKey(self.settings.seed)
        self._record_fn = lambda params, it: self.exp.record(
            params, self.exp.make_batch(self.key, it))
        self._step = jax.jit(self._iteration)
        self._record = jax.jit(self._record_fn)
        self._evaluate = jax.jit(self.exp.evaluate)
        self.compile_seconds = None

    def _iteration(self, params, hf_state, iteration, held):
        batch = held if held is not None else self.exp.make_batch(self.key, iteration)
        return self.exp.step(params, hf_state, batch)

    def initial_state(self) -> TrainState:
        params = init_params(jax.random.fold_in(self.key, 2**31 - 1), self.settings)
        held = None
        if self.settings.regime == "fixed-inputs":
            held = jax.eval_shape(self._record_fn, params, jnp.int32(0))
            held = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), held)
        return TrainState(params=params, hf_state=self.exp.hf.init(params), held=held,
                          iteration=0, key=self.key, history=new_history())

    def compile(self, state: TrainState) -> float:
        """Compiles step, record and evaluate ahead of time; returns seconds."""
        if self.compile_seconds is None:
            t0 = time.perf_counter()
            held = state.held
            self._step = self._step.lower(state.params, state.hf_state, jnp.int32(0), held).compile()
            if self.settings.regime == "fixed-inputs":
                self._record = self._record.lower(state.params, jnp.int32(0)).compile()
            ts = self.exp.targets["train"]
            self._evaluate = self._evaluate.lower(state.params, ts.state, ts.xy,
                                                  self.eval_key()).compile()
            self.compile_seconds = time.perf_counter() - t0
        return self.compile_seconds

    def eval_key(self) -> jax.Array:
        return jax.random.fold_in(self.key, 2**31 - 2)

    def evaluate(self, params, name: str = "train") -> dict:
        ts = self.exp.targets[name]
        return jax.device_get(self._evaluate(params, ts.state, ts.xy, self.eval_key()))

    def run(self, state: TrainState, until: int, *, eval_every: int = 5,
            on_iteration=None) -> TrainState:
        """Advances `state` to `until` completed iterations.

        Each iteration is one compiled HF step (regime (b) re-records the
        inputs every `hold` iterations). `on_iteration(state, stats)` is
        called after every iteration (progress, checkpoints); a
        `KeyboardInterrupt` leaves the last completed state in `self.last`.
        """
        self.compile(state)
        s = self.settings
        self.last = state
        while state.iteration < until:
            it = state.iteration
            t0 = time.perf_counter()
            held = state.held
            if s.regime == "fixed-inputs" and it % s.hold == 0:
                held = self._record(state.params, jnp.int32(it))
            params, hf_state, stats = self._step(state.params, state.hf_state, jnp.int32(it), held)
            stats = jax.device_get(stats)
            seconds = time.perf_counter() - t0
            hist = {k: list(v) for k, v in state.history.items()}
            total = (hist["seconds"][-1] if hist["seconds"] else 0.0) + seconds
            for name, value in (("loss", stats.loss), ("new_loss", stats.new_loss),
                                ("damping", stats.damping), ("cg_steps", stats.cg_steps),
                                ("rho", stats.rho), ("accepted", stats.accepted),
                                ("seconds", total)):
                hist[name].append(float(value))
            if eval_every and ((it + 1) % eval_every == 0 or it + 1 == until):
                ev = self.evaluate(params)
                hist["eval_iteration"].append(it + 1)
                hist["eval_seconds"].append(total)
                hist["eval_mean_mm"].append(float(np.mean(ev["hand_error_mm"])))
                hist["eval_max_mm"].append(float(np.max(ev["hand_error_mm"])))
                hist["eval_loss"].append(float(ev["loss"]))
            state = TrainState(params, hf_state, held if s.regime == "fixed-inputs" else None,
                               it + 1, state.key, hist)
            self.last = state
            if on_iteration is not None:
                on_iteration(state, stats)
        return state


# ---------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `jaxctl reach`."""
    parser.add_argument("--hidden", type=int, default=None,
                        help="units per tanh layer (seed code 32, thesis 100; --quick: 16)")
    parser.add_argument("--steps", type=int, default=None,
                        help="time steps per reach T (seed code 40, thesis 100)")
    parser.add_argument("--targets", type=int, default=None,
                        help="training targets on the 0.075 m circle (default 64; --quick: 16)")
    parser.add_argument("--regime", choices=("closed", "fixed-inputs"), default="closed",
                        help="(a) closed: roll out + one HF step per iteration; (b) fixed-inputs: "
                             "record the network inputs, hold them for --hold HF steps")
    parser.add_argument("--hold", type=int, default=32, help="HF steps per recorded rollout in (b)")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed (weights, targets, noise)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="HF iterations (default 150; --quick: 40)")
    parser.add_argument("--cg-iters", type=int, default=None, help="CG budget per HF step (default 50)")
    parser.add_argument("--damping", type=float, default=1e-3,
                        help="initial Levenberg-Marquardt damping (the loss is a mean over targets: "
                             "start small; it adapts both ways)")
    parser.add_argument("--loss", choices=("final", "every-step"), default="final",
                        help="state error at the final step (seed) or at every step")
    parser.add_argument("--out-and-back", action="store_true",
                        help="reach the target by T/2, then return to the centre by T")
    parser.add_argument("--delay", type=int, default=0, help="feedback delay (steps)")
    parser.add_argument("--torque-noise", type=float, default=0.0,
                        help="std (N m) of Gaussian noise on the applied torque (train and eval)")
    parser.add_argument("--random-targets", type=int, default=0,
                        help="train on N fresh random targets in a disc per iteration (generalisation)")
    parser.add_argument("--init-scale", type=float, default=1.0, help="feed-forward initial gain")
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                        help="torque-penalty gain; the seed's is 1e-4 (10e-3 * dt), whose optimum "
                             "at T = 40 stops the hand ~3.6 mm short for any controller")
    parser.add_argument("--eval-every", type=int, default=5,
                        help="evaluate the 64-target hand error every N iterations")
    parser.add_argument("--checkpoint-every", type=int, default=25,
                        help="write checkpoint.npz every N iterations (also at the end and on Ctrl-C)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from checkpoint.npz in --out (same flags; --iterations may grow)")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The `Settings` the flags ask for (`--quick` shrinks the defaults)."""
    quick = bool(getattr(args, "quick", False))
    return Settings(
        hidden=args.hidden if args.hidden is not None else (16 if quick else 32),
        steps=args.steps if args.steps is not None else rt.T_SEED,
        targets=args.targets if args.targets is not None else (16 if quick else rt.N_TARGETS),
        regime=args.regime, hold=args.hold, seed=args.seed,
        cg_iters=args.cg_iters if args.cg_iters is not None else 50,
        damping=args.damping, loss=args.loss, out_and_back=bool(args.out_and_back),
        delay=args.delay, torque_noise=float(args.torque_noise),
        random_targets=args.random_targets, init_scale=args.init_scale,
        alpha=args.alpha).validate()


_TRAINERS: dict[Settings, Trainer] = {}


def get_trainer(s: Settings) -> Trainer:
    """A `Trainer` for `s`, cached per settings so that repeated runs in one
    process (tests, notebooks, resume after Ctrl-C) compile once."""
    s = s.validate()
    if s not in _TRAINERS:
        _TRAINERS[s] = Trainer(s)
    return _TRAINERS[s]


def _summary(trainer: Trainer, params) -> dict:
    s = trainer.settings
    out = {}
    for name in ("train", "rotated", "inner"):
        ev = trainer.evaluate(params, name)
        err = np.asarray(ev["hand_error_mm"])
        row = {"mean_mm": float(err.mean()), "max_mm": float(err.max()),
               "median_mm": float(np.median(err)),
               "joint_speed_mean": float(np.mean(ev["joint_speed"])),
               "joint_speed_max": float(np.max(ev["joint_speed"])),
               "loss": float(ev["loss"]),
               "max_abs_torque": float(np.max(np.abs(ev["torque"])))}
        if s.out_and_back:
            row["out_mean_mm"] = float(np.mean(ev["out_error_mm"]))
            row["out_max_mm"] = float(np.max(ev["out_error_mm"]))
        out[name] = row
        out[name + "_eval"] = ev
    return out


def _plot(out_dir: str, trainer: Trainer, summary: dict, history: dict, title: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = trainer.settings
    paths = []
    fig, axes = plt.subplots(1, 3, figsize=(15, 5))
    for ax, name in zip(axes, ("train", "rotated", "inner")):
        ev, ts = summary[name + "_eval"], trainer.exp.targets[name]
        hand = np.asarray(ev["paths"])
        start = np.asarray(_arm.hand_position(rt.start_state()[:2]))
        for k in range(hand.shape[0]):
            xs = np.concatenate([[start[0]], hand[k, :, 0]])
            ys = np.concatenate([[start[1]], hand[k, :, 1]])
            ax.plot(xs, ys, lw=0.7, color=plt.cm.hsv(k / hand.shape[0]))
        theta = np.linspace(0, 2 * np.pi, 200)
        r = float(np.linalg.norm(np.asarray(ts.xy[0]) - np.asarray(rt.CENTRE)))
        ax.plot(rt.CENTRE[0] + r * np.cos(theta), rt.CENTRE[1] + r * np.sin(theta), "k:", lw=0.8)
        ax.scatter(np.asarray(ts.xy)[:, 0], np.asarray(ts.xy)[:, 1], s=10, c="k", zorder=3)
        row = summary[name]
        ax.set_title(f"{name}: mean {row['mean_mm']:.3g} mm, max {row['max_mm']:.3g} mm")
        ax.set_aspect("equal")
        ax.set_xlabel("x (m)")
        ax.set_ylabel("y (m)")
    paths.append(_save(fig, title, out_dir, "reaches.png"))

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    it = np.arange(1, len(history["loss"]) + 1)
    axes[0].semilogy(it, history["new_loss"], label="training loss after the step")
    if history["eval_iteration"]:
        axes[0].semilogy(history["eval_iteration"], history["eval_loss"], "o", ms=3,
                         label="closed-loop loss (evaluation)")
    axes[0].set_xlabel("HF iteration")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    ax2 = axes[0].twinx()
    ax2.semilogy(it, history["damping"], color="gray", lw=0.8, alpha=0.6)
    ax2.set_ylabel("damping (gray)")
    if history["eval_iteration"]:
        axes[1].semilogy(history["eval_seconds"], history["eval_mean_mm"], "o-", ms=3, label="mean")
        axes[1].semilogy(history["eval_seconds"], history["eval_max_mm"], "s-", ms=3, label="max")
        axes[1].axhline(0.1, color="k", ls=":", lw=0.8)
        axes[1].axhline(0.5, color="k", ls="--", lw=0.8)
    axes[1].set_xlabel("training seconds (compile excluded)")
    axes[1].set_ylabel("final hand error over the training targets (mm)")
    axes[1].legend()
    paths.append(_save(fig, title, out_dir, "learning_curve.png"))
    return paths


def _save(fig, title: str, out_dir: str, name: str) -> str:
    import matplotlib.pyplot as plt

    fig.suptitle(title)
    fig.tight_layout()
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(args: argparse.Namespace, out_dir: str) -> dict:
    """Trains (or resumes), evaluates, plots; returns the figures for results.json."""
    s = settings_from_args(args)
    iterations = args.iterations if args.iterations is not None else (40 if args.quick else 150)
    if iterations < 1:
        raise ValueError(f"--iterations must be >= 1, got {iterations}")
    if args.checkpoint_every < 1:
        raise ValueError(f"--checkpoint-every must be >= 1, got {args.checkpoint_every}")
    if args.eval_every < 0:
        raise ValueError(f"--eval-every must be >= 0, got {args.eval_every}")
    ckpt = os.path.join(out_dir, CHECKPOINT_NAME)
    trainer = get_trainer(s)
    state = trainer.initial_state()
    if args.resume:
        state = load_checkpoint(ckpt, s, state)
        print(f"resumed from {ckpt} at iteration {state.iteration}", file=sys.stderr)
    elif os.path.exists(ckpt):
        raise CheckpointError(f"{ckpt} exists: pass --resume to continue that run, or choose "
                              "another --out")
    if state.iteration > iterations:
        raise ValueError(f"--iterations {iterations} is below the checkpoint's iteration "
                         f"{state.iteration}")
    load = os.getloadavg()[0]
    compile_s = trainer.compile(state)
    print(f"compiled in {compile_s:.1f} s (load average {load:.1f})", file=sys.stderr)
    bar = _common.Progress(iterations - state.iteration, desc="reach HF")
    start_it = state.iteration
    latest = {"mm": float("nan")}

    def on_iteration(st: TrainState, stats) -> None:
        if st.history["eval_iteration"] and st.history["eval_iteration"][-1] == st.iteration:
            latest["mm"] = st.history["eval_mean_mm"][-1]
        bar.update(st.iteration - start_it, loss=float(stats.new_loss),
                   damping=float(stats.damping), cg=int(stats.cg_steps), mm=latest["mm"])
        if st.iteration % args.checkpoint_every == 0:
            save_checkpoint(ckpt, st, s)

    try:
        state = trainer.run(state, iterations, eval_every=args.eval_every,
                            on_iteration=on_iteration)
    except KeyboardInterrupt:
        bar.close()
        last = trainer.last
        save_checkpoint(ckpt, last, s)
        print(f"\ninterrupted: checkpoint of iteration {last.iteration} saved to {ckpt}; "
              f"continue with the same flags plus --resume --out {out_dir}", file=sys.stderr)
        raise SystemExit(130)
    bar.close()
    save_checkpoint(ckpt, state, s)

    summary = _summary(trainer, state.params)
    h = state.history
    train_s = h["seconds"][-1] if h["seconds"] else 0.0
    title = (f"jaxctl reach: {s.hidden} units, T = {s.steps}, {s.regime}, "
             f"{state.iteration} HF iterations, {train_s:.1f} s")
    plots = _plot(out_dir, trainer, summary, h, title)

    first_below = None
    for i, (mean, mx) in enumerate(zip(h["eval_mean_mm"], h["eval_max_mm"])):
        if mean < 0.1 and mx < 0.5:
            first_below = {"iteration": int(h["eval_iteration"][i]), "seconds": h["eval_seconds"][i]}
            break
    results = {
        "settings": s._asdict(),
        "iterations": state.iteration,
        "train_seconds": train_s,
        "compile_seconds": compile_s,
        "seconds_per_iteration": train_s / max(state.iteration, 1),
        "seconds_per_iteration_median": float(np.median(np.diff([0.0] + h["seconds"]))),
        "load_average_1min_start": load,
        "load_average_1min_end": os.getloadavg()[0],
        "loss_initial": h["loss"][0] if h["loss"] else None,
        "loss_final": h["new_loss"][-1] if h["new_loss"] else None,
        "first_below_0.1mm_mean_0.5mm_max": first_below,
        "history": h,
        "plots": plots,
        "checkpoint": ckpt,
    }
    for name in ("train", "rotated", "inner"):
        results[name] = summary[name]
    if s.torque_noise > 0:
        # also the noise-free closed loop of the noise-trained network
        quiet = get_trainer(s._replace(torque_noise=0.0))
        ev = quiet.evaluate(state.params)
        results["train_without_noise"] = {"mean_mm": float(np.mean(ev["hand_error_mm"])),
                                          "max_mm": float(np.max(ev["hand_error_mm"]))}

    rows = [[name, summary[name]["mean_mm"], summary[name]["max_mm"],
             summary[name]["joint_speed_mean"], summary[name]["loss"]]
            for name in ("train", "rotated", "inner")]
    print("\n" + title)
    print(_common.markdown_table(["targets", "mean hand error (mm)", "max (mm)",
                                  "mean final joint speed (rad/s)", "loss"], rows))
    print(f"\ntraining {train_s:.2f} s after {compile_s:.1f} s compile; "
          f"{results['seconds_per_iteration']:.3f} s/iteration; load average {load:.1f}")
    if s.out_and_back:
        print(f"out leg: mean {summary['train']['out_mean_mm']:.3g} mm, max "
              f"{summary['train']['out_max_mm']:.3g} mm at step {s.steps // 2}; back leg: "
              f"mean {summary['train']['mean_mm']:.3g} mm from the centre")
    return results
