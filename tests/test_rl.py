"""Returns, GAE, episode statistics and rollouts (`jaxctl.rl`).

Oracles: plain numpy loops written from the definitions, and the
environment's own invariants (rewards, resets, time limits).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxctl.models.policies import categorical_policy, gaussian_policy
from jaxctl.control.rl import episode_ends, episode_stats, gae, rollout, score_gradient

gymnax = pytest.importorskip("gymnax")


def gae_loop(r, v, nv, term, ends, gamma, lam):
    """GAE by the textbook backward loop, float64."""
    T = len(r)
    adv = np.zeros(T)
    running = 0.0
    for t in reversed(range(T)):
        if ends[t]:
            running = 0.0
        delta = r[t] + (0.0 if term[t] else gamma * nv[t]) - v[t]
        running = delta + gamma * lam * running
        adv[t] = running
    return adv, adv + v


def random_series(seed, T=40):
    rng = np.random.default_rng(seed)
    r, v, nv = rng.normal(size=(3, T))
    ends = rng.random(T) < 0.15
    ends[-1] = True
    term = ends & (rng.random(T) < 0.6)
    return r, v, nv, term, ends


@pytest.mark.parametrize("gamma,lam", [(0.97, 1.0), (0.99, 0.95), (0.9, 0.0), (1.0, 0.5)])
def test_gae_matches_numpy_loop(gamma, lam):
    r, v, nv, term, ends = random_series(0)
    adv, ret = jax.jit(gae, static_argnums=(5, 6))(
        *(jnp.asarray(x, jnp.float32) if x.dtype != bool else jnp.asarray(x)
          for x in (r, v, nv, term, ends)), gamma, lam)
    adv_ref, ret_ref = gae_loop(r, v, nv, term, ends, gamma, lam)
    np.testing.assert_allclose(adv, adv_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, ret_ref, rtol=1e-5, atol=1e-5)


def test_gae_lambda_one_without_bootstrap_is_monte_carlo_minus_value():
    # The seed: discounted return to the episode end (cut episodes stop at the cut).
    rewards = np.ones(7)
    ends = np.array([0, 0, 1, 0, 0, 0, 1], bool)
    values = np.linspace(0.0, 1.0, 7)
    next_values = np.r_[values[1:], 100.0]  # V(s_{t+1}); never used after an end
    adv, ret = gae(jnp.asarray(rewards, jnp.float32), jnp.asarray(values, jnp.float32),
                   jnp.asarray(next_values, jnp.float32), jnp.asarray(ends), jnp.asarray(ends),
                   0.5, 1.0)
    mc = np.array([1.75, 1.5, 1.0, 1.875, 1.75, 1.5, 1.0])
    np.testing.assert_allclose(ret, mc, rtol=1e-6)
    np.testing.assert_allclose(adv, mc - values, rtol=1e-6, atol=1e-7)


def test_gae_validates_shapes_and_gamma():
    x = jnp.zeros(5)
    b = jnp.zeros(5, bool)
    with pytest.raises(ValueError, match=r"\(T,\)"):
        gae(x, jnp.zeros(4), x, b, b, 0.9, 0.9)
    with pytest.raises(ValueError, match="gamma"):
        gae(x, x, x, b, b, 1.5, 0.9)


def test_episode_stats_matches_loop():
    rng = np.random.default_rng(1)
    r = rng.integers(0, 3, 30).astype(np.float32)
    ends = rng.random(30) < 0.2
    ends[-1] = True
    stats = episode_stats(jnp.asarray(r), jnp.asarray(ends))
    returns, total = [], 0.0
    for rt, e in zip(r, ends):
        total += rt
        if e:
            returns.append(total)
            total = 0.0
    assert int(stats.num_episodes) == len(returns)
    np.testing.assert_allclose(stats.max_return, max(returns))
    np.testing.assert_allclose(stats.mean_return, np.mean(returns), rtol=1e-6)


def test_score_gradient_matches_numpy():
    rng = np.random.default_rng(2)
    s = {"a": rng.normal(size=(6, 2, 3)).astype(np.float32), "b": rng.normal(size=(6,)).astype(np.float32)}
    adv = rng.normal(size=6).astype(np.float32)
    g = score_gradient(jax.tree.map(jnp.asarray, s), jnp.asarray(adv))
    np.testing.assert_allclose(g["a"], np.einsum("t,tij->ij", adv, s["a"]) / 6, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g["b"], adv @ s["b"] / 6, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def cartpole_rollout():
    env, env_params = gymnax.make("CartPole-v1")
    env_params = env_params.replace(max_steps_in_episode=15)  # force time-limit truncations
    pi = categorical_policy(4, 2)
    params = pi.init(jax.random.PRNGKey(0))
    run = jax.jit(functools.partial(rollout, env, env_params, pi.sample, num_steps=120))
    traj, end = run(params, jax.random.PRNGKey(3))
    return jax.tree.map(np.asarray, traj), end


def test_rollout_cartpole_invariants(cartpole_rollout):
    traj, (last_obs, _) = cartpole_rollout
    assert traj.obs.shape == (120, 4) and traj.actions.shape == (120,)
    assert traj.actions.dtype == np.int32
    np.testing.assert_array_equal(traj.rewards, 1.0)  # CartPole pays 1 per step
    ends = traj.terminated | traj.truncated
    assert ends.any() and traj.truncated.any()
    # Inside an episode the next observation is the next step's observation...
    inside = ~ends[:-1]
    np.testing.assert_array_equal(traj.next_obs[:-1][inside], traj.obs[1:][inside])
    # ...after an end the environment was reset: a fresh state in [-0.05, 0.05]^4.
    assert np.all(np.abs(traj.obs[1:][ends[:-1]]) <= 0.05)
    # No episode is longer than the time limit, and time-limit ends are exactly 15 long.
    lengths, n = [], 0
    for e in ends:
        n += 1
        if e:
            lengths.append(n)
            n = 0
    assert max(lengths) <= 15
    np.testing.assert_array_equal(np.asarray(lengths)[traj.truncated[ends]], 15)
    stats = episode_stats(jnp.asarray(traj.rewards), episode_ends(jax.tree.map(jnp.asarray, traj)))
    assert float(stats.max_return) == max(lengths + [n])


def test_rollout_pendulum_gaussian_shapes():
    env, env_params = gymnax.make("Pendulum-v1")
    pi = gaussian_policy(3, 1, hidden=(8,), action_scale=2.0)
    traj, _ = jax.jit(lambda p, k: rollout(env, env_params, pi.sample, p, k, 30))(
        pi.init(jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
    assert traj.obs.shape == (30, 3) and traj.actions.shape == (30, 1)
    assert np.all(np.asarray(traj.rewards) <= 0) and not np.any(np.asarray(traj.terminated))


def test_rollout_rejects_bad_num_steps():
    env, env_params = gymnax.make("CartPole-v1")
    pi = categorical_policy(4, 2)
    with pytest.raises(ValueError, match="num_steps"):
        rollout(env, env_params, pi.sample, pi.init(jax.random.PRNGKey(0)), jax.random.PRNGKey(1), 0)
