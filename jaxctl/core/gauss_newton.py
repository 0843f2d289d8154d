"""Gauss-Newton-vector products and the losses they are exact for.

Notation: parameters `theta` (any pytree), a model `z = f(theta)` whose
outputs `z` are any pytree (for a recurrent controller: the plant states and
torques over time), and a loss `L(z)` convex in `z`. With `J = dz/dtheta`
and `H_L = d^2 L / dz^2` (positive semi-definite because `L` is convex), the
generalised Gauss-Newton matrix is

    G = J^T H_L J,

the Hessian of `L(f(theta))` with the second-order term of `f` dropped
(Schraudolph 2002). `G` is positive semi-definite even where the Hessian is
not, which is what lets conjugate gradient minimise the quadratic model in
Hessian-free optimisation. `G v` costs one forward-mode product `J v`
(`jax.jvp`), one loss Hessian-vector product on the outputs, and one
reverse-mode product `J^T u` (`jax.vjp`); it never forms `J` or `G`.

For a sum of losses `L = L_1 + L_2` (a final-state error plus a torque
penalty), `H_L = H_1 + H_2` and the product needs nothing special: pass the
sum. Masked (or NaN) targets of `squared_error` contribute neither gradient
nor curvature, so `G` counts only the time steps that carry a target.

The losses here act on ONE example (sum over its time steps and units);
batch them with `jax.vmap` and average, e.g.
`lambda z: jnp.mean(jax.vmap(squared_error)(z, targets))`.

References:
  N. N. Schraudolph (2002), "Fast curvature matrix-vector products for
  second-order gradient descent", Neural Computation 14(7).
  J. Martens (2010), "Deep learning via Hessian-free optimization", ICML.
  J. Martens and I. Sutskever (2011), "Learning recurrent neural networks
  with Hessian-free optimization", ICML.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxctl.util.checks import PyTree, check_same_structure


def _check_scalar_loss(value: Any) -> None:
    shape = tuple(getattr(value, "shape", ()))
    if shape != ():
        raise ValueError(f"loss(outputs) must return a scalar, got shape {shape}")


class GaussNewtonModel(NamedTuple):
    """The loss, its gradient and the Gauss-Newton operator at one point.

    Attributes:
      value: scalar `L(f(theta))`.
      grad: `J^T dL/dz`, a pytree like `params`.
      matvec: `v -> J^T H_L J v` (pytree like `params` to the same); it
        reuses the linearisation, so each call costs a linear forward and a
        linear backward sweep, no re-run of the nonlinear model.
      outputs: the model outputs `z = f(theta)`.
    """

    value: jax.Array
    grad: PyTree
    matvec: Callable[[PyTree], PyTree]
    outputs: PyTree


def gauss_newton_model(fn: Callable[[PyTree], PyTree], loss: Callable[[PyTree], jax.Array],
                       params: PyTree) -> GaussNewtonModel:
    """Linearises `fn` once and returns the loss, gradient and `v -> G v`.

    `jax.linearize` runs the model once and keeps what the tangent map
    needs; `jax.linear_transpose` of that map gives `J^T` without a second
    forward pass, and the loss Hessian is linearised once on the outputs.
    This is the form to use inside CG, where `G v` is applied many times at
    the same `params`.

    Args:
      fn: `params -> outputs` (any pytree of float arrays).
      loss: `outputs -> scalar`, convex in the outputs.
      params: the point `theta`, any pytree of float arrays.

    Returns:
      A `GaussNewtonModel(value, grad, matvec, outputs)`.

    Example:
      >>> W = jnp.ones((2, 3))
      >>> m = gauss_newton_model(lambda w: w @ jnp.ones(3),
      ...                        lambda z: 0.5 * jnp.sum(z**2), W)
      >>> m.matvec(W).shape
      (2, 3)

    References:
      Schraudolph (2002); Martens (2010), section 4.2.
    """
    outputs, f_jvp = jax.linearize(fn, params)
    f_vjp = jax.linear_transpose(f_jvp, params)
    value = loss(outputs)
    _check_scalar_loss(value)
    # grad(L) and its linearisation: dL/dz for the gradient, H_L u for G.
    dloss, loss_hvp = jax.linearize(jax.grad(loss), outputs)
    (grad,) = f_vjp(dloss)

    def matvec(v: PyTree) -> PyTree:
        check_same_structure("v", v, params, "params")
        (gv,) = f_vjp(loss_hvp(f_jvp(v)))
        return gv

    return GaussNewtonModel(value=value, grad=grad, matvec=matvec, outputs=outputs)


def gauss_newton_vector_product(fn: Callable[[PyTree], PyTree],
                                loss: Callable[[PyTree], jax.Array],
                                params: PyTree, v: PyTree) -> PyTree:
    """Computes `G v = J^T H_L J v`, the Gauss-Newton matrix times a vector.

    `J = d fn / d params` at `params`, `H_L` the Hessian of `loss` at
    `fn(params)`. Cost: one `jax.jvp` through `fn` (forward and tangent
    together), one Hessian-vector product of `loss` on the outputs, one
    `jax.vjp` through `fn`: about 1.5-2x a gradient. Use
    `gauss_newton_model` to apply `G` many times at the same point.

    Args:
      fn: `params -> outputs`, outputs any pytree of float arrays.
      loss: `outputs -> scalar`, convex in the outputs (squared error,
        softmax cross-entropy, their sums with L2 penalties, ...).
      params: pytree of float arrays, the linearisation point.
      v: pytree with the structure and shapes of `params`.

    Returns:
      `G v`, a pytree like `params`.

    Example:
      >>> A = jnp.array([[1.0, 2.0], [3.0, 4.0]])
      >>> gv = gauss_newton_vector_product(lambda x: A @ x,
      ...                                  lambda z: 0.5 * z @ z,
      ...                                  jnp.zeros(2), jnp.array([1.0, 0.0]))
      >>> gv.tolist()  # A^T A e_1
      [10.0, 14.0]

    References:
      Schraudolph (2002), "Fast curvature matrix-vector products for
      second-order gradient descent"; Martens (2010), section 4.2.
    """
    check_same_structure("v", v, params, "params")
    # One nonlinear forward pass: linearize, then transpose the tangent map.
    outputs, f_jvp = jax.linearize(fn, params)
    _check_scalar_loss(jax.eval_shape(loss, outputs))
    hjv = jax.jvp(jax.grad(loss), (outputs,), (f_jvp(v),))[1]
    (gv,) = jax.linear_transpose(f_jvp, params)(hjv)
    return gv


def squared_error(predictions: jax.Array, targets: jax.Array,
                  mask: jax.Array | None = None) -> jax.Array:
    """`sum_i m_i (y_i - t_i)^2 / 2` over one example; NaN targets are masked.

    Entries whose target is NaN, or whose `mask` is 0, contribute no loss, no
    gradient and no curvature: the loss Hessian is `diag(m)`, so in
    `J^T H_L J` unconstrained time steps drop out exactly (the `hessianfree`
    library counts them). DeWolf (2016) sets every target but the last to NaN
    for a final-state cost.

    Args:
      predictions: array of any shape, e.g. `(T, n)`.
      targets: same shape; NaN marks "no target here".
      mask: optional array broadcastable to that shape (1 keep, 0 drop).

    Returns:
      A scalar.

    Example:
      >>> float(squared_error(jnp.array([1.0, 2.0]), jnp.array([0.0, jnp.nan])))
      0.5
    """
    if jnp.shape(predictions) != jnp.shape(targets):
        raise ValueError(f"predictions and targets must have one shape, got "
                         f"{jnp.shape(predictions)} and {jnp.shape(targets)}")
    valid = ~jnp.isnan(targets)
    if mask is not None:
        valid = valid & (jnp.broadcast_to(mask, jnp.shape(targets)) != 0)
    # Select before subtracting so a NaN target never reaches the gradient.
    diff = jnp.where(valid, predictions - jnp.where(valid, targets, 0), 0)
    return 0.5 * jnp.sum(diff**2)


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array,
                          mask: jax.Array | None = None) -> jax.Array:
    """`-sum_t m_t sum_k p_tk log softmax(z_t)_k` over one example.

    Convex in the logits, with loss Hessian `diag(s) - s s^T` per row
    (`s = softmax(z)`): the "matching loss" of the softmax output, so
    `J^T H_L J` is taken through the logits (Schraudolph 2002).

    Args:
      logits: `(..., K)`.
      labels: `(..., K)` probabilities (one-hot or soft); rows containing NaN
        are masked.
      mask: optional `(...)` row weights (1 keep, 0 drop).

    Returns:
      A scalar.

    Example:
      >>> round(float(softmax_cross_entropy(jnp.zeros(2), jnp.array([1.0, 0.0]))), 6)  # log 2
      0.693147
    """
    if jnp.shape(logits) != jnp.shape(labels) or jnp.ndim(logits) < 1:
        raise ValueError(f"logits and labels must have one shape (..., K), got "
                         f"{jnp.shape(logits)} and {jnp.shape(labels)}")
    valid = ~jnp.any(jnp.isnan(labels), axis=-1)
    if mask is not None:
        valid = valid & (jnp.broadcast_to(mask, valid.shape) != 0)
    safe_labels = jnp.where(valid[..., None], labels, 0)
    return -jnp.sum(safe_labels * jax.nn.log_softmax(logits, axis=-1))
