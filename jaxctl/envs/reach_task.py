"""The centre-out reaching task of Sutskever's thesis, as pure JAX functions.

A controller (an MLP, or the layered recurrent network) drives the arm of
`jaxctl.envs.arm` in a closed loop

    input_t = [target_t, observed plant state]  ->  controller  ->  u_t
    x_{t+1} = step(x_t, u_t + noise_t)

for `T` steps from the start posture of DeWolf (2016);
`jaxctl.envs.closed_loop.rollout` runs that loop with `lax.scan`, and
`reach_loss` scores it:

    L = sum_t alpha ||u_t||^2 / 2 + sum_t w_t ||x*_t - x_{t+1}||^2 / 2

with `alpha = 10e-3 * dt` and `w_t` picking the steps where the state is
compared with the joint-space target `x* = [q*, 0, 0]` (the final step only,
every step, or the ends of both legs of an "out and back" reach).

Notation: `x` plant state `[q0, q1, dq0, dq1]` (n = 4 for the 2-link arm),
`u` torque (m = 2), `T` time steps; `states` has shape `(T + 1, n)` and
includes `x_0`; `torques` `(T, m)`. Functions act on one reach; `jax.vmap`
over targets.

Targets: 64 points on a circle of radius 0.075 m around (0, 0.35) m (the
hand's start position), `theta_k = 2 pi k / 64`, mapped to joint angles by
the closed-form inverse kinematics on the elbow branch of the start posture.
Held-out sets for generalisation: the same circle rotated by half a spacing,
and a circle of radius 0.05 m.

References:
  I. Sutskever (2013), "Training recurrent neural networks", PhD thesis,
  University of Toronto, ch. 6.
  J. Martens and I. Sutskever (2011), "Learning recurrent neural networks
  with Hessian-free optimization", ICML.
  T. DeWolf (2016), "Deep learning for control using augmented Hessian-free
  optimization", studywolf blog (loss, alpha, targets, 40 steps).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

import jaxctl.envs.arm as _arm
import jaxctl.envs.planar_arm as _planar
from jaxctl.util import checks

ALPHA = 10e-3 * _arm.DT
"""Gain on the torque penalty of DeWolf (2016), `10e-3 * dt` (= 1e-4 at dt = 0.01)."""

T_DEWOLF = 40
"""Time steps per reach in the code of DeWolf (2016) (the text mentions 100)."""

CENTRE = (0.0, 0.35)
RADIUS = 0.075
N_TARGETS = 64
CENTRE_3LINK = (0.0, 0.5)
RADIUS_3LINK = 0.2


def control_gain(dt: float = _arm.DT) -> float:
    """The torque-penalty gain of DeWolf (2016), `alpha = 10e-3 * dt`."""
    return 10e-3 * dt


def start_state(q0=_arm.Q0, dtype=None) -> jax.Array:
    """Start state `[q0, 0 velocity]`; default the posture of DeWolf (2016) (hand at (0, 0.35) m).

    Args:
      q0: joint angles, shape `(n_joints,)`.
      dtype: array dtype (default: jax's default float).

    Returns:
      Shape `(2 n_joints,)`.
    """
    q = jnp.asarray(q0, dtype=dtype if dtype is not None else jnp.result_type(float))
    if q.ndim != 1:
        raise ValueError(f"q0 must be a vector of joint angles, got shape {q.shape}")
    return jnp.concatenate([q, jnp.zeros_like(q)])


class TargetSet(NamedTuple):
    """Reaching targets: hand positions and joint-space target states.

    Fields:
      xy: hand targets (m), shape `(k, 2)`.
      state: joint-space target states `[q*, 0 velocity]`, shape `(k, 2 n_joints)`.
      angle: polar angle of each target around the circle centre, shape `(k,)`.
    """

    xy: jax.Array
    state: jax.Array
    angle: jax.Array


def circle_points(n: int = N_TARGETS, centre=CENTRE, radius: float = RADIUS,
                  phase: float = 0.0, dtype=None) -> tuple[jax.Array, jax.Array]:
    """`n` points evenly spaced on a circle: `centre + radius [cos, sin](phase + 2 pi k / n)`.

    Matches `linspace(0, 2 pi, n + 1)[:-1]` of DeWolf (2016) for `phase = 0`.

    Returns:
      `(xy, angle)` with shapes `(n, 2)` and `(n,)`.
    """
    n = checks.check_positive_int("n", n)
    dtype = dtype if dtype is not None else jnp.result_type(float)
    # Angles computed in Python float64 then cast, so float32 targets are
    # correctly rounded rather than accumulating a float32 product error.
    angles = [phase + 2.0 * math.pi * k / n for k in range(n)]
    xy = [(centre[0] + radius * math.cos(a), centre[1] + radius * math.sin(a)) for a in angles]
    return jnp.asarray(xy, dtype), jnp.asarray(angles, dtype)


def circle_targets(n: int = N_TARGETS, centre=CENTRE, radius: float = RADIUS,
                   phase: float = 0.0, *, params: _arm.ArmParams = _arm.ARM2,
                   elbow: int = 1, dtype=None) -> TargetSet:
    """Targets on a circle for the 2-link arm, joint angles from closed-form IK.

    Args:
      n: number of targets (DeWolf 2016: 64).
      centre: circle centre (m), DeWolf (2016): (0, 0.35).
      radius: circle radius (m), DeWolf (2016): 0.075.
      phase: rotation of the whole set (rad); `pi / n` gives the held-out
        set that sits half a spacing between the training targets.
      params: arm constants.
      elbow: IK branch; +1 is the branch of the start posture `Q0`.
      dtype: array dtype.

    Returns:
      A `TargetSet` with `k = n` targets.

    Example:
      >>> targets = circle_targets()
      >>> targets.state.shape
      (64, 4)
    """
    xy, angle = circle_points(n, centre, radius, phase, dtype)
    q = jax.vmap(lambda p: _arm.inverse_kinematics(p, params, elbow))(xy)
    return TargetSet(xy, jnp.concatenate([q, jnp.zeros_like(q)], axis=1), angle)


def standard_target_sets(n: int = N_TARGETS, *, params: _arm.ArmParams = _arm.ARM2,
                         dtype=None) -> dict[str, TargetSet]:
    """The training targets and the two held-out sets of the reaching task.

    Returns:
      `{"train": 64 targets, r = 0.075 m;
        "rotated": the same circle rotated by half a spacing (pi / 64);
        "inner": 64 targets on a circle of radius 0.05 m}`.
    """
    return {
        "train": circle_targets(n, CENTRE, RADIUS, params=params, dtype=dtype),
        "rotated": circle_targets(n, CENTRE, RADIUS, math.pi / n, params=params, dtype=dtype),
        "inner": circle_targets(n, CENTRE, 0.05, params=params, dtype=dtype),
    }


def planar_circle_targets(arm: _planar.PlanarArm, q_rest, n: int = N_TARGETS,
                          centre=CENTRE_3LINK, radius: float = RADIUS_3LINK,
                          phase: float = 0.0, weights=None, dtype=None) -> TargetSet:
    """Targets for an n-link arm (the 3-link task of DeWolf 2016: centre (0, 0.5), radius 0.2).

    Joint angles from `jaxctl.envs.planar_arm.planar_inverse_kinematics` (the posture
    nearest `q_rest` under the weights; DeWolf (2016) used (1, 1, 1.3)).

    Returns:
      A `TargetSet`; `state` has shape `(n, 2 n_links)`.
    """
    xy, angle = circle_points(n, centre, radius, phase, dtype)
    q_rest = jnp.asarray(q_rest, xy.dtype)
    w = None if weights is None else jnp.asarray(weights, xy.dtype)
    q = jax.vmap(lambda p: _planar.planar_inverse_kinematics(p, arm, q_rest, w))(xy)
    return TargetSet(xy, jnp.concatenate([q, jnp.zeros_like(q)], axis=1), angle)


def final_weights(T: int, dtype=None) -> jax.Array:
    """State-error weights of the loss of DeWolf (2016): the final state only, shape `(T,)`."""
    T = checks.check_positive_int("T", T)
    return jnp.zeros(T, dtype or jnp.result_type(float)).at[T - 1].set(1.0)


def every_step_weights(T: int, dtype=None) -> jax.Array:
    """State-error weights for the variant with the distance at every step, shape `(T,)`."""
    return jnp.ones(checks.check_positive_int("T", T), dtype or jnp.result_type(float))


def out_and_back(target_state: jax.Array, centre_state: jax.Array, T: int,
                 switch: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Target schedule and weights for "reach the target, then return to the centre".

    Steps `0 .. switch-1` aim at `target_state`, steps `switch .. T-1` at
    `centre_state`; the state error counts at the end of each leg
    (`x_switch` against the target, `x_T` against the centre). DeWolf's
    (2016) network, trained one way only, could not reach back: this
    variant trains both legs.

    Args:
      target_state: shape `(n,)`.
      centre_state: shape `(n,)` (usually `start_state()`).
      T: total steps (static).
      switch: first step of the return leg (static; default `T // 2`).

    Returns:
      `(schedule, weights)`, shapes `(T, n)` and `(T,)`, for `rollout` and
      `reach_loss`.
    """
    T = checks.check_int("T", T, low=2)
    switch = T // 2 if switch is None else checks.check_int("switch", switch)
    if not 1 <= switch < T:
        raise ValueError(f"switch must satisfy 1 <= switch < T = {T}, got {switch}")
    target_state = jnp.asarray(target_state)
    centre_state = jnp.asarray(centre_state, target_state.dtype)
    if target_state.ndim != 1 or centre_state.shape != target_state.shape:
        raise ValueError(f"target_state and centre_state must be vectors of one shape, got "
                         f"{target_state.shape} and {centre_state.shape}")
    out = (jnp.arange(T) < switch)[:, None]
    schedule = jnp.where(out, target_state, centre_state)
    weights = jnp.zeros(T, target_state.dtype).at[switch - 1].set(1.0).at[T - 1].set(1.0)
    return schedule, weights


def reach_loss(states: jax.Array, torques: jax.Array, target: jax.Array,
               weights: jax.Array, alpha: float = ALPHA) -> jax.Array:
    """The reaching loss of one trajectory.

        L = sum_t alpha ||u_t||^2 / 2 + sum_t w_t ||x*_t - x_{t+1}||^2 / 2

    The loss of DeWolf (2016) is `weights = final_weights(T)` (joint angles
    and zero velocity at the last step; his library marks the other steps
    with NaN targets); `every_step_weights(T)` is the variant with the
    distance at every step. That library averages over the batch of
    targets: take the mean of this over a vmap.

    Args:
      states: `x_0 .. x_T`, shape `(T + 1, n)`.
      torques: `u_0 .. u_{T-1}` (the controller outputs), shape `(T, m)`.
      target: `x*`, shape `(n,)` or a schedule `(T, n)`.
      weights: `w_t`, shape `(T,)`.
      alpha: torque-penalty gain (DeWolf 2016: `10e-3 * dt`).

    Returns:
      A scalar.
    """
    states = jnp.asarray(states)
    torques = jnp.asarray(torques)
    if states.ndim != 2 or torques.ndim != 2 or torques.shape[0] + 1 != states.shape[0]:
        raise ValueError(f"states must have shape (T + 1, n) and torques (T, m), got "
                         f"states {states.shape} and torques {torques.shape}")
    T, n = torques.shape[0], states.shape[1]
    target = jnp.asarray(target, states.dtype)
    if target.shape not in ((n,), (T, n)):
        raise ValueError(f"target must have shape ({n},) or ({T}, {n}), got {target.shape}")
    weights = jnp.asarray(weights, states.dtype)
    if weights.shape != (T,):
        raise ValueError(f"weights must have shape ({T},), got {weights.shape}")
    err = states[1:] - target
    state_cost = 0.5 * jnp.sum(weights * jnp.sum(err * err, axis=1))
    control_cost = 0.5 * alpha * jnp.sum(torques * torques)
    return state_cost + control_cost


class ReachMetrics(NamedTuple):
    """Evaluation of one reach.

    Fields:
      hand_error_mm: distance from the final hand position to the target (mm).
      joint_speed: norm of the final joint velocities (rad/s).
      joint_error: norm of the final joint-angle error (rad).
    """

    hand_error_mm: jax.Array
    joint_speed: jax.Array
    joint_error: jax.Array


def reach_metrics(final_state: jax.Array, target_xy: jax.Array, target_state: jax.Array,
                  params: _arm.ArmParams = _arm.ARM2) -> ReachMetrics:
    """Final hand error (mm), joint speed and joint error of a 2-link reach.

    Args:
      final_state: `x_T`, shape `(4,)`.
      target_xy: hand target (m), shape `(2,)`.
      target_state: joint-space target `[q*, 0, 0]`, shape `(4,)`.
      params: arm constants.

    Returns:
      A `ReachMetrics` of scalars (vmap over targets for per-target values).
    """
    final_state = _arm.check_vector(final_state, "final_state", 4, "= [q0, q1, dq0, dq1]")
    target_xy = _arm.check_vector(target_xy, "target_xy", 2, "= [x, y]")
    target_state = _arm.check_vector(target_state, "target_state", 4, "= [q0*, q1*, 0, 0]")
    hand = _arm.hand_position(final_state[:2], params)
    return ReachMetrics(
        hand_error_mm=1000.0 * jnp.linalg.norm(hand - target_xy),
        joint_speed=jnp.linalg.norm(final_state[2:]),
        joint_error=jnp.linalg.norm(final_state[:2] - target_state[:2]),
    )
