"""The closed loop `controller -> torque -> plant step -> state -> controller`.

Notation as in `jaxctl.envs.reach_task`: `x` plant state `(n,)`, `u` torque
`(m,)`, `T` time steps; `states` has shape `(T + 1, n)` and includes `x_0`.
One reach is one `lax.scan`; `jax.vmap` over targets. Gradients flow through
the plant, the fed-back state and the controller.

References:
  I. Sutskever (2013), "Training recurrent neural networks", PhD thesis,
  University of Toronto, ch. 6.
  T. DeWolf (2016), "Deep learning for control using augmented Hessian-free
  optimization", studywolf blog (the closed loop, the feedback delay).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

import jaxctl.envs.arm as _arm
from jaxctl.util import checks


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


def dense_tangent_step(step_fn: Callable[[jax.Array, jax.Array], jax.Array]
                       ) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """`step_fn` with its derivative packed into the dense step Jacobian.

    The same function `(x, u) -> x'`, but its tangent is
    `dx' = A dx + B du` with `A = dx'/dx` `(n, n)` and `B = dx'/du` `(n, m)`
    formed by `jax.jacfwd` at the primal point (a `jax.custom_jvp`). Linearised
    (`jax.linearize`, as Gauss-Newton products are), each time step keeps the
    two small matrices instead of every intermediate of the plant, and
    propagates a tangent or a cotangent with one fused multiply-add instead
    of the plant's whole chain of elementwise operations: fewer kernels per
    step of the closed loop, the same derivative up to rounding.

    Args:
      step_fn: the plant `(x (n,), u (m,)) -> x' (n,)`, differentiable.

    Returns:
      A function with the values of `step_fn` and its derivatives.

    Example:
      >>> f = dense_tangent_step(_arm.step)
      >>> x, u = jnp.array([0.7, 1.8, 0.1, -0.2]), jnp.array([0.3, -0.1])
      >>> bool(jnp.allclose(jax.jacfwd(f)(x, u), jax.jacfwd(_arm.step)(x, u)))
      True
    """
    @jax.custom_jvp
    def step(x, u):
        return step_fn(x, u)

    @step.defjvp
    def step_jvp(primals, tangents):
        x, u = primals
        dx, du = tangents
        a, b = jax.jacfwd(step_fn, argnums=(0, 1))(x, u)
        # Elementwise products and row sums fuse into one kernel; a batched
        # (n, n) @ (n,) dot would be its own, slower, call per step.
        return step_fn(x, u), jnp.sum(a * dx, axis=1) + jnp.sum(b * du, axis=1)

    return step


class Rollout(NamedTuple):
    """One closed-loop reach; every field is what the returned torques produced.

    Fields:
      states: plant states `x_0 .. x_T`, shape `(T + 1, n)`.
      torques: controller outputs `u_0 .. u_{T-1}`, shape `(T, m)` (the loss
        penalises these).
      applied_torques: torques the plant received (`torques` + noise),
        shape `(T, m)`; equal to `torques` without noise.
      inputs: the controller's inputs, shape `(T, d)` (after the feedback
        delay; what the "hold the inputs fixed" regime of DeWolf 2016 records).
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
    back state and the controller (unlike DeWolf's (2016) `hessianfree`
    library, which treats the fed-back state as a constant input). Put parameters in a closure
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
        wrap `functools.partial(jaxctl.envs.planar_arm.planar_step, arm=...)` for n links.
      observe: builds the controller input from `(target_t, observed state)`.
      delay: feedback delay in steps (static int >= 0); before `delay` steps
        have passed the controller sees `x_0`.
      noise_std: standard deviation of additive Gaussian torque noise (>= 0).
      key: PRNG key for the noise; required iff `noise_std` is nonzero.

    Returns:
      A `Rollout`.

    Raises:
      ValueError: bad `T`, `delay`, shapes, or noise without a key.

    Example:
      >>> from jaxctl.envs.reach_task import circle_targets, start_state
      >>> from jaxctl.models.mlp import mlp_apply, mlp_init
      >>> params = mlp_init(jax.random.PRNGKey(0), (8, 32, 2))
      >>> ctrl = lambda c, x: (c, mlp_apply(params, x))
      >>> targets = circle_targets()
      >>> out = jax.vmap(lambda tgt: rollout(ctrl, (), start_state(), tgt, 40))(targets.state)
      >>> out.states.shape
      (64, 41, 4)
    """
    T = checks.check_positive_int("T", T)
    delay = checks.check_int("delay", delay, low=0)
    checks.check_scalar("noise_std", noise_std, low=0.0, high=float("inf"), high_open=True)
    x0 = checks.as_float("plant_state0", plant_state0)
    if x0.ndim != 1 or x0.shape[0] == 0:
        raise ValueError(f"plant_state0 must have shape (n,) with n >= 1 (one unbatched state), "
                         f"got {x0.shape}")
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

    static_zero = checks.concrete_scalar("noise_std", noise_std) == 0
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
