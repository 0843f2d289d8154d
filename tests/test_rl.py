"""Returns, GAE, episode statistics and rollouts (`jaxctl.rl`).

Oracles: plain numpy loops written from the definitions, and the
environment's own invariants (rewards, resets, time limits).
"""

import functools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxctl.models.policies import categorical_policy, gaussian_policy
from jaxctl.control.rl import episode_ends, episode_stats, gae, rollout, score_gradient

gymnax = pytest.importorskip("gymnax")

EPS32 = float(np.finfo(np.float32).eps)


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
    # A T-step backward recursion in float32: errors grow like T eps.
    tol = 4 * len(r) * EPS32
    np.testing.assert_allclose(adv, adv_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(ret, ret_ref, rtol=tol, atol=tol)


def test_gae_lambda_one_without_bootstrap_is_monte_carlo_minus_value():
    # DeWolf (2018): discounted return to the episode end (cut episodes stop at the cut).
    rewards = np.ones(7)
    ends = np.array([0, 0, 1, 0, 0, 0, 1], bool)
    values = np.linspace(0.0, 1.0, 7)
    next_values = np.r_[values[1:], 100.0]  # V(s_{t+1}); never used after an end
    adv, ret = gae(jnp.asarray(rewards, jnp.float32), jnp.asarray(values, jnp.float32),
                   jnp.asarray(next_values, jnp.float32), jnp.asarray(ends), jnp.asarray(ends),
                   0.5, 1.0)
    mc = np.array([1.75, 1.5, 1.0, 1.875, 1.75, 1.5, 1.0])
    np.testing.assert_allclose(ret, mc, rtol=8 * EPS32)
    np.testing.assert_allclose(adv, mc - values, rtol=8 * EPS32, atol=8 * EPS32)


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
    np.testing.assert_allclose(stats.mean_return, np.mean(returns), rtol=8 * EPS32)


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


def env_step_scan(env, env_params, act, params, key, T):
    """The rollout as a scan of gymnax's own `env.step`, keys split as documented."""
    key_reset, key_run = jax.random.split(key)

    def body(carry, step_key):
        obs, state = carry
        key_act, key_env = jax.random.split(step_key)
        action = act(params, key_act, obs)
        obs_next, state, reward, term, trunc, info = env.step(key_env, state, action, env_params)
        return (obs_next, state), (obs, action, reward, term, trunc, info["final_observation"])

    return lax.scan(body, env.reset(key_reset, env_params), jax.random.split(key_run, T))[1]


def test_presampled_rollout_equals_env_step_scan(cartpole_rollout):
    # The resets drawn before the scan give the trajectory of gymnax's own step, bit for
    # bit (compiled alike: an eager loop differs by an ulp in the dynamics).
    traj, _ = cartpole_rollout
    env, env_params = gymnax.make("CartPole-v1")
    env_params = env_params.replace(max_steps_in_episode=15)
    pi = categorical_policy(4, 2)
    ref = jax.jit(lambda p, k: env_step_scan(env, env_params, pi.sample, p, k, 120))(
        pi.init(jax.random.PRNGKey(0)), jax.random.PRNGKey(3))
    assert int(ref[4].sum()) >= 3  # several time-limit resets inside the batch
    for got, want in zip(traj, ref):
        np.testing.assert_array_equal(got, np.asarray(want).astype(got.dtype))


def test_rollout_noise_drawn_before_the_loop_equals_sampling_in_it(cartpole_rollout):
    # Softmax sampling is argmax(logits + Gumbel(key)): the same noise drawn before the
    # (here unrolled) scan gives the actions `Policy.sample` draws inside it, at every step.
    from jaxctl.models.mlp import mlp_apply

    want, _ = cartpole_rollout
    env, env_params = gymnax.make("CartPole-v1")
    env_params = env_params.replace(max_steps_in_episode=15)
    pi = categorical_policy(4, 2)
    act = lambda p, z, obs: jnp.argmax(mlp_apply(p, obs, "tanh") + z).astype(jnp.int32)
    noise = lambda k: jax.random.gumbel(k, (2,))
    got, _ = jax.jit(lambda p, k: rollout(env, env_params, act, p, k, 120, noise=noise, unroll=3))(
        pi.init(jax.random.PRNGKey(0)), jax.random.PRNGKey(3))
    assert 0 < int(want.actions.sum()) < 120
    np.testing.assert_array_equal(got.actions, want.actions)
    np.testing.assert_array_equal(got.terminated | got.truncated, want.terminated | want.truncated)
    # Compiled differently, the dynamics may differ by an ulp here and there.
    np.testing.assert_allclose(got.obs, want.obs, rtol=0, atol=64 * EPS32)


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
    with pytest.raises(ValueError, match="unroll"):
        rollout(env, env_params, pi.sample, pi.init(jax.random.PRNGKey(0)), jax.random.PRNGKey(1), 5,
                unroll=0)


# ------------------------------------------------- edges fail loudly (issue 9)


AXIS_TYPES = [jax.sharding.AxisType.Explicit, jax.sharding.AxisType.Auto]


@pytest.mark.parametrize("axis_type", AXIS_TYPES, ids=lambda t: t.name)
def test_gae_and_episode_stats_inside_shard_map(axis_type):
    # A carry started from a constant is not device-varying: shard_map's default
    # check_vma rejects the scan. The carries come from the inputs instead.
    mesh = jax.make_mesh((1,), ("d",), axis_types=(axis_type,))
    spec = jax.sharding.PartitionSpec("d")
    r, v, nv, term, ends = random_series(3)
    sharding = jax.sharding.NamedSharding(mesh, spec)
    arrays = [jax.device_put(jnp.asarray(x[None], jnp.float32 if x.dtype != bool else bool),
                             sharding) for x in (r, v, nv, term, ends)]

    def per_device(r, v, nv, term, ends):
        adv, ret = gae(r[0], v[0], nv[0], term[0], ends[0], 0.99, 0.95)
        stats = episode_stats(r[0], ends[0])
        return adv[None], ret[None], stats.max_return[None]

    adv, ret, max_return = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=spec,
                                                 out_specs=spec))(*arrays)
    adv_ref, ret_ref = gae_loop(r, v, nv, term, ends, 0.99, 0.95)
    tol = 4 * len(r) * EPS32
    np.testing.assert_allclose(adv[0], adv_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(ret[0], ret_ref, rtol=tol, atol=tol)
    assert float(max_return[0]) == float(episode_stats(jnp.asarray(r, jnp.float32),
                                                       jnp.asarray(ends)).max_return)


X64_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    assert jax.config.jax_enable_x64
    from jaxctl.control.rl import episode_stats, gae, score_gradient
    from jaxctl.core.jacobians import per_sample_grads
    from jaxctl.models.policies import categorical_policy
    from jaxctl.optim.npg import npg

    T = 16
    rng = np.random.default_rng(0)
    rewards = jnp.asarray(rng.normal(size=T), jnp.float32)   # float32 from the environment
    values = jnp.asarray(rng.normal(size=T))                  # float64 from a float64 input
    ends = jnp.asarray(rng.random(T) < 0.2).at[-1].set(True)
    adv, ret = jax.jit(gae)(rewards, values, values, ends, ends, 0.99, 0.95)
    assert adv.dtype == ret.dtype == jnp.float64, (adv.dtype, ret.dtype)
    stats = episode_stats(jnp.asarray(rewards, jnp.float64), ends)
    assert stats.max_return.dtype == jnp.float64

    pi = categorical_policy(4, 2, (8,))
    params = pi.init(jax.random.PRNGKey(0))
    obs = jnp.asarray(rng.normal(size=(T, 4)))
    actions = jnp.asarray(rng.integers(0, 2, T), jnp.int32)
    scores = per_sample_grads(pi.log_prob, params, obs, actions)
    grads = jax.tree.map(jnp.negative, score_gradient(scores, adv))
    opt = npg(0.01, rel_damping=0.01)
    update = jax.jit(lambda g, s: opt.update(g, s, scores=scores))
    state = opt.init(params)
    for _ in range(2):   # the state keeps its dtypes: no retrace, no carry mismatch
        updates, state = update(grads, state)
    assert state.step_size.dtype == jnp.float32 and int(state.count) == 2
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
    print("x64 ok")
""")


def test_gae_and_npg_update_under_x64_in_a_subprocess():
    # Under x64 the gae carry was float32 in, float64 out (the NPG agent crashed).
    env = {**os.environ, "JAX_ENABLE_X64": "1"}
    out = subprocess.run([sys.executable, "-c", X64_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0 and "x64 ok" in out.stdout, out.stderr[-2000:]


def test_integer_rewards_and_numpy_hyperparameters():
    r, v, nv, term, ends = random_series(4)
    ints = np.round(3 * r).astype(np.int32)
    adv, _ = gae(jnp.asarray(ints), jnp.asarray(v, jnp.float32), jnp.asarray(nv, jnp.float32),
                 jnp.asarray(term), jnp.asarray(ends), np.float32(0.9), np.float64(0.5))
    adv_ref, _ = gae_loop(ints.astype(np.float64), v, nv, term, ends, 0.9, 0.5)
    tol = 4 * len(r) * EPS32
    np.testing.assert_allclose(adv, adv_ref, rtol=tol, atol=tol)
    stats = episode_stats(jnp.array([1, 2, 3, 4]), jnp.array([0, 1, 0, 1], bool))
    np.testing.assert_allclose([stats.max_return, stats.mean_return], [7.0, 5.0])
    g = score_gradient({"w": jnp.array([[1, 2], [3, 4]])}, jnp.array([1, 2]))
    np.testing.assert_allclose(g["w"], [3.5, 5.0])
    x, b = jnp.zeros(5), jnp.zeros(5, bool)
    for bad in (np.float32(1.5), jnp.float32(-0.1), float("nan")):
        with pytest.raises(ValueError, match="gamma"):
            gae(x, x, x, b, b, bad, 0.9)
        with pytest.raises(ValueError, match="lam"):
            gae(x, x, x, b, b, 0.9, bad)


def test_empty_time_series_raise_naming_the_argument():
    x, b = jnp.zeros(0), jnp.zeros(0, bool)
    with pytest.raises(ValueError, match="rewards.*at least one time step"):
        gae(x, x, x, b, b, 0.9, 0.9)
    with pytest.raises(ValueError, match="rewards.*at least one time step"):
        episode_stats(x, b)  # "zero-size array to reduction operation" before
    with pytest.raises(ValueError, match="advantages"):
        score_gradient({"w": jnp.zeros((0, 2))}, x)  # NaN before
