"""An n-link planar arm (no gravity) whose dynamics come from autodiff of its Lagrangian.

Notation as in `jaxctl.envs.arm`: `q` relative joint angles `(n,)` (link
`i`'s absolute angle is `q_0 + ... + q_i`), `dq` their rates, `state =
[q, dq]` of shape `(2n,)`, `torque` `(n,)`. The kinetic energy `T(q, dq)` is
written from the links' centre-of-mass velocities and spins; the mass
matrix is its Hessian in `dq` and the Coriolis / centrifugal terms come from
the Euler-Lagrange equations by `jvp` and `grad`. For two uniform rods this
reproduces the closed-form arm of `jaxctl.envs.arm` (tested). One step is
the same semi-implicit Euler scheme with the same squashing.

References:
  I. Sutskever (2013), "Training recurrent neural networks", PhD thesis, ch. 6.
  T. DeWolf (2016), "Deep learning for control using augmented Hessian-free
  optimization", studywolf blog (the 2- and 3-link arms' constants).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from jaxctl.envs.arm import ARM2, DT, check_vector, squash
from jaxctl.util import checks


class PlanarArm(NamedTuple):
    """An n-link planar arm (no gravity): per-link length, mass, inertia.

    Link i is a rigid body of mass `masses[i]` whose centre of mass lies at
    `com[i] * lengths[i]` along the link and whose moment of inertia about
    that centre of mass is `inertias[i]`. Use `PlanarArm.rods` for uniform
    rods (centre at the middle, inertia `m l^2 / 12`), as the 2-link arm of DeWolf (2016).
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
        return check_planar_arm(cls(lengths, masses, inertias, (0.5,) * len(lengths)))

    @property
    def n_links(self) -> int:
        return len(self.lengths)


def check_planar_arm(arm: PlanarArm) -> PlanarArm:
    """At least one link; lengths and masses finite > 0, inertias finite >= 0, com in [0, 1]."""
    n = len(arm.lengths)
    if n == 0 or not all(len(f) == n for f in (arm.masses, arm.inertias, arm.com)):
        raise ValueError(f"arm must have at least one link and one length, mass, inertia and "
                         f"com per link, got {tuple(len(f) for f in arm)}")
    for i in range(n):
        checks.check_finite_positive(f"arm.lengths[{i}]", arm.lengths[i])
        checks.check_finite_positive(f"arm.masses[{i}]", arm.masses[i])
        checks.check_scalar(f"arm.inertias[{i}]", arm.inertias[i], low=0.0, high=float("inf"),
                            high_open=True)
        checks.check_scalar(f"arm.com[{i}]", arm.com[i], low=0.0, high=1.0)
    return arm


ARM2_PLANAR = PlanarArm.rods((ARM2.l1, ARM2.l2), (ARM2.m1, ARM2.m2))
"""The 2-link arm of DeWolf (2016) as a `PlanarArm` (uniform rods)."""

ARM3_PLANAR = PlanarArm(lengths=(2.0, 1.2, 0.7), masses=(10.0, 10.0, 10.0),
                        inertias=(100.0, 100.0, 100.0), com=(0.5, 0.5, 0.5))
"""Link constants of the 3-link arm of DeWolf (2016) (his MapleSim model: lengths,
masses, inertias about the centre of mass); the dynamics here are our own
Lagrangian ones, not the MapleSim simulation."""


def _check_planar_state(state, arm: PlanarArm) -> jax.Array:
    n = check_planar_arm(arm).n_links
    names = ", ".join([f"q{i}" for i in range(n)] + [f"dq{i}" for i in range(n)])
    return check_vector(state, "state", 2 * n, f"= [{names}]")


def planar_points(q: jax.Array, arm: PlanarArm) -> jax.Array:
    """Positions of the joints and the hand, shape `(n + 1, 2)`; the last row is the hand.

    Args:
      q: joint angles (relative, as in the 2-link arm), shape `(n,)`.
      arm: link constants.
    """
    q = check_vector(q, "q", arm.n_links, "(one angle per link)")
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
    q = check_vector(q, "q", arm.n_links, "(one angle per link)")
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
    torque = check_vector(torque, "torque", n, "(one torque per joint)")
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
      arm: link constants (default: the 2-link arm of DeWolf 2016 as rods).
      squash_state: apply the squashing of `jaxctl.envs.arm.squash`.

    Returns:
      The next state, shape `(2n,)`.

    Raises:
      ValueError: wrong shapes, a concrete `dt` not finite and > 0, or bad
        link constants (`check_planar_arm`).

    Example:
      >>> s = planar_step(jnp.zeros(6), jnp.ones(3), arm=ARM3_PLANAR)
      >>> s.shape
      (6,)
    """
    state = _check_planar_state(state, arm)
    checks.check_finite_positive("dt", dt)
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

    (the 3-link criterion of DeWolf 2016, with W = diag(1, 1, 1.3) there), solved by
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
    n = check_planar_arm(arm).n_links
    iterations = checks.check_int("iterations", iterations, low=0)
    xy = check_vector(xy, "xy", 2, "= [x, y]")
    q_rest = check_vector(q_rest, "q_rest", n, "(one angle per link)")
    w = jnp.ones(n, q_rest.dtype) if weights is None else check_vector(
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
