"""Gauss-Newton-vector products against dense J^T H_L J built from jax.jacfwd / jax.hessian.

The oracle never calls the code under test: it flattens the parameters,
builds the Jacobian of the model outputs with `jax.jacfwd` and the loss
Hessian on the outputs with `jax.hessian`, and forms `J^T H J` densely in
float64. The operator is materialised by applying it to basis vectors.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxctl.core.gauss_newton import (
    gauss_newton_model,
    gauss_newton_vector_product,
    softmax_cross_entropy,
    squared_error,
)
from jaxctl.models.mlp import mlp_apply, mlp_init
from jaxctl.models.rnn import rnn_apply, rnn_init, rnn_spec


def dense_gn(fn, loss, params):
    """J^T H_L J from jax.jacfwd of the flat model and jax.hessian of the flat loss."""
    flat, unravel = ravel_pytree(params)

    @jax.jit
    def dense(flat):
        out_flat, unravel_out = ravel_pytree(fn(unravel(flat)))
        J = jax.jacfwd(lambda p: ravel_pytree(fn(unravel(p)))[0])(flat)
        H = jax.hessian(lambda z: loss(unravel_out(z)))(out_flat)
        return J.T @ H @ J

    return np.asarray(dense(flat))


def operator_matrix(fn, loss, params):
    """The operator applied to every basis vector (columns of G)."""
    flat, unravel = ravel_pytree(params)
    gv = jax.jit(jax.vmap(lambda e: ravel_pytree(
        gauss_newton_vector_product(fn, loss, params, unravel(e)))[0]))
    return np.asarray(gv(jnp.eye(flat.size, dtype=flat.dtype))).T


def assert_gn_matches(fn, loss, params, rtol=1e-9):
    G = dense_gn(fn, loss, params)
    Gop = operator_matrix(fn, loss, params)
    scale = np.abs(G).max()
    assert scale > 0
    np.testing.assert_allclose(Gop, G, rtol=rtol, atol=rtol * scale)
    return G


def cast(tree, dtype):
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)


def mlp_case(seed, sizes, n):
    """A float64 MLP, `n` inputs, and `fn(params) -> (n, sizes[-1])` (call inside enable_x64)."""
    keys = jax.random.split(jax.random.PRNGKey(seed))
    params = cast(mlp_init(keys[0], sizes), jnp.float64)
    x = jax.random.normal(keys[1], (n, sizes[0]), jnp.float64)
    return params, (lambda p: jax.vmap(lambda xi: mlp_apply(p, xi))(x))


# --- feed-forward -------------------------------------------------------------


def test_mlp_squared_error_matches_dense():
    with jax.enable_x64(True):
        params, fn = mlp_case(0, (3, 5, 2), 4)
        y = jax.random.normal(jax.random.PRNGKey(2), (4, 2), jnp.float64)
        loss = lambda z: jnp.mean(jax.vmap(squared_error)(z, y))
        G = assert_gn_matches(fn, loss, params)
        # Gauss-Newton is PSD even where the Hessian is not.
        assert np.linalg.eigvalsh(G).min() > -1e-12 * np.abs(G).max()


def test_masked_targets_contribute_no_curvature():
    """NaN targets and a 0 mask drop out exactly: G equals the GN of the kept rows only."""
    with jax.enable_x64(True):
        params, fn = mlp_case(3, (2, 4, 3), 5)
        y = np.array(jax.random.normal(jax.random.PRNGKey(5), (5, 3), jnp.float64))
        y[:3] = np.nan          # rows 0-2 unconstrained (final-state targets, DeWolf 2016)
        mask = np.ones((5, 3))
        mask[4, 1] = 0.0        # one more entry dropped by the mask
        loss = lambda z: squared_error(z, jnp.asarray(y), jnp.asarray(mask))
        G = assert_gn_matches(fn, loss, params)
        # Independent oracle: J^T J over the kept entries only.
        flat, unravel = ravel_pytree(params)
        J = np.asarray(jax.jacfwd(lambda p: fn(unravel(p)).reshape(-1))(flat))
        keep = (~np.isnan(y) & (mask != 0)).reshape(-1)
        np.testing.assert_allclose(G, J[keep].T @ J[keep], rtol=1e-10, atol=1e-12)
        # Counting every step (as the hessianfree library does) overstates it.
        assert np.abs(J.T @ J - G).max() > 0.1 * np.abs(G).max()
        # No NaN in the gradient either.
        assert np.all(np.isfinite(ravel_pytree(jax.grad(lambda p: loss(fn(p)))(params))[0]))


def test_softmax_cross_entropy_matches_dense():
    with jax.enable_x64(True):
        params, fn = mlp_case(6, (3, 4, 4), 6)
        labels = jax.nn.one_hot(jnp.array([0, 1, 2, 3, 1, 0]), 4, dtype=jnp.float64)
        loss = lambda z: softmax_cross_entropy(z, labels) / 6
        G = assert_gn_matches(fn, loss, params)
        assert np.linalg.eigvalsh(G).min() > -1e-12 * np.abs(G).max()


def test_sum_of_losses_is_sum_of_gauss_newton_matrices():
    """Final-state squared error + L2 penalty on a control signal (the reach loss shape)."""
    with jax.enable_x64(True):
        params, net = mlp_case(8, (2, 6, 4), 3)
        target = jnp.array([0.3, -0.2], jnp.float64)
        fn = lambda p: {"state": net(p)[:, :2], "torque": net(p)[:, 2:]}
        err = lambda z: jnp.mean(jax.vmap(lambda s: squared_error(s, target))(z["state"]))
        pen = lambda z: 0.05 * 0.5 * jnp.mean(jnp.sum(z["torque"] ** 2, -1))
        G_sum = assert_gn_matches(fn, lambda z: err(z) + pen(z), params)
        np.testing.assert_allclose(G_sum, dense_gn(fn, err, params) + dense_gn(fn, pen, params),
                                   rtol=1e-10, atol=1e-13)


def test_linear_least_squares_gauss_newton_equals_hessian():
    """For a linear model and squared error, G is the exact Hessian of the whole loss."""
    with jax.enable_x64(True):
        A = jax.random.normal(jax.random.PRNGKey(10), (7, 4), jnp.float64)
        y = jax.random.normal(jax.random.PRNGKey(11), (7,), jnp.float64)
        params = {"w": jax.random.normal(jax.random.PRNGKey(12), (4,), jnp.float64),
                  "c": jnp.asarray(0.3, jnp.float64)}
        fn = lambda p: A @ p["w"] + p["c"]
        loss = lambda z: squared_error(z, y)
        flat, unravel = ravel_pytree(params)
        H = np.asarray(jax.hessian(lambda q: loss(fn(unravel(q))))(flat))
        np.testing.assert_allclose(operator_matrix(fn, loss, params), H, rtol=1e-12, atol=1e-12)


# --- recurrent ----------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _rnn_case(with_plant, dtype=jnp.float64):
    """(fn, loss, params) in `dtype`; build float64 cases inside jax.enable_x64."""
    if with_plant:
        def plant(s, u):  # a nonlinear plant: state feeds back into its own gain
            return jnp.stack([s[0] + 0.1 * s[1], 0.9 * s[1] + 0.1 * jnp.tanh(s[0]) * u[0] + 0.1 * u[1]])
        spec = rnn_spec([3, 5, 4, 2], conns={0: [1, 2], 1: [2], 2: [3]}, recurrent=[1, 2],
                        plant=plant)
    else:
        spec = rnn_spec([1, 5, 4, 2], conns={0: [1, 2], 1: [2], 2: [3]}, recurrent=[1, 2])
    params = cast(rnn_init(jax.random.PRNGKey(13), spec, recurrent_scale=0.9), dtype)
    params["h0"] = {k: 0.1 * jnp.ones_like(v) for k, v in params["h0"].items()}
    # Draw in float32 so both precisions see the same numbers.
    x = cast(jax.random.normal(jax.random.PRNGKey(14), (3, 6, 1), jnp.float32), dtype)
    s0 = cast(jax.random.normal(jax.random.PRNGKey(15), (3, 2), jnp.float32), dtype)
    if with_plant:
        fn = lambda p: jax.vmap(lambda xi, si: rnn_apply(spec, p, xi, si))(x, s0)
        target = jnp.array([0.5, 0.0])

        def loss(out):  # final-state error + torque penalty, masked elsewhere
            final = jax.vmap(lambda s: squared_error(s[-1], target))(out.plant_states)
            return jnp.mean(final) + 0.01 * jnp.mean(jnp.sum(out.outputs**2, (1, 2)))
    else:
        y = cast(jax.random.normal(jax.random.PRNGKey(16), (3, 6, 2), jnp.float32), dtype)
        fn = lambda p: jax.vmap(lambda xi: rnn_apply(spec, p, xi).outputs)(x)
        loss = lambda z: jnp.mean(jax.vmap(squared_error)(z, y))
    return fn, loss, params


@pytest.mark.parametrize("with_plant", [False, True], ids=["rnn", "rnn+plant"])
def test_recurrent_matches_dense(with_plant):
    with jax.enable_x64(True):
        fn, loss, params = _rnn_case(with_plant)
        G = assert_gn_matches(fn, loss, params)
        assert np.linalg.eigvalsh(G).min() > -1e-10 * np.abs(G).max()


def test_gauss_newton_model_value_grad_and_matvec():
    with jax.enable_x64(True):
        fn, loss, params = _rnn_case(True)
        v = jax.tree.map(lambda x: jnp.cos(jnp.arange(x.size, dtype=x.dtype)).reshape(x.shape),
                         params)

        @jax.jit
        def both(p, v):
            m = gauss_newton_model(fn, loss, p)
            return (m.value, m.grad, m.matvec(v), jax.value_and_grad(lambda q: loss(fn(q)))(p),
                    gauss_newton_vector_product(fn, loss, p, v))

        value, grad, gv_model, (value_ref, grad_ref), gv = both(params, v)
        np.testing.assert_allclose(value, value_ref, rtol=1e-12)
        np.testing.assert_allclose(ravel_pytree(grad)[0], ravel_pytree(grad_ref)[0], rtol=1e-10,
                                   atol=1e-14)
        np.testing.assert_allclose(ravel_pytree(gv_model)[0], ravel_pytree(gv)[0], rtol=1e-10,
                                   atol=1e-14)


def test_float32_product_close_to_float64_oracle():
    fn, loss, params = _rnn_case(True, jnp.float32)
    with jax.enable_x64(True):
        G = dense_gn(*_rnn_case(True))
    flat, unravel = ravel_pytree(params)
    v = np.random.default_rng(0).standard_normal(flat.size).astype(np.float32)
    gv = jax.jit(lambda p, v: ravel_pytree(gauss_newton_vector_product(fn, loss, p, unravel(v)))[0])(
        params, jnp.asarray(v))
    assert gv.dtype == jnp.float32
    np.testing.assert_allclose(gv, G @ v, rtol=2e-4, atol=2e-4 * np.abs(G @ v).max())


def test_vmaps_over_vectors_and_rejects_bad_shapes():
    params = mlp_init(jax.random.PRNGKey(17), (2, 3, 1))
    x = jnp.ones((4, 2))
    fn = lambda p: jax.vmap(lambda xi: mlp_apply(p, xi))(x)
    loss = lambda z: 0.5 * jnp.sum(z**2)
    vs = jax.tree.map(lambda p: jnp.stack([p, 2 * p]), params)
    gvs = jax.vmap(lambda v: gauss_newton_vector_product(fn, loss, params, v))(vs)
    for a, b in zip(jax.tree.leaves(gvs), jax.tree.leaves(params)):
        np.testing.assert_allclose(a[1], 2 * a[0], rtol=1e-5, atol=1e-6)  # linear in v
        assert a.shape == (2,) + b.shape
    with pytest.raises(ValueError, match="v must have"):
        gauss_newton_vector_product(fn, loss, params, params[:1])
    with pytest.raises(ValueError, match="scalar"):
        gauss_newton_vector_product(fn, lambda z: z, params, params)
    with pytest.raises(ValueError, match="one shape"):
        squared_error(jnp.ones(3), jnp.ones(2))
