"""Per-sample gradients against a Python loop of jax.grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxctl import per_sample_grads, ravel_per_sample

EPS32 = float(np.finfo(np.float32).eps)


def log_prob(params, x, a):
    """A tiny categorical policy with nested-dict params."""
    h = jnp.tanh(x @ params["layer"]["w"] + params["layer"]["b"])
    logits = h @ params["head"]
    return jax.nn.log_softmax(logits)[a]


@pytest.fixture(scope="module")
def problem():
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(0), 4)
    params = {
        "layer": {"w": jax.random.normal(k1, (3, 5)), "b": jax.random.normal(k2, (5,))},
        "head": jax.random.normal(k3, (5, 2)),
    }
    xs = jax.random.normal(k4, (11, 3))
    actions = jnp.arange(11) % 2
    return params, xs, actions


def test_per_sample_grads_equal_python_loop(problem):
    params, xs, actions = problem
    got = per_sample_grads(log_prob, params, xs, actions)
    for t in range(xs.shape[0]):
        expected = jax.grad(log_prob)(params, xs[t], actions[t])
        for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
            np.testing.assert_allclose(g[t], e, rtol=100 * EPS32, atol=10 * EPS32)
    assert jax.tree.structure(got) == jax.tree.structure(params)


@pytest.mark.parametrize("chunk_size", [1, 4, 11, 32])
def test_chunked_equals_unchunked(problem, chunk_size):
    params, xs, actions = problem
    full = per_sample_grads(log_prob, params, xs, actions)
    chunked = per_sample_grads(log_prob, params, xs, actions, chunk_size=chunk_size)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(chunked)):
        np.testing.assert_allclose(a, b, rtol=8 * EPS32, atol=8 * EPS32)


def test_ravel_per_sample_rows_are_raveled_grads(problem):
    params, xs, actions = problem
    grads = per_sample_grads(log_prob, params, xs, actions)
    G, unravel = ravel_per_sample(grads)
    P = ravel_pytree(params)[0].size
    assert G.shape == (11, P)
    for t in (0, 5, 10):
        row = ravel_pytree(jax.tree.map(lambda leaf: leaf[t], grads))[0]
        np.testing.assert_array_equal(G[t], row)
    back = unravel(G[3])
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(grads)):
        np.testing.assert_array_equal(a, b[3])


def test_works_inside_jit_and_vmap(problem):
    params, xs, actions = problem
    batched = jax.jit(jax.vmap(lambda x, a: ravel_per_sample(per_sample_grads(log_prob, params, x, a))[0]))
    G2 = batched(jnp.stack([xs, 2 * xs]), jnp.stack([actions, actions]))
    G_second = ravel_per_sample(per_sample_grads(log_prob, params, 2 * xs, actions))[0]
    # Rounding scales with the matrix: an entry that cancels to 0 one way may be a few ulps
    # of max |G| the other way (compiled at another XLA level or fused differently).
    scale = float(jnp.abs(G_second).max())
    np.testing.assert_allclose(G2[1], G_second, rtol=100 * EPS32, atol=100 * EPS32 * scale)


def test_bad_inputs_name_the_argument(problem):
    params, xs, actions = problem
    with pytest.raises(ValueError, match="leading sample axis"):
        per_sample_grads(log_prob, params, xs, actions[:5])
    with pytest.raises(ValueError, match="chunk_size"):
        per_sample_grads(log_prob, params, xs, actions, chunk_size=0)
    with pytest.raises(ValueError, match="at least one batched argument"):
        per_sample_grads(log_prob, params)


def test_empty_sample_axis_raises_naming_the_argument(problem):
    params, _, _ = problem
    with pytest.raises(ValueError, match="args must hold at least one sample"):
        per_sample_grads(log_prob, params, jnp.zeros((0, 3)), jnp.zeros(0, jnp.int32))
    with pytest.raises(ValueError, match="grads must hold at least one sample"):
        ravel_per_sample({"w": jnp.zeros((0, 3))})  # an IndexError before


def test_numpy_chunk_size_and_integer_params(problem):
    params, xs, actions = problem
    full = per_sample_grads(log_prob, params, xs, actions)
    chunked = per_sample_grads(log_prob, params, xs, actions, chunk_size=np.int64(4))
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(chunked)):
        np.testing.assert_allclose(a, b, rtol=8 * EPS32, atol=8 * EPS32)
    with pytest.raises(ValueError, match="chunk_size"):
        per_sample_grads(log_prob, params, xs, actions, chunk_size=2.0)
    # Integer parameters are promoted (jax.grad refused them): d(x . w)/dw = x.
    g = per_sample_grads(lambda w, x: x @ w, jnp.zeros(3, jnp.int32), xs)
    assert jnp.issubdtype(g.dtype, jnp.floating)
    np.testing.assert_array_equal(g, xs)
