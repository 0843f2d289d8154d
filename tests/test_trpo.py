"""TRPO's line search, random Fourier features, the running normaliser and RBF/linear policies."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxctl.core.fisher import natural_gradient
from jaxctl.core.jacobians import per_sample_grads, ravel_per_sample
from jaxctl.models.features import (
    fourier_apply,
    fourier_features,
    normalize_obs,
    running_stats_init,
    running_stats_update,
)
from jaxctl.models.mlp import mlp_apply
from jaxctl.models.policies import categorical_policy, gaussian_policy, rbf_gaussian_policy
from jaxctl.optim.trpo import trpo_step

T = 512


def _batch():
    """A categorical policy, states, actions drawn from it, and advantages that favour action 0."""
    pi = categorical_policy(4, 3, hidden=(8,), output_scale=1.0)
    params = pi.init(jax.random.PRNGKey(0))
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    obs = jax.random.normal(k1, (T, 4))
    actions = jax.vmap(pi.sample, (None, 0, 0))(params, jax.random.split(k2, T), obs)
    adv = jnp.where(actions == 0, 1.0, -0.5) + 0.3 * obs[:, 0]
    old_logp = jax.vmap(pi.log_prob, (None, 0, 0))(params, obs, actions)

    def surrogate(p):
        logp = jax.vmap(pi.log_prob, (None, 0, 0))(p, obs, actions)
        return jnp.mean(jnp.exp(logp - old_logp) * adv)

    def kl(p):
        def one(o):
            a = jax.nn.log_softmax(mlp_apply(params, o, "tanh"))
            b = jax.nn.log_softmax(mlp_apply(p, o, "tanh"))
            return jnp.sum(jnp.exp(a) * (a - b))
        return jnp.mean(jax.vmap(one)(obs))

    @jax.jit
    def directions(p):
        G, unravel = ravel_per_sample(per_sample_grads(pi.log_prob, p, obs, actions))
        g = jax.grad(surrogate)(p)
        return g, unravel(natural_gradient(G, jax.flatten_util.ravel_pytree(g)[0], damping=1e-3))

    g, nat_g = directions(params)
    return params, surrogate, kl, g, nat_g


@pytest.fixture(scope="module")
def batch():
    return _batch()


@pytest.mark.parametrize("delta", [0.01, 0.2])
def test_accepted_step_keeps_the_kl_bound_and_improves(batch, delta):
    params, surrogate, kl, g, nat_g = batch
    new, info = jax.jit(lambda p, g, n: trpo_step(surrogate, kl, p, g, n, delta))(params, g, nat_g)
    assert bool(info.accepted)
    assert float(kl(new)) <= delta * (1 + 1e-5)
    assert float(surrogate(new)) > float(surrogate(params))
    assert float(info.improvement) == pytest.approx(float(surrogate(new) - surrogate(params)),
                                                    rel=1e-4)
    # it backtracked only because the next larger trial fails the KL or the gain test
    f = float(info.step_fraction)
    assert 0 < f <= 1
    if f < 1:
        bigger = 2 * f  # the trial before (backtrack = 0.5)
        gn = float(jax.flatten_util.ravel_pytree(g)[0] @ jax.flatten_util.ravel_pytree(nat_g)[0])
        scale = bigger * float(info.expected_improvement) / gn  # full step = (expected / gn) n
        trial = jax.tree.map(lambda p, d: p + scale * d, params, nat_g)
        gain = float(surrogate(trial) - surrogate(params))
        assert float(kl(trial)) > delta or gain < 0.1 * bigger * float(info.expected_improvement)


def test_no_acceptable_step_restores_the_parameters_exactly(batch):
    params, surrogate, kl, g, nat_g = batch
    downhill = jax.tree.map(lambda x: -x, nat_g)
    # with -F^-1 g as the "natural direction" g^T n < 0: rejected before any trial
    new, info = trpo_step(surrogate, kl, params, g, downhill, 0.01)
    assert not bool(info.accepted) and float(info.step_fraction) == 0.0
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # a surrogate that never improves along the step: every trial fails the gain test
    new, info = trpo_step(lambda p: -surrogate(p), kl, params, g, nat_g, 0.01)
    assert not bool(info.accepted) and float(info.improvement) < 0
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # a KL that is NaN everywhere off the old point: rejected, not corrupted
    new, info = trpo_step(surrogate, lambda p: kl(p) * jnp.nan, params, g, nat_g, 0.01)
    assert not bool(info.accepted)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(new))


@pytest.mark.parametrize("bad", [0.0, -0.1, np.float32(-1.0), jnp.array(0.0)])
def test_bad_delta_names_delta(batch, bad):
    params, surrogate, kl, g, nat_g = batch
    with pytest.raises(ValueError, match="delta must be > 0"):
        trpo_step(surrogate, kl, params, g, nat_g, bad)


def test_bad_line_search_settings_are_named(batch):
    params, surrogate, kl, g, nat_g = batch
    with pytest.raises(ValueError, match="backtrack must be > 0 and < 1"):
        trpo_step(surrogate, kl, params, g, nat_g, 0.01, backtrack=1.0)
    with pytest.raises(ValueError, match="max_backtracks must be an integer >= 1"):
        trpo_step(surrogate, kl, params, g, nat_g, 0.01, max_backtracks=0)


def test_fourier_features_approximate_the_gaussian_kernel():
    D, bandwidth = 20000, 1.5
    f = fourier_features(jax.random.PRNGKey(0), 3, D, bandwidth)
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 3))
    phi = jax.vmap(lambda o: fourier_apply(f, o))(x)
    approx = 2.0 / D * phi @ phi.T
    d2 = jnp.sum((x[:, None] - x[None]) ** 2, -1)
    exact = jnp.exp(-d2 / (2 * bandwidth ** 2))
    # each entry is a mean of D terms bounded by 2 in size: standard error <= 2 / sqrt(D)
    assert float(jnp.max(jnp.abs(approx - exact))) < 4 * 2 / np.sqrt(D)


def test_feature_count_and_observation_size_are_checked():
    with pytest.raises(ValueError, match="num_features must be an integer >= 1"):
        fourier_features(jax.random.PRNGKey(0), 3, 0)
    with pytest.raises(ValueError, match="bandwidth must be > 0"):
        fourier_features(jax.random.PRNGKey(0), 3, 4, bandwidth=np.float32(0.0))
    f = fourier_features(jax.random.PRNGKey(0), 3, 4)
    pi = rbf_gaussian_policy(f, 2)
    with pytest.raises(ValueError, match=r"obs must have shape \(3,\)"):
        pi.mode(pi.init(jax.random.PRNGKey(1)), jnp.ones(5))


def test_running_statistics_match_numpy():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(n, 4)) * [1, 10, 0.1, 1] for n in (1, 7, 100, 33)]
    stats = running_stats_init(4, jnp.float32)
    update = jax.jit(running_stats_update)
    for b in batches:
        stats = update(stats, jnp.asarray(b, jnp.float32))
    data = np.concatenate(batches)
    assert float(stats.count) == len(data)
    np.testing.assert_allclose(np.asarray(stats.mean), data.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(stats.var), data.var(0), rtol=1e-4)
    # masked rows are left out
    masked = update(running_stats_init(4), jnp.asarray(data[:10], jnp.float32),
                    jnp.arange(10) < 4)
    np.testing.assert_allclose(np.asarray(masked.mean), data[:4].mean(0), rtol=1e-5)
    z = normalize_obs(stats, jnp.asarray(data, jnp.float32))
    np.testing.assert_allclose(np.asarray(z.mean(0)), 0.0, atol=1e-3)
    np.testing.assert_allclose(np.asarray(z.std(0)), 1.0, rtol=1e-3)
    fresh = normalize_obs(running_stats_init(4), jnp.ones(4))
    np.testing.assert_array_equal(np.asarray(fresh), 1.0)
    with pytest.raises(ValueError, match=r"batch must have shape \(N, 4\)"):
        running_stats_update(stats, jnp.ones((3, 5)))
    with pytest.raises(ValueError, match="obs must end in the statistics' size 4"):
        normalize_obs(stats, jnp.ones(3))


def test_linear_and_rbf_policies_work_with_scores():
    linear = gaussian_policy(5, 2, hidden=())
    p = linear.init(jax.random.PRNGKey(0))
    assert [leaf.shape for leaf in jax.tree.leaves(p["mean"])] == [(2,), (5, 2)]
    rbf = rbf_gaussian_policy(fourier_features(jax.random.PRNGKey(1), 5, 32), 2)
    q = rbf.init(jax.random.PRNGKey(2))
    obs = jax.random.normal(jax.random.PRNGKey(3), (10, 5))
    acts = jax.random.normal(jax.random.PRNGKey(4), (10, 2))
    G, _ = ravel_per_sample(per_sample_grads(rbf.log_prob, q, obs, acts))
    assert G.shape == (10, 32 * 2 + 2 + 2) and bool(jnp.all(jnp.isfinite(G)))
    # closed form: log N(a; 0, 1) at the zero-initialised mean
    expected = -0.5 * jnp.sum(acts[0] ** 2) - jnp.log(2 * jnp.pi)
    assert float(rbf.log_prob(q, obs[0], acts[0])) == pytest.approx(float(expected), rel=1e-5)
