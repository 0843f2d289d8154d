"""The planar 2-link arm of the Hessian-free reaching task, as pure JAX functions.

Notation (fixed for the whole module):

- `q = [q0, q1]` joint angles (rad): `q0` shoulder, measured from the x axis;
  `q1` elbow, measured relative to the upper arm.
- `dq`, `ddq` joint velocities (rad/s) and accelerations (rad/s^2).
- `state = [q0, q1, dq0, dq1]`, shape `(4,)`; `torque = u = [u0, u1]` (N m),
  shape `(2,)`. Every function acts on ONE unbatched example: `jax.vmap` it.

The arm (Sutskever's thesis; DeWolf's "arm2" model in DeWolf 2016) is planar
with no gravity; both links are uniform rods pivoting at their proximal end:
`l1 = 0.31, l2 = 0.27` (m), `m1 = 1.98, m2 = 1.32` (kg). With

    K1 = (m1/3 + m2) l1^2 + m2 l2^2 / 3,   K2 = m2 l1 l2,
    K3 = m2 l2^2 / 3,                      K4 = m2 l1 l2 / 2,

the equations of motion are `M(q) ddq + H(q, dq) = u` with

    M = [[K1 + K2 cos q1, K3 + K4 cos q1],
         [K3 + K4 cos q1, K3           ]],
    H = [-K2 sin q1 (dq0 dq1 + dq1^2 / 2),  K2 sin q1 dq0^2 / 2].

One time step is semi-implicit (symplectic) Euler, as in DeWolf (2016):
`dq <- dq + dt ddq; q <- q + dt dq` (the NEW velocity moves the angles), then
the "training wheels" squashing of every state entry beyond +-2 pi (see
`squash`).

The n-link planar arm whose dynamics are derived by automatic
differentiation of its Lagrangian is in `jaxctl.envs.planar_arm`; for two
uniform rods it reproduces the closed-form equations above (tested).

This module imports only jax; the gymnax environment lives in
`jaxctl.envs.arm_env`.

References:
  I. Sutskever (2013), "Training recurrent neural networks", PhD thesis,
  University of Toronto, ch. 6 (the arm, the reaching task).
  J. Martens and I. Sutskever (2011), "Learning recurrent neural networks
  with Hessian-free optimization", ICML.
  T. DeWolf (2016), "Deep learning for control using augmented Hessian-free
  optimization", studywolf blog (constants, q0, squashing, dt).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxctl.util import checks

DT = 0.01
"""Integration step (s) of DeWolf (2016)."""

Q0 = (0.736134824578, 1.85227640003)
"""Initial joint angles (rad) of DeWolf (2016): the hand at the circle centre (0, 0.35) m."""

SQUASH_BOUND = 2.0 * math.pi


class ArmParams(NamedTuple):
    """Link lengths (m) and masses (kg) of the 2-link arm (DeWolf 2016's values).

    A NamedTuple of floats, so it is a pytree: it may be passed as a traced
    argument (e.g. to vmap over arm variants) or closed over as constants.
    Concrete values must be finite and > 0 (checked where they are used).
    """

    l1: float = 0.31
    l2: float = 0.27
    m1: float = 1.98
    m2: float = 1.32


ARM2 = ArmParams()


def check_arm_params(params: ArmParams) -> ArmParams:
    """Concrete link lengths and masses must be finite and > 0; traced ones pass."""
    if not isinstance(params, ArmParams):
        raise ValueError(f"params must be an ArmParams, got {type(params).__name__}")
    for name, value in params._asdict().items():
        checks.check_finite_positive(f"params.{name}", value)
    return params


def _constants(params: ArmParams):
    l1, l2, m1, m2 = check_arm_params(params)
    k1 = (m1 / 3.0 + m2) * l1**2 + m2 * l2**2 / 3.0
    k2 = m2 * l1 * l2
    k3 = m2 * l2**2 / 3.0
    k4 = m2 * l1 * l2 / 2.0
    return k1, k2, k3, k4


def check_vector(x: Any, name: str, n: int, what: str) -> jax.Array:
    """`x` as a float array of shape `(n,)`; a `ValueError` naming `name` otherwise."""
    x = checks.as_float(name, x)
    if x.shape != (n,):
        raise ValueError(
            f"{name} must have shape ({n},) {what} (one unbatched example; "
            f"use jax.vmap for batches), got shape {x.shape}")
    return x


def squash(x: jax.Array, bound: float = SQUASH_BOUND) -> jax.Array:
    """The "training wheels" of DeWolf (2016): identity inside +-bound, tanh-saturated outside.

        s(x) = x                        if |x| <= bound
               tanh(x - bound) + bound  if x > bound
               tanh(x + bound) - bound  if x < -bound

    `s` is continuous with a continuous first derivative (both branches have
    slope 1 at the boundary), monotone, and bounded by `bound + 1`, so a wild
    parameter update during training cannot send the simulated arm to
    infinity; targets lie well inside the bound, where `s` does nothing.

    Args:
      x: any array (elementwise).
      bound: the half-width of the identity region (default 2 pi).

    Returns:
      `s(x)`, same shape and dtype as `x`.

    Example:
      >>> [round(float(v), 4) for v in squash(jnp.array([1.0, 100.0]))]
      [1.0, 7.2832]
    """
    x = jnp.asarray(x)
    # Both branches are finite for every finite x, so `where` leaks no NaN
    # into the gradient of the branch that is not taken.
    above = jnp.tanh(x - bound) + bound
    below = jnp.tanh(x + bound) - bound
    return jnp.where(x > bound, above, jnp.where(x < -bound, below, x))


def mass_matrix(q: jax.Array, params: ArmParams = ARM2) -> jax.Array:
    """Joint-space inertia matrix `M(q)` of the 2-link arm.

        M(q) = [[K1 + K2 cos q1, K3 + K4 cos q1],
                [K3 + K4 cos q1, K3           ]]

    It is symmetric positive definite for every q: its determinant is
    `K3 (K1 - K3) - K4^2 cos^2 q1 >= m2 l1^2 l2^2 (m1/9 + m2/12) > 0`.

    Args:
      q: joint angles `[q0, q1]`, shape `(2,)`.
      params: link lengths and masses.

    Returns:
      `M`, shape `(2, 2)`.

    Example:
      >>> mass_matrix(jnp.array(Q0)).shape
      (2, 2)
    """
    q = check_vector(q, "q", 2, "= [q0, q1]")
    k1, k2, k3, k4 = _constants(params)
    c = jnp.cos(q[1])
    m11 = k1 + k2 * c
    m12 = k3 + k4 * c
    m22 = jnp.full_like(c, k3)
    return jnp.stack([jnp.stack([m11, m12]), jnp.stack([m12, m22])])


def bias_forces(q: jax.Array, dq: jax.Array, params: ArmParams = ARM2) -> jax.Array:
    """Coriolis and centrifugal terms `H(q, dq)` of `M ddq + H = u`.

        H0 = -K2 sin q1 (dq0 dq1 + dq1^2 / 2),   H1 = K2 sin q1 dq0^2 / 2

    (`H = dM/dt dq - d/dq (dq^T M dq / 2)`: the Lagrangian's velocity terms.)

    Args:
      q: joint angles, shape `(2,)`.
      dq: joint velocities, shape `(2,)`.
      params: link lengths and masses.

    Returns:
      `H`, shape `(2,)`.
    """
    q = check_vector(q, "q", 2, "= [q0, q1]")
    dq = check_vector(dq, "dq", 2, "= [dq0, dq1]")
    _, k2, _, _ = _constants(params)
    s = jnp.sin(q[1])
    h0 = -k2 * s * (dq[0] * dq[1] + 0.5 * dq[1] ** 2)
    h1 = 0.5 * k2 * s * dq[0] ** 2
    return jnp.stack([h0, h1])


def accelerations(state: jax.Array, torque: jax.Array,
                  params: ArmParams = ARM2) -> jax.Array:
    """Joint accelerations `ddq = M(q)^-1 (u - H(q, dq))` (continuous time).

    Solved with the closed-form 2x2 inverse (Cramer's rule). DeWolf's (2016) code
    solves the same equations in another order, dividing by
    `M12 = K3 + K4 cos q1`, which vanishes at `q1 = +-2.19 rad` although the
    accelerations stay finite there; Cramer's rule divides only by
    `det M = K3 (K1 - K3) - K4^2 cos^2 q1`, written in this factored form
    because it is bounded away from zero and suffers no cancellation in
    float32 (the naive `M11 M22 - M12^2` subtracts two numbers of similar
    size).

    Args:
      state: `[q0, q1, dq0, dq1]`, shape `(4,)`.
      torque: `[u0, u1]`, shape `(2,)`.
      params: link lengths and masses.

    Returns:
      `ddq`, shape `(2,)`.
    """
    state = check_vector(state, "state", 4, "= [q0, q1, dq0, dq1]")
    torque = check_vector(torque, "torque", 2, "= [u0, u1]")
    q, dq = state[:2], state[2:]
    k1, k2, k3, k4 = _constants(params)
    c = jnp.cos(q[1])
    m11 = k1 + k2 * c
    m12 = k3 + k4 * c
    m22 = k3
    det = k3 * (k1 - k3) - (k4 * c) ** 2
    f = torque - bias_forces(q, dq, params)
    ddq0 = (m22 * f[0] - m12 * f[1]) / det
    ddq1 = (m11 * f[1] - m12 * f[0]) / det
    return jnp.stack([ddq0, ddq1])


def step(state: jax.Array, torque: jax.Array, dt: float = DT, *,
         params: ArmParams = ARM2, squash_state: bool = True) -> jax.Array:
    """One semi-implicit Euler step of the 2-link arm: `(state, torque) -> state`.

        ddq   = M(q)^-1 (u - H(q, dq))
        dq'   = dq + dt ddq
        q'    = q + dt dq'
        state' = squash([q', dq'])   (identity while |entries| <= 2 pi)

    Pure and differentiable: the plant of the closed loop
    "network -> torque -> arm step -> state -> network".

    Args:
      state: `[q0, q1, dq0, dq1]`, shape `(4,)`.
      torque: `[u0, u1]` (N m), shape `(2,)`.
      dt: time step (s), finite and > 0; DeWolf (2016) uses 0.01.
      params: link lengths and masses.
      squash_state: apply the squashing of DeWolf (2016) (static Python bool).

    Returns:
      The next state, shape `(4,)`.

    Raises:
      ValueError: if `state` or `torque` has the wrong shape (at trace time),
        or a concrete `dt` or link constant is not finite and > 0.

    Example:
      >>> s0 = jnp.array([*Q0, 0.0, 0.0])
      >>> step(s0, jnp.array([0.1, -0.1])).shape
      (4,)
    """
    state = check_vector(state, "state", 4, "= [q0, q1, dq0, dq1]")
    torque = check_vector(torque, "torque", 2, "= [u0, u1]")
    checks.check_finite_positive("dt", dt)
    ddq = accelerations(state, torque, params)
    dq = state[2:] + dt * ddq
    q = state[:2] + dt * dq
    new = jnp.concatenate([q, dq])
    return squash(new) if squash_state else new


def kinetic_energy(state: jax.Array, params: ArmParams = ARM2) -> jax.Array:
    """Kinetic energy `E = dq^T M(q) dq / 2` (J), the arm's only energy (no gravity).

    Along the continuous dynamics `dE/dt = u . dq` (the power of the
    torques); with `u = 0` it is conserved.

    Args:
      state: `[q0, q1, dq0, dq1]`, shape `(4,)`.
      params: link lengths and masses.

    Returns:
      A scalar.
    """
    state = check_vector(state, "state", 4, "= [q0, q1, dq0, dq1]")
    dq = state[2:]
    return 0.5 * dq @ (mass_matrix(state[:2], params) @ dq)


def joint_positions(q: jax.Array, params: ArmParams = ARM2) -> jax.Array:
    """Shoulder, elbow and hand positions (m), shape `(3, 2)` (for plots).

    Args:
      q: joint angles, shape `(2,)`.
      params: link lengths and masses.
    """
    q = check_vector(q, "q", 2, "= [q0, q1]")
    a0, a01 = q[0], q[0] + q[1]
    elbow = params.l1 * jnp.stack([jnp.cos(a0), jnp.sin(a0)])
    hand = elbow + params.l2 * jnp.stack([jnp.cos(a01), jnp.sin(a01)])
    return jnp.stack([jnp.zeros_like(elbow), elbow, hand])


def hand_position(q: jax.Array, params: ArmParams = ARM2) -> jax.Array:
    """Forward kinematics: the hand's (x, y) position (m).

        x = l1 cos q0 + l2 cos(q0 + q1),   y = l1 sin q0 + l2 sin(q0 + q1)

    Args:
      q: joint angles `[q0, q1]`, shape `(2,)`.
      params: link lengths and masses.

    Returns:
      `[x, y]`, shape `(2,)`.

    Example:
      >>> [round(float(v), 6) + 0.0 for v in hand_position(jnp.array(Q0))]
      [0.0, 0.35]
    """
    return joint_positions(q, params)[2]


def inverse_kinematics(xy: jax.Array, params: ArmParams = ARM2,
                       elbow: int = 1) -> jax.Array:
    """Closed-form inverse kinematics of the 2-link arm.

        cos q1 = (x^2 + y^2 - l1^2 - l2^2) / (2 l1 l2)
        q1     = elbow * atan2(sqrt(1 - cos^2 q1), cos q1)
        q0     = atan2(y, x) - atan2(l2 sin q1, l1 + l2 cos q1)

    `elbow = +1` (q1 > 0) is the branch of DeWolf's (2016) initial posture
    `Q0 = [0.736, 1.852]`; `elbow = -1` is the mirror-image solution.

    Out of reach (`|cos q1| > 1`), `cos q1` is clipped to +-1: the arm is then
    fully stretched (or folded) and points at the target, which puts the
    hand at the reachable point nearest to it. The square root is guarded
    so that the gradient there is finite (zero through the clipped part)
    instead of infinite.

    Args:
      xy: hand target `[x, y]` (m), shape `(2,)`.
      params: link lengths and masses.
      elbow: +1 or -1 (static), the elbow branch.

    Returns:
      Joint angles `[q0, q1]`, shape `(2,)`, with `q1` in `[-pi, pi]`.

    Example:
      >>> [round(float(v), 5) for v in inverse_kinematics(jnp.array([0.0, 0.35]))]
      [0.73613, 1.85228]
    """
    xy = check_vector(xy, "xy", 2, "= [x, y]")
    if elbow not in (1, -1):
        raise ValueError(f"elbow must be +1 or -1, got {elbow!r}")
    l1, l2 = check_arm_params(params).l1, params.l2
    x, y = xy[0], xy[1]
    c = jnp.clip((x * x + y * y - l1 * l1 - l2 * l2) / (2.0 * l1 * l2), -1.0, 1.0)
    one_minus = 1.0 - c * c
    # Double-where: sqrt'(0) is infinite, so feed sqrt a safe value where its
    # argument is 0 and select 0 afterwards; keeps gradients finite.
    positive = one_minus > 0
    s = elbow * jnp.where(positive, jnp.sqrt(jnp.where(positive, one_minus, 1.0)), 0.0)
    q1 = jnp.arctan2(s, c)
    q0 = jnp.arctan2(y, x) - jnp.arctan2(l2 * s, l1 + l2 * c)
    return jnp.stack([q0, q1])
