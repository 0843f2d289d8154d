"""The planar 2-link arm of the Hessian-free reaching task, as pure JAX functions.

Notation (fixed for the whole module):

- `q = [q0, q1]` joint angles (rad): `q0` shoulder, measured from the x axis;
  `q1` elbow, measured relative to the upper arm.
- `dq`, `ddq` joint velocities (rad/s) and accelerations (rad/s^2).
- `state = [q0, q1, dq0, dq1]`, shape `(4,)`; `torque = u = [u0, u1]` (N m),
  shape `(2,)`. Every function acts on ONE unbatched example: `jax.vmap` it.

The arm (Sutskever's thesis; DeWolf's "arm2" model used by the seed) is planar
with no gravity; both links are uniform rods pivoting at their proximal end:
`l1 = 0.31, l2 = 0.27` (m), `m1 = 1.98, m2 = 1.32` (kg). With

    K1 = (m1/3 + m2) l1^2 + m2 l2^2 / 3,   K2 = m2 l1 l2,
    K3 = m2 l2^2 / 3,                      K4 = m2 l1 l2 / 2,

the equations of motion are `M(q) ddq + H(q, dq) = u` with

    M = [[K1 + K2 cos q1, K3 + K4 cos q1],
         [K3 + K4 cos q1, K3           ]],
    H = [-K2 sin q1 (dq0 dq1 + dq1^2 / 2),  K2 sin q1 dq0^2 / 2].

One time step is semi-implicit (symplectic) Euler, as in the seed:
`dq <- dq + dt ddq; q <- q + dt dq` (the NEW velocity moves the angles), then
the "training wheels" squashing of every state entry beyond +-2 pi (see
`squash`).

The module also has an n-link planar arm whose dynamics are derived by
automatic differentiation of its Lagrangian (`planar_*` functions); for two
uniform rods it reproduces the closed-form equations above (tested).

This module imports only jax; the gymnax environment lives in
`jaxctl.envs.arm_env`.

References:
  I. Sutskever (2013), "Training recurrent neural networks", PhD thesis,
  University of Toronto, ch. 6 (the arm, the reaching task).
  J. Martens and I. Sutskever (2011), "Learning recurrent neural networks
  with Hessian-free optimization", ICML.
  T. DeWolf (2016), "Deep learning for control using augmented Hessian-free
  optimization", studywolf blog (the seed: constants, q0, squashing).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

DT = 0.01
"""Seed's integration step (s)."""

Q0 = (0.736134824578, 1.85227640003)
"""Seed's initial joint angles (rad): the hand at the circle centre (0, 0.35) m."""

SQUASH_BOUND = 2.0 * math.pi


class ArmParams(NamedTuple):
    """Link lengths (m) and masses (kg) of the 2-link arm (seed's values).

    A NamedTuple of floats, so it is a pytree: it may be passed as a traced
    argument (e.g. to vmap over arm variants) or closed over as constants.
    """

    l1: float = 0.31
    l2: float = 0.27
    m1: float = 1.98
    m2: float = 1.32


ARM2 = ArmParams()


def _constants(params: ArmParams):
    l1, l2, m1, m2 = params
    k1 = (m1 / 3.0 + m2) * l1**2 + m2 * l2**2 / 3.0
    k2 = m2 * l1 * l2
    k3 = m2 * l2**2 / 3.0
    k4 = m2 * l1 * l2 / 2.0
    return k1, k2, k3, k4


def _check_vector(x, name: str, n: int, what: str) -> jax.Array:
    x = jnp.asarray(x)
    if x.shape != (n,):
        raise ValueError(
            f"{name} must have shape ({n},) {what} (one unbatched example; "
            f"use jax.vmap for batches), got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


def squash(x: jax.Array, bound: float = SQUASH_BOUND) -> jax.Array:
    """The seed's "training wheels": identity inside +-bound, tanh-saturated outside.

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
      >>> squash(jnp.array([1.0, 100.0]))  # doctest: +SKIP
      Array([1.      , 7.283185], dtype=float32)
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
    q = _check_vector(q, "q", 2, "= [q0, q1]")
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
    q = _check_vector(q, "q", 2, "= [q0, q1]")
    dq = _check_vector(dq, "dq", 2, "= [dq0, dq1]")
    _, k2, _, _ = _constants(params)
    s = jnp.sin(q[1])
    h0 = -k2 * s * (dq[0] * dq[1] + 0.5 * dq[1] ** 2)
    h1 = 0.5 * k2 * s * dq[0] ** 2
    return jnp.stack([h0, h1])


def accelerations(state: jax.Array, torque: jax.Array,
                  params: ArmParams = ARM2) -> jax.Array:
    """Joint accelerations `ddq = M(q)^-1 (u - H(q, dq))` (continuous time).

    Solved with the closed-form 2x2 inverse (Cramer's rule). The seed's code
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
    state = _check_vector(state, "state", 4, "= [q0, q1, dq0, dq1]")
    torque = _check_vector(torque, "torque", 2, "= [u0, u1]")
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
      dt: time step (s), seed 0.01.
      params: link lengths and masses.
      squash_state: apply the seed's squashing (static Python bool).

    Returns:
      The next state, shape `(4,)`.

    Raises:
      ValueError: if `state` or `torque` has the wrong shape (at trace time).

    Example:
      >>> s0 = jnp.array([*Q0, 0.0, 0.0])
      >>> step(s0, jnp.array([0.1, -0.1])).shape
      (4,)
    """
    state = _check_vector(state, "state", 4, "= [q0, q1, dq0, dq1]")
    torque = _check_vector(torque, "torque", 2, "= [u0, u1]")
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
    state = _check_vector(state, "state", 4, "= [q0, q1, dq0, dq1]")
    dq = state[2:]
    return 0.5 * dq @ (mass_matrix(state[:2], params) @ dq)


def joint_positions(q: jax.Array, params: ArmParams = ARM2) -> jax.Array:
    """Shoulder, elbow and hand positions (m), shape `(3, 2)` (for plots).

    Args:
      q: joint angles, shape `(2,)`.
      params: link lengths and masses.
    """
    q = _check_vector(q, "q", 2, "= [q0, q1]")
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
      >>> hand_position(jnp.array(Q0))  # doctest: +SKIP
      Array([-1.9e-08,  3.5e-01], dtype=float32)
    """
    return joint_positions(q, params)[2]


def inverse_kinematics(xy: jax.Array, params: ArmParams = ARM2,
                       elbow: int = 1) -> jax.Array:
    """Closed-form inverse kinematics of the 2-link arm.

        cos q1 = (x^2 + y^2 - l1^2 - l2^2) / (2 l1 l2)
        q1     = elbow * atan2(sqrt(1 - cos^2 q1), cos q1)
        q0     = atan2(y, x) - atan2(l2 sin q1, l1 + l2 cos q1)

    `elbow = +1` (q1 > 0) is the branch of the seed's initial posture
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
      >>> inverse_kinematics(jnp.array([0.0, 0.35]))  # doctest: +SKIP
      Array([0.7361348, 1.8522764], dtype=float32)
    """
    xy = _check_vector(xy, "xy", 2, "= [x, y]")
    if elbow not in (1, -1):
        raise ValueError(f"elbow must be +1 or -1, got {elbow!r}")
    l1, l2 = params.l1, params.l2
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


# ---------------------------------------------------------------------------
# n-link planar arm with dynamics derived from its Lagrangian by autodiff.
# ---------------------------------------------------------------------------


class PlanarArm(NamedTuple):
    """An n-link planar arm (no gravity): per-link length, mass, inertia.

    Link i is a rigid body of mass `masses[i]` whose centre of mass lies at
    `com[i] * lengths[i]` along the link and whose moment of inertia about
    that centre of mass is `inertias[i]`. Use `PlanarArm.rods` for uniform
    rods (centre at the middle, inertia `m l^2 / 12`), the seed's 2-link arm.
    """

    lengths: tuple
    masses: tuple
    inertias: tuple
    com: tuple

    @classmethod
    def rods(cls, lengths: Sequence[float], masses: Sequence[float]) -> "PlanarArm":
        """Uniform rods: centre of mass mid-link, inertia m l^2 / 12."""
        lengths = tuple(float(v) for v in lengths)
        masses = tuple(float(v) for v in masses)
        if len(lengths) != len(masses) or not lengths:
            raise ValueError(f"lengths and masses must be non-empty and of equal length, "
                             f"got {len(lengths)} and {len(masses)}")
        inertias = tuple(m * l * l / 12.0 for l, m in zip(lengths, masses))
        return cls(lengths, masses, inertias, (0.5,) * len(lengths))

    @property
    def n_links(self) -> int:
        return len(self.lengths)


ARM2_PLANAR = PlanarArm.rods((ARM2.l1, ARM2.l2), (ARM2.m1, ARM2.m2))
"""The seed's 2-link arm as a `PlanarArm` (uniform rods)."""

ARM3_PLANAR = PlanarArm(lengths=(2.0, 1.2, 0.7), masses=(10.0, 10.0, 10.0),
                        inertias=(100.0, 100.0, 100.0), com=(0.5, 0.5, 0.5))
"""Link constants of the seed's 3-link arm (DeWolf's MapleSim model: lengths,
masses, inertias about the centre of mass); the dynamics here are our own
Lagrangian ones, not the MapleSim simulation."""


def _check_planar_state(state, arm: PlanarArm) -> jax.Array:
    n = arm.n_links
    names = ", ".join([f"q{i}" for i in range(n)] + [f"dq{i}" for i in range(n)])
    return _check_vector(state, "state", 2 * n, f"= [{names}]")


def planar_points(q: jax.Array, arm: PlanarArm) -> jax.Array:
    """Positions of the joints and the hand, shape `(n + 1, 2)`; the last row is the hand.

    Args:
      q: joint angles (relative, as in the 2-link arm), shape `(n,)`.
      arm: link constants.
    """
    q = _check_vector(q, "q", arm.n_links, "(one angle per link)")
    angles = jnp.cumsum(q)
    segs = jnp.asarray(arm.lengths, q.dtype)[:, None] * jnp.stack(
        [jnp.cos(angles), jnp.sin(angles)], axis=1)
    return jnp.concatenate([jnp.zeros((1, 2), q.dtype), jnp.cumsum(segs, axis=0)])


def planar_hand_position(q: jax.Array, arm: PlanarArm) -> jax.Array:
    """Forward kinematics of the n-link arm: the hand's (x, y), shape `(2,)`."""
    return planar_points(q, arm)[-1]


def _planar_kinetic(q: jax.Array, dq: jax.Array, arm: PlanarArm) -> jax.Array:
    # Absolute angular velocity of link i is the sum of the relative rates.
    omega = jnp.cumsum(dq)

    def coms(q_):
        pts = planar_points(q_, arm)
        frac = jnp.asarray(arm.com, q_.dtype)[:, None]
        return pts[:-1] + frac * (pts[1:] - pts[:-1])

    # Centre-of-mass velocities v = d com / dt = J(q) dq, as one jvp.
    _, v = jax.jvp(coms, (q,), (dq,))
    m = jnp.asarray(arm.masses, q.dtype)
    inertia = jnp.asarray(arm.inertias, q.dtype)
    return 0.5 * jnp.sum(m * jnp.sum(v * v, axis=1)) + 0.5 * jnp.sum(inertia * omega**2)


def planar_kinetic_energy(state: jax.Array, arm: PlanarArm) -> jax.Array:
    """Kinetic energy of the n-link arm, `sum_i m_i |v_i|^2 / 2 + I_i w_i^2 / 2`.

    Args:
      state: `[q, dq]`, shape `(2n,)`.
      arm: link constants.
    """
    state = _check_planar_state(state, arm)
    n = arm.n_links
    return _planar_kinetic(state[:n], state[n:], arm)


def planar_mass_matrix(q: jax.Array, arm: PlanarArm) -> jax.Array:
    """`M(q) = d^2 T / d dq^2`: the Hessian of the kinetic energy in the velocities.

    T is quadratic in dq, so the Hessian at dq = 0 is exact. Symmetrised
    (`(M + M^T) / 2`) because autodiff's two passes can differ in the last
    bit and a solver downstream may rely on exact symmetry.

    Args:
      q: joint angles, shape `(n,)`.
      arm: link constants.

    Returns:
      `M`, shape `(n, n)`, symmetric positive definite.
    """
    q = _check_vector(q, "q", arm.n_links, "(one angle per link)")
    m = jax.hessian(lambda dq: _planar_kinetic(q, dq, arm))(jnp.zeros_like(q))
    return 0.5 * (m + m.T)


def planar_accelerations(state: jax.Array, torque: jax.Array, arm: PlanarArm) -> jax.Array:
    """`ddq` from the Euler-Lagrange equations, by autodiff of the Lagrangian L = T.

        d/dt (dL/ddq) - dL/dq = u
        =>  M(q) ddq = u - [ (d/dq (M(q) dq)) dq - dT/dq ]

    The bracket (Coriolis and centrifugal terms) is one jvp of `q -> M(q) dq`
    along `dq` minus the gradient of T in q. `M` is solved by Cholesky (it
    is symmetric positive definite).

    Args:
      state: `[q, dq]`, shape `(2n,)`.
      torque: joint torques, shape `(n,)`.
      arm: link constants.

    Returns:
      `ddq`, shape `(n,)`.
    """
    state = _check_planar_state(state, arm)
    n = arm.n_links
    torque = _check_vector(torque, "torque", n, "(one torque per joint)")
    q, dq = state[:n], state[n:]
    m = planar_mass_matrix(q, arm)
    _, mdot_dq = jax.jvp(lambda q_: planar_mass_matrix(q_, arm) @ dq, (q,), (dq,))
    dt_dq = jax.grad(_planar_kinetic, argnums=0)(q, dq, arm)
    bias = mdot_dq - dt_dq
    chol = jax.scipy.linalg.cho_factor(m, lower=True)
    return jax.scipy.linalg.cho_solve(chol, torque - bias)


def planar_step(state: jax.Array, torque: jax.Array, dt: float = DT, *,
                arm: PlanarArm = ARM2_PLANAR, squash_state: bool = True) -> jax.Array:
    """One semi-implicit Euler step of the n-link arm (same scheme as `step`).

    Args:
      state: `[q, dq]`, shape `(2n,)`.
      torque: shape `(n,)`.
      dt: time step (s).
      arm: link constants (default: the seed's 2-link arm as rods).
      squash_state: apply the seed's squashing.

    Returns:
      The next state, shape `(2n,)`.

    Example:
      >>> s = planar_step(jnp.zeros(6), jnp.ones(3), arm=ARM3_PLANAR)
      >>> s.shape
      (6,)
    """
    state = _check_planar_state(state, arm)
    n = arm.n_links
    ddq = planar_accelerations(state, torque, arm)
    dq = state[n:] + dt * ddq
    q = state[:n] + dt * dq
    new = jnp.concatenate([q, dq])
    return squash(new) if squash_state else new


def planar_inverse_kinematics(xy: jax.Array, arm: PlanarArm, q_rest: jax.Array,
                              weights: jax.Array | None = None,
                              iterations: int = 50) -> jax.Array:
    """Redundant inverse kinematics: the posture nearest `q_rest` that puts the hand at `xy`.

        minimise (q - q_rest)^T W (q - q_rest)  subject to  fk(q) = xy

    (the seed's 3-link criterion, with W = diag(1, 1, 1.3) there), solved by
    a fixed number of Gauss-Newton steps on the linearised constraint
    `fk(q) + J (q' - q) = xy`:

        q' = q_rest + W^-1 J^T (J W^-1 J^T)^-1 (xy - fk(q) + J (q - q_rest))

    A tiny Tikhonov term on `J W^-1 J^T` (relative to its trace) keeps the
    2x2 solve finite at singular postures. Check the result with
    `planar_hand_position` when targets may be out of reach.

    Args:
      xy: hand target, shape `(2,)`.
      arm: link constants.
      q_rest: resting posture and starting point, shape `(n,)`.
      weights: diagonal of W, shape `(n,)` (default ones).
      iterations: Gauss-Newton steps (static).

    Returns:
      Joint angles, shape `(n,)`.
    """
    n = arm.n_links
    xy = _check_vector(xy, "xy", 2, "= [x, y]")
    q_rest = _check_vector(q_rest, "q_rest", n, "(one angle per link)")
    w = jnp.ones(n, q_rest.dtype) if weights is None else _check_vector(
        weights, "weights", n, "(one weight per joint)")
    w_inv = 1.0 / w
    eps = jnp.finfo(q_rest.dtype).eps

    def body(_, q):
        fk = planar_hand_position(q, arm)
        jac = jax.jacfwd(planar_hand_position)(q, arm)
        a = (jac * w_inv) @ jac.T
        a = a + (eps * jnp.trace(a)) * jnp.eye(2, dtype=a.dtype)
        rhs = xy - fk + jac @ (q - q_rest)
        return q_rest + w_inv * (jac.T @ jnp.linalg.solve(a, rhs))

    return jax.lax.fori_loop(0, iterations, body, q_rest)
