"""The centre-out reaching task of Sutskever's thesis, as pure JAX functions.

A controller (an MLP now, the layered recurrent network later) drives the arm
of `jaxctl.envs.arm` in a closed loop

    input_t = [target_t, observed plant state]  ->  controller  ->  u_t
    x_{t+1} = step(x_t, u_t + noise_t)

for `T` steps from the seed's start posture; `rollout` runs that loop with
`lax.scan`, and `reach_loss` scores it:

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
  optimization" (the seed: loss, alpha, targets, 40 steps).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

import jaxctl.envs.arm as _arm

ALPHA = 10e-3 * _arm.DT
"""Seed's gain on the torque penalty, `10e-3 * dt` (= 1e-4 at dt = 0.01)."""

T_SEED = 40
"""Time steps per reach in the seed's code (the text mentions 100)."""

CENTRE = (0.0, 0.35)
RADIUS = 0.075
N_TARGETS = 64
CENTRE_3LINK = (0.0, 0.5)
RADIUS_3LINK = 0.2


def control_gain(dt: float = _arm.DT) -> float:
    """The seed's torque-penalty gain `alpha = 10e-3 * dt`."""
    return 10e-3 * dt


def start_state(q0=_arm.Q0, dtype=None) -> jax.Array:
    """Start state `[q0, 0 velocity]`; default the seed's posture (hand at (0, 0.35) m).

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

    Matches the seed's `linspace(0, 2 pi, n + 1)[:-1]` for `phase = 0`.

    Returns:
      `(xy, angle)` with shapes `(n, 2)` and `(n,)`.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    dtype = dtype if dtype is not None else jnp.result_type(float)
    # Angles computed in Python float64 then cast, so float32 targets are
    # correctly rounded rather than accumulating a float32 product error.
    angles = [phase + 2.0 * math.pi * k / n for k in range(int(n))]
    xy = [(centre[0] + radius * math.cos(a), centre[1] + radius * math.sin(a)) for a in angles]
    return jnp.asarray(xy, dtype), jnp.asarray(angles, dtype)


def circle_targets(n: int = N_TARGETS, centre=CENTRE, radius: float = RADIUS,
                   phase: float = 0.0, *, params: _arm.ArmParams = _arm.ARM2,
                   elbow: int = 1, dtype=None) -> TargetSet:
    """Targets on a circle for the 2-link arm, joint angles from closed-form IK.

    Args:
      n: number of targets (seed: 64).
      centre: circle centre (m), seed (0, 0.35).
      radius: circle radius (m), seed 0.075.
      phase: rotation of the whole set (rad); `pi / n` gives the held-out
        set that sits half a spacing between the training targets.
      params: arm constants.
      elbow: IK branch; +1 is the seed's start posture's branch.
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


def planar_circle_targets(arm: _arm.PlanarArm, q_rest, n: int = N_TARGETS,
                          centre=CENTRE_3LINK, radius: float = RADIUS_3LINK,
                          phase: float = 0.0, weights=None, dtype=None) -> TargetSet:
    """Targets for an n-link arm (seed's 3-link task: centre (0, 0.5), radius 0.2).

    Joint angles from `jaxctl.envs.arm.planar_inverse_kinematics` (the posture
    nearest `q_rest` under the weights; the seed used (1, 1, 1.3)).

    Returns:
      A `TargetSet`; `state` has shape `(n, 2 n_links)`.
    """
    xy, angle = circle_points(n, centre, radius, phase, dtype)
    q_rest = jnp.asarray(q_rest, xy.dtype)
    w = None if weights is None else jnp.asarray(weights, xy.dtype)
    q = jax.vmap(lambda p: _arm.planar_inverse_kinematics(p, arm, q_rest, w))(xy)
    return TargetSet(xy, jnp.concatenate([q, jnp.zeros_like(q)], axis=1), angle)


def network_input(target_state: jax.Array, plant_state: jax.Array) -> jax.Array:
    """The controller's input at one step: `[target state, plant state]`.

    Args:
      target_state: `[q*, 0 velocity]`, shape `(n,)`.
      plant_state: current (possibly delayed) plant state, shape `(n,)`.

    Returns:
      Shape `(2n,)` (8 for the 2-link arm).
    """
    target_state = jnp.asarray(target_state)
    plant_state = jnp.asarray(plant_state)
    if target_state.ndim != 1 or target_state.shape != plant_state.shape:
        raise ValueError(
            "target_state and plant_state must be vectors of the same shape (n,), got "
            f"target_state {target_state.shape} and plant_state {plant_state.shape}")
    return jnp.concatenate([target_state, plant_state])


class Rollout(NamedTuple):
    """One closed-loop reach; every field is what the returned torques produced.

    Fields:
      states: plant states `x_0 .. x_T`, shape `(T + 1, n)`.
      torques: controller outputs `u_0 .. u_{T-1}`, shape `(T, m)` (the loss
        penalises these).
      applied_torques: torques the plant received (`torques` + noise),
        shape `(T, m)`; equal to `torques` without noise.
      inputs: the controller's inputs, shape `(T, d)` (after the feedback
        delay; what the seed's "hold the inputs fixed" regime records).
      controller_state: the controller's state after the last step.
    """

    states: jax.Array
    torques: jax.Array
    applied_torques: jax.Array
    inputs: jax.Array
    controller_state: Any


def rollout(controller: Callable[[Any, jax.Array], tuple[Any, jax.Array]],
            controller_state: Any, plant_state0: jax.Array, target: jax.Array, T: int, *,
            step_fn: Callable[[jax.Array, jax.Array], jax.Array] = _arm.step,
            observe: Callable[[jax.Array, jax.Array], jax.Array] = network_input,
            delay: int = 0, noise_std: float | jax.Array = 0.0,
            key: jax.Array | None = None) -> Rollout:
    """Closed-loop rollout `controller -> torque -> plant step -> state -> controller`.

    For t = 0 .. T-1 (one `lax.scan`):

        input_t          = observe(target_t, x_{max(t - delay, 0)})
        (c_{t+1}, u_t)   = controller(c_t, input_t)
        x_{t+1}          = step_fn(x_t, u_t + noise_std * eps_t),  eps_t ~ N(0, I)

    Everything is differentiable: gradients flow through the plant, the fed-
    back state and the controller (unlike the seed's library, which treats
    the fed-back state as a constant input). Put parameters in a closure
    (`lambda c, x: (c, mlp_apply(params, x))`) or in `controller_state`.

    Args:
      controller: `(state, input) -> (new_state, torque)`, any pure
        differentiable function; `torque` a vector of shape `(m,)`.
      controller_state: initial controller state (any pytree; `None` or `()`
        for a feedforward controller, hidden activations for an RNN).
      plant_state0: `x_0`, shape `(n,)`.
      target: target state, shape `(n,)` (held for all steps) or `(T, n)`
        (a schedule, e.g. `out_and_back`).
      T: number of steps (static).
      step_fn: the plant, `(x, u) -> x'` (default `jaxctl.envs.arm.step`, dt 0.01);
        wrap `functools.partial(jaxctl.envs.arm.planar_step, arm=...)` for n links.
      observe: builds the controller input from `(target_t, observed state)`.
      delay: feedback delay in steps (static int >= 0); before `delay` steps
        have passed the controller sees `x_0`.
      noise_std: standard deviation of additive Gaussian torque noise.
      key: PRNG key for the noise; required iff `noise_std` is nonzero.

    Returns:
      A `Rollout`.

    Raises:
      ValueError: bad `T`, `delay`, shapes, or noise without a key.

    Example:
      >>> params = mlp_init(jax.random.PRNGKey(0), (8, 32, 2))
      >>> ctrl = lambda c, x: (c, mlp_apply(params, x))
      >>> targets = circle_targets()
      >>> out = jax.vmap(lambda tgt: rollout(ctrl, (), start_state(), tgt, 40))(targets.state)
      >>> out.states.shape
      (64, 41, 4)
    """
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be a positive Python int (static), got {T!r}")
    if not isinstance(delay, int) or delay < 0:
        raise ValueError(f"delay must be a Python int >= 0 (static), got {delay!r}")
    x0 = jnp.asarray(plant_state0)
    if x0.ndim != 1:
        raise ValueError(f"plant_state0 must have shape (n,) (one unbatched state), got {x0.shape}")
    target = jnp.asarray(target, x0.dtype)
    if target.shape == x0.shape:
        targets = jnp.broadcast_to(target, (T,) + x0.shape)
    elif target.shape == (T,) + x0.shape:
        targets = target
    else:
        raise ValueError(f"target must have shape {x0.shape} or {(T,) + x0.shape}, got {target.shape}")

    input0 = observe(targets[0], x0)
    _, u_shape = jax.eval_shape(controller, controller_state, input0)
    if len(u_shape.shape) != 1:
        raise ValueError(f"controller must return (new_state, torque) with torque of shape (m,), "
                         f"got torque shape {u_shape.shape}")
    m = u_shape.shape[0]

    static_zero = isinstance(noise_std, (int, float)) and noise_std == 0
    if key is None:
        if not static_zero:
            raise ValueError("noise_std is nonzero but no key was given: pass key=jax.random.PRNGKey(...)")
        noise = jnp.zeros((T, m), x0.dtype)
    else:
        noise = noise_std * jax.random.normal(key, (T, m), x0.dtype)

    # The delay line holds the last `delay` states, oldest first; starting it
    # full of x_0 makes the controller see x_0 until real history exists.
    buffer0 = jnp.broadcast_to(x0, (delay,) + x0.shape)

    def body(carry, xs):
        x, c, buf = carry
        target_t, noise_t = xs
        if delay:
            seen = buf[0]
            buf = jnp.concatenate([buf[1:], x[None]], axis=0)
        else:
            seen = x
        inp = observe(target_t, seen)
        c, u = controller(c, inp)
        applied = u + noise_t
        x_next = step_fn(x, applied)
        return (x_next, c, buf), (x_next, u, applied, inp)

    (_, c_final, _), (xs, us, applied, inputs) = jax.lax.scan(
        body, (x0, controller_state, buffer0), (targets, noise))
    states = jnp.concatenate([x0[None], xs], axis=0)
    return Rollout(states, us, applied, inputs, c_final)


def final_weights(T: int, dtype=None) -> jax.Array:
    """State-error weights for the seed's loss: the final state only, shape `(T,)`."""
    return jnp.zeros(T, dtype or jnp.result_type(float)).at[T - 1].set(1.0)


def every_step_weights(T: int, dtype=None) -> jax.Array:
    """State-error weights for the variant with the distance at every step, shape `(T,)`."""
    return jnp.ones(T, dtype or jnp.result_type(float))


def out_and_back(target_state: jax.Array, centre_state: jax.Array, T: int,
                 switch: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Target schedule and weights for "reach the target, then return to the centre".

    Steps `0 .. switch-1` aim at `target_state`, steps `switch .. T-1` at
    `centre_state`; the state error counts at the end of each leg
    (`x_switch` against the target, `x_T` against the centre). The seed's
    network, trained one way only, could not reach back: this variant
    trains both legs.

    Args:
      target_state: shape `(n,)`.
      centre_state: shape `(n,)` (usually `start_state()`).
      T: total steps (static).
      switch: first step of the return leg (static; default `T // 2`).

    Returns:
      `(schedule, weights)`, shapes `(T, n)` and `(T,)`, for `rollout` and
      `reach_loss`.
    """
    switch = T // 2 if switch is None else switch
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

    The seed's loss is `weights = final_weights(T)` (joint angles and zero
    velocity at the last step; its library marks the other steps with NaN
    targets); `every_step_weights(T)` is the variant with the distance at
    every step. The seed's library averages over the batch of targets: take
    the mean of this over a vmap.

    Args:
      states: `x_0 .. x_T`, shape `(T + 1, n)`.
      torques: `u_0 .. u_{T-1}` (the controller outputs), shape `(T, m)`.
      target: `x*`, shape `(n,)` or a schedule `(T, n)`.
      weights: `w_t`, shape `(T,)`.
      alpha: torque-penalty gain (seed: `10e-3 * dt`).

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
    final_state = _arm._check_vector(final_state, "final_state", 4, "= [q0, q1, dq0, dq1]")
    target_xy = _arm._check_vector(target_xy, "target_xy", 2, "= [x, y]")
    target_state = _arm._check_vector(target_state, "target_state", 4, "= [q0*, q1*, 0, 0]")
    hand = _arm.hand_position(final_state[:2], params)
    return ReachMetrics(
        hand_error_mm=1000.0 * jnp.linalg.norm(hand - target_xy),
        joint_speed=jnp.linalg.norm(final_state[2:]),
        joint_error=jnp.linalg.norm(final_state[:2] - target_state[:2]),
    )
