"""The aggregation loop over N gymnasium or gymnax environments (`jaxctl.experiments.aggregation`).

Oracles: a replay of the recorded actions in a fresh environment (returns and
stored transitions), gymnax's own `reset_env` / `step_env` with the same keys
(the gymnax adapter), single-state plans (the batched call), hand-computed
flip fractions and t-intervals, the CLI's exit code 2.
"""

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxctl.apps import cli
from jaxctl.control.planning import jit_planner
from jaxctl.envs.gymnax_gymnasium import GymnaxAsGymnasium
from jaxctl.envs.mbrl_tasks import (FORWARD_TASKS, forward_velocity_reward, pendulum_reward,
                                    upright_reward)
from jaxctl.experiments.aggregation import (PITCH_INDEX, Aggregation, environments,
                                            flipped_fraction, nagabandi_settings)
from jaxctl.experiments.aggregation_study import t_interval
import jaxctl.models.dynamics as dyn

T, N = 50, 2
CFG = nagabandi_settings(hidden=(16,), num_samples=16, horizon=3, episode_steps=T,
                         random_episodes=3, iterations=1, epochs=1, retrain_epochs=1,
                         batch_size=32)
TASK = FORWARD_TASKS["HalfCheetah-v5"]
REWARD = forward_velocity_reward(TASK.velocity_index, TASK.ctrl_cost_weight)


@pytest.fixture(scope="module")
def run():
    envs = [gymnasium.make("HalfCheetah-v5") for _ in range(N)]
    agg = Aggregation(envs, CFG, REWARD, jax.random.PRNGKey(0), seed=7,
                      pitch_index=PITCH_INDEX["HalfCheetah-v5"])
    count_random = agg.buffer.count
    res = agg.round()
    yield agg, count_random, res
    for env in envs:
        env.close()


def test_round_counts_and_shapes(run):
    agg, count_random, res = run
    # 3 random rollouts from 2 environments: a batch of 2, then a batch of 1.
    assert agg.random_returns.shape == (3,) and count_random == 3 * T
    assert res.trained_on == 3 * T and res.steps == N * T and agg.buffer.count == 5 * T
    assert res.returns.shape == (N,) and res.flipped.shape == (N,)
    assert np.all((res.flipped >= 0) & (res.flipped <= 1))
    assert res.plan_seconds > 0 and res.rollout_seconds >= res.env_seconds > 0
    assert np.isfinite(res.loss) and agg.rounds_done == 1


def test_returns_and_buffer_match_a_replay(run):
    # MuJoCo is deterministic: replaying the stored actions of MPC rollout i from the same
    # reset seed must give the stored observations and the reported return.
    agg, _, res = run
    for i in range(N):
        env = gymnasium.make("HalfCheetah-v5")
        obs, _ = env.reset(seed=7 * 100_000 + 1000 + i)
        rows = slice(3 * T + i * T, 3 * T + (i + 1) * T)
        np.testing.assert_allclose(agg.buffer.states[rows][0], obs, rtol=0, atol=1e-6)
        total = 0.0
        for a in agg.buffer.actions[rows]:
            obs, r, *_ = env.step(a)
            total += r
        env.close()
        np.testing.assert_allclose(agg.buffer.next_states[rows][-1], obs, rtol=1e-5, atol=1e-5)
        assert abs(total - res.returns[i]) <= 1e-4 * max(1.0, abs(total))


def test_batched_plan_equals_single_plans(run):
    agg, _, _ = run
    model = agg.state.model
    obs = jnp.asarray(agg.buffer.states[[0, 60, 170]])
    key = jax.random.PRNGKey(3)
    prev = jnp.zeros((3, CFG.horizon, 6), jnp.float32)
    actions, _ = agg.act(model, obs, key, prev)
    plan = jit_planner("random_shooting", num_samples=CFG.num_samples, horizon=CFG.horizon,
                       chunk_size=CFG.num_samples)
    dp = jax.tree_util.Partial(dyn.dynamics_predict, model)
    for i, k in enumerate(jax.random.split(key, 3)):
        single = plan(dp, REWARD, obs[i], k, action_low=agg.low, action_high=agg.high)
        np.testing.assert_allclose(actions[i], single.actions[0], rtol=0,
                                   atol=8 * float(jnp.finfo(jnp.float32).eps))


def test_bad_environment_lists():
    with pytest.raises(ValueError, match="N = 0"):
        environments([])
    envs = [gymnasium.make("HalfCheetah-v5"), gymnasium.make("Swimmer-v5")]
    with pytest.raises(ValueError, match="observation"):
        environments(envs)
    vec = gymnasium.vector.SyncVectorEnv([lambda: gymnasium.make("Swimmer-v5")] * 2)
    assert len(environments(vec)) == 2 and len(environments(envs[1])) == 1
    for env in (*envs, vec):
        env.close()


def test_gymnax_adapter_matches_gymnax_steps():
    import gymnax

    env, params = gymnax.make("Pendulum-v1")
    params = params.replace(max_steps_in_episode=4)
    wrapped = GymnaxAsGymnasium(env, params)
    assert wrapped.observation_space.shape == (3,) and wrapped.action_space.shape == (1,)
    np.testing.assert_array_equal(wrapped.action_space.low, [-2.0])
    obs, _ = wrapped.reset(seed=5)
    # The same keys by hand: PRNGKey(seed) split once for the reset, then once per step.
    key, k = jax.random.split(jax.random.PRNGKey(5))
    ref_obs, state = env.reset_env(k, params)
    np.testing.assert_allclose(obs, ref_obs, rtol=0, atol=1e-6)
    for t, a in enumerate([0.5, -2.0, 1.0, 0.0]):
        obs, r, terminated, truncated, _ = wrapped.step(np.array([a], np.float32))
        key, k = jax.random.split(key)
        ref_obs, state, ref_r, _, _ = env.step_env(k, state, jnp.array([a]), params)
        np.testing.assert_allclose(obs, ref_obs, rtol=1e-6, atol=1e-6)
        assert abs(r - float(jnp.squeeze(ref_r))) <= 1e-5 * max(1.0, abs(r))
        assert terminated is False and truncated is (t == 3)


def test_gymnax_adapter_errors():
    import gymnax

    with pytest.raises(TypeError, match="env must be a gymnax environment"):
        GymnaxAsGymnasium(gymnasium.make("Swimmer-v5"))
    with pytest.raises(ValueError, match="continuous"):
        GymnaxAsGymnasium(gymnax.make("CartPole-v1")[0])
    wrapped = GymnaxAsGymnasium(gymnax.make("Pendulum-v1")[0])
    with pytest.raises(RuntimeError, match="reset"):
        wrapped.step(np.zeros(1, np.float32))
    wrapped.reset(seed=0)
    with pytest.raises(ValueError, match=r"action must have shape \(1,\)"):
        wrapped.step(np.zeros(2, np.float32))


def test_aggregation_round_on_gymnax_objects():
    import gymnax

    env, params = gymnax.make("Pendulum-v1")
    assert len(environments(env)) == 1  # one object is one environment
    cfg = CFG._replace(episode_steps=10, random_episodes=2)
    agg = Aggregation([env, env], cfg, pendulum_reward, jax.random.PRNGKey(1), seed=3)
    res = agg.round()
    assert res.returns.shape == (2,) and agg.buffer.count == 4 * 10 and np.isnan(res.flipped).all()
    # Replaying MPC rollout 1's stored actions in gymnax itself gives the reported return.
    rows = slice(3 * 10, 4 * 10)
    key, k = jax.random.split(jax.random.PRNGKey(3 * 100_000 + 1000 + 1))
    obs, state = env.reset_env(k, params)
    np.testing.assert_allclose(agg.buffer.states[rows][0], obs, rtol=0, atol=1e-6)
    total = 0.0
    for a in agg.buffer.actions[rows]:
        key, k = jax.random.split(key)
        obs, state, r, _, _ = env.step_env(k, state, jnp.asarray(a), params)
        total += float(jnp.squeeze(r))
    assert abs(total - res.returns[1]) <= 1e-4 * max(1.0, abs(total))


def test_upright_reward_by_hand():
    base = lambda s, a, s2: s2[0] - 0.1 * jnp.sum(a ** 2)
    r = upright_reward(base, 1, 4.0)
    a = jnp.array([1.0, -1.0])
    # Within 90 degrees the reward is the base one; past it, 4 per radian beyond pi/2.
    assert float(r(jnp.zeros(2), a, jnp.array([2.0, 1.5]))) == pytest.approx(2.0 - 0.2)
    assert float(r(jnp.zeros(2), a, jnp.array([2.0, -3.0]))) == pytest.approx(
        2.0 - 0.2 - 4.0 * (3.0 - np.pi / 2), rel=1e-6)
    with pytest.raises(ValueError, match="weight"):
        upright_reward(base, 1, np.float32(-1.0))
    with pytest.raises(ValueError, match="pitch_index 5"):
        upright_reward(base, 5, 1.0)(jnp.zeros(2), a, jnp.zeros(2))


def test_flipped_fraction_and_t_interval():
    obs = np.zeros((5, 3))
    obs[:, 1] = [3.0, 0.1, -2.0, 1.0, 1.6]  # row 0 is the reset state, not counted
    assert flipped_fraction(obs, 1) == 0.5
    assert np.isnan(flipped_fraction(obs, None))
    mean, half = t_interval([1.0, 2.0, 3.0])
    # t_{0.975, 2} = 4.302653 (tables); s = 1.
    assert mean == 2.0 and abs(half - 4.302653 / np.sqrt(3)) < 1e-5


@pytest.mark.parametrize("flags", [
    ["--seeds", "2"],
    ["--rollouts-per-round", "0"],
    ["--rollouts-per-round", "2", "--tasks", "pendulum"],
    ["--rollouts-per-round", "2", "--iterations", "0"],
    ["--rollouts-per-round", "2", "--time-limit", "-1"],
    ["--rollouts-per-round", "2", "--epochs", "0"],
])
def test_bad_flags_exit_2(flags, capsys, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        cli.main(["mpc", "--out", str(out), *flags])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_summary_and_plot_of_a_study(tmp_path):
    from jaxctl.apps.mbrl_plots import aggregation_plot
    from jaxctl.experiments.aggregation_study import summarize

    out = {"env_steps": [10_000, 20_000], "returns": [[-200.0, 10.0], [-100.0, 30.0]],
           "flipped_fraction": [[0.5, 0.0], [1.0, 0.25]], "rollouts_per_round": 10,
           "episode_steps": 1000, "random_return_mean": -280.0, "rounds_requested": 9,
           "mpc_steps": 40_000, "round_seconds": [100.0, 100.0]}
    res = summarize(out, 250.0)
    assert res["mean_return"] == [-150.0, 20.0] and res["rounds_completed"] == 2
    # Two seeds: t_{0.975, 1} = 12.7062, s = |a - b| / sqrt(2), half = t s / sqrt(2).
    assert abs(res["ci95_return"][0] - 12.7062 * 50.0) < 0.01
    assert res["loop_env_steps_per_second"] == 200.0
    png = tmp_path / "a.png"
    aggregation_plot({"HalfCheetah-v5": res}, str(png))
    assert png.stat().st_size > 10_000
