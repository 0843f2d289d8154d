"""Categorical and Gaussian policies and the value baseline (`jaxctl.models.policies`).

Oracles: numpy softmax / scipy.stats.norm, closed-form scores of the linear
softmax policy, sample frequencies.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxctl.core.jacobians import per_sample_grads
from jaxctl.models.mlp import mlp_apply, mlp_init
from jaxctl.models.policies import categorical_policy, gaussian_policy, value_function

# float32 log-probabilities of a small MLP against float64 numpy / scipy.
TOL = 100 * float(np.finfo(np.float32).eps)


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def test_categorical_log_prob_entropy_mode_against_numpy():
    pi = categorical_policy(4, 3, (8,), output_scale=1.0)
    params = pi.init(jax.random.PRNGKey(0))
    obs = jnp.array([0.3, -1.0, 0.5, 2.0])
    h = np.tanh(np.asarray(obs) @ np.asarray(params[0]["w"]) + np.asarray(params[0]["b"]))
    p = softmax(h @ np.asarray(params[1]["w"]) + np.asarray(params[1]["b"]))
    for a in range(3):
        np.testing.assert_allclose(pi.log_prob(params, obs, jnp.int32(a)), np.log(p[a]), rtol=TOL)
    np.testing.assert_allclose(pi.entropy(params, obs), -(p * np.log(p)).sum(), rtol=TOL)
    assert int(pi.mode(params, obs)) == int(np.argmax(p))
    keys = jax.random.split(jax.random.PRNGKey(1), 20000)
    samples = np.asarray(jax.jit(jax.vmap(pi.sample, (None, 0, None)))(params, keys, obs))
    freq = np.bincount(samples, minlength=3) / len(samples)
    np.testing.assert_allclose(freq, p, atol=0.015)


def test_linear_softmax_score_closed_form():
    # d log pi(a|s) / dW = s (e_a - pi(s))^T, d/db = e_a - pi(s).
    pi = categorical_policy(4, 2, (), output_scale=1.0)
    params = pi.init(jax.random.PRNGKey(2))
    obs = jax.random.normal(jax.random.PRNGKey(3), (5, 4))
    actions = jnp.array([0, 1, 1, 0, 1], jnp.int32)
    scores = per_sample_grads(pi.log_prob, params, obs, actions)
    W, b = np.asarray(params[0]["w"]), np.asarray(params[0]["b"])
    for t in range(5):
        s = np.asarray(obs[t])
        resid = np.eye(2)[int(actions[t])] - softmax(s @ W + b)
        np.testing.assert_allclose(scores[0]["w"][t], np.outer(s, resid), rtol=TOL, atol=TOL)
        np.testing.assert_allclose(scores[0]["b"][t], resid, rtol=TOL, atol=TOL)


def test_gaussian_log_prob_entropy_and_samples_against_scipy():
    pi = gaussian_policy(3, 2, (8,), output_scale=1.0, log_std_init=-0.3, action_scale=2.0)
    params = pi.init(jax.random.PRNGKey(4))
    params = {**params, "log_std": jnp.array([-0.3, 0.2])}
    obs = jnp.array([0.1, -0.4, 1.2])
    mean = np.asarray(pi.mode(params, obs))
    std = 2.0 * np.exp(np.array([-0.3, 0.2]))
    a = jnp.array([0.5, -1.0])
    np.testing.assert_allclose(pi.log_prob(params, obs, a),
                               stats.norm.logpdf(np.asarray(a), mean, std).sum(), rtol=TOL)
    np.testing.assert_allclose(pi.entropy(params, obs), stats.norm.entropy(mean, std).sum(), rtol=TOL)
    keys = jax.random.split(jax.random.PRNGKey(5), 20000)
    samples = np.asarray(jax.jit(jax.vmap(pi.sample, (None, 0, None)))(params, keys, obs))
    np.testing.assert_allclose(samples.mean(0), mean, atol=0.05)
    np.testing.assert_allclose(samples.std(0), std, rtol=0.03)


def test_value_function_and_input_validation():
    vf = value_function(4)
    v = vf.apply(vf.init(jax.random.PRNGKey(0)), jnp.ones(4))
    # float32 parameters; a float64 observation (x64) promotes, as jax does.
    assert v.shape == () and v.dtype == jnp.promote_types(jnp.float32, jnp.ones(4).dtype)
    with pytest.raises(ValueError, match="obs"):
        vf.apply(vf.init(jax.random.PRNGKey(0)), jnp.ones((2, 4)))
    pi = categorical_policy(4, 2)
    with pytest.raises(ValueError, match="action"):
        pi.log_prob(pi.init(jax.random.PRNGKey(0)), jnp.ones(4), jnp.array([0, 1]))
    with pytest.raises(ValueError, match="num_actions"):
        categorical_policy(4, 1)
    with pytest.raises(ValueError, match="hidden"):
        gaussian_policy(3, 1, hidden=(0,))


# ------------------------------------------------- edges fail loudly (issue 9)


def test_numpy_sizes_and_integer_inputs():
    pi = categorical_policy(np.int64(4), np.int32(2), (np.int64(8),))
    params = pi.init(jax.random.PRNGKey(0))
    obs = jnp.array([1, 0, -1, 2])
    expected = pi.log_prob(params, obs.astype(float), jnp.int32(1))  # the default float
    # A Python int action and an integer observation (an AttributeError before).
    np.testing.assert_array_equal(pi.log_prob(params, obs, 1), expected)
    gauss = gaussian_policy(3, 2, (4,), action_scale=np.float32(2.0))
    gp = gauss.init(jax.random.PRNGKey(1))
    np.testing.assert_array_equal(gauss.log_prob(gp, jnp.array([1, 0, 2]), jnp.array([1, -1])),
                                  gauss.log_prob(gp, jnp.array([1.0, 0.0, 2.0]),
                                                 jnp.array([1.0, -1.0])))


def test_float_action_index_is_rejected():
    # It was truncated to an index silently (0.7 -> 0).
    pi = categorical_policy(4, 2)
    with pytest.raises(ValueError, match="action must be an integer"):
        pi.log_prob(pi.init(jax.random.PRNGKey(0)), jnp.zeros(4), jnp.array(0.7))


@pytest.mark.parametrize("kwargs,name", [
    (dict(action_scale=np.float32(-1.0)), "action_scale"),
    (dict(action_scale=float("nan")), "action_scale"),
    (dict(action_scale=float("inf")), "action_scale"),
    (dict(log_std_init=float("nan")), "log_std_init"),
    (dict(output_scale=float("inf")), "output_scale"),
    (dict(hidden=(2.5,)), "hidden"),
    (dict(activation="sigmoid"), "activation"),
])
def test_bad_gaussian_configuration_raises(kwargs, name):
    with pytest.raises(ValueError, match=name):
        gaussian_policy(3, 1, **kwargs)


def test_bad_sizes_raise_naming_the_argument():
    with pytest.raises(ValueError, match="obs_dim"):
        value_function(4.0)
    with pytest.raises(ValueError, match="action_dim"):
        gaussian_policy(3, 0)
    with pytest.raises(ValueError, match="sizes"):
        mlp_init(jax.random.PRNGKey(0), (4.7, 2))  # truncated to 4 before
    with pytest.raises(ValueError, match="sizes"):
        mlp_init(jax.random.PRNGKey(0), (4,))
    with pytest.raises(ValueError, match="params"):
        mlp_apply([], jnp.ones(2))  # an IndexError before
