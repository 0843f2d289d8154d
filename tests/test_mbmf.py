"""MB-MF (`jaxctl.experiments.mbmf`): behaviour cloning, DAgger labelled by MPC, NPG from it.

Oracles: a least-squares fit (numpy) of a linear policy, the MPC planner
called again on the stored DAgger states, the observation count the NPG
state carries on, and the step counts of a `jaxctl npg --mbmf-rounds` run
(its rejected flags are rows of tests/test_cli_flags.py).
"""

import json

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxctl.apps import cli
from jaxctl.envs.mbrl_tasks import FORWARD_TASKS, forward_velocity_reward
from jaxctl.experiments.aggregation import Aggregation, nagabandi_settings
from jaxctl.experiments.mbmf import behavior_clone, distill
from jaxctl.experiments.npg_mujoco import MujocoSettings, train
from jaxctl.models.features import normalize_obs, running_stats_init, running_stats_update
from jaxctl.models.policies import gaussian_policy

pytest.importorskip("mujoco")

T, N = 20, 2
TASK = FORWARD_TASKS["Swimmer-v5"]
AGG_CFG = nagabandi_settings(hidden=(16,), num_samples=16, horizon=3, episode_steps=T,
                             random_episodes=2, iterations=1, epochs=1, retrain_epochs=1,
                             batch_size=32)
NPG_CFG = MujocoSettings(task="swimmer", num_traj=2, horizon=T, hidden=(8,))


def test_behavior_clone_matches_least_squares():
    # Labels an exact affine function of z plus noise: the cloned linear mean must reach the
    # least-squares fit, and the log standard deviation must not move.
    rng = np.random.default_rng(0)
    obs = rng.normal(2.0, 3.0, (256, 3)).astype(np.float32)
    stats = running_stats_update(running_stats_init(3), jnp.asarray(obs))
    z = np.asarray(normalize_obs(stats, jnp.asarray(obs)))
    actions = (z @ rng.normal(size=(3, 2)) + [0.5, -0.2] + 0.05 * rng.normal(size=(256, 2)))
    policy = gaussian_policy(3, 2, hidden=(), log_std_init=-0.5)
    params0 = policy.init(jax.random.PRNGKey(0))
    params, losses = behavior_clone(policy, params0, stats, obs, actions, jax.random.PRNGKey(1),
                                    epochs=400, batch_size=64, learning_rate=1e-2)
    assert losses.shape == (400 * 4,)
    design = np.hstack([z, np.ones((256, 1))])
    coef = np.linalg.lstsq(design, actions, rcond=None)[0]
    fitted = np.asarray(jax.vmap(policy.mode, (None, 0))(params, jnp.asarray(z)))
    np.testing.assert_allclose(fitted, design @ coef, atol=2e-2)
    np.testing.assert_array_equal(params["log_std"], params0["log_std"])


def test_behavior_clone_errors():
    policy = gaussian_policy(3, 2, hidden=())
    p, st = policy.init(jax.random.PRNGKey(0)), running_stats_init(3)
    k = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="same N"):
        behavior_clone(policy, p, st, np.zeros((4, 3)), np.zeros((5, 2)), k, epochs=1)
    with pytest.raises(ValueError, match="N = 0"):
        behavior_clone(policy, p, st, np.zeros((0, 3)), np.zeros((0, 2)), k, epochs=1)
    with pytest.raises(ValueError, match="epochs"):
        behavior_clone(policy, p, st, np.zeros((4, 3)), np.zeros((4, 2)), k, epochs=np.int64(0))
    with pytest.raises(ValueError, match="learning_rate"):
        behavior_clone(policy, p, st, np.zeros((4, 3)), np.zeros((4, 2)), k, epochs=1,
                       learning_rate=jnp.float32(-1.0))


@pytest.fixture(scope="module")
def distilled():
    envs = [gymnasium.make("Swimmer-v5") for _ in range(N)]
    agg = Aggregation(envs, AGG_CFG, forward_velocity_reward(TASK.velocity_index,
                                                             TASK.ctrl_cost_weight),
                      jax.random.PRNGKey(0), seed=4)
    with pytest.raises(ValueError, match="round"):
        distill(agg, NPG_CFG, jax.random.PRNGKey(2))
    agg.round()
    result = distill(agg, NPG_CFG, jax.random.PRNGKey(2), dagger_iterations=1, epochs=5,
                     learning_rate=1e-2)
    yield agg, result
    for env in envs:
        env.close()


def test_distill_counts_and_labels(distilled):
    agg, res = distilled
    assert res.labelled == [N * T, 2 * N * T] and res.returns.shape == (1, N)
    assert res.env_steps == agg.buffer.count + N * T == 3 * N * T
    # The first rows are the MPC rollouts of the round, with the actions MPC took.
    np.testing.assert_array_equal(res.observations[:N * T], agg.buffer.states[N * T:2 * N * T])
    np.testing.assert_array_equal(res.labels[:N * T], agg.buffer.actions[N * T:2 * N * T])
    # The DAgger rows: MPC, planned again on the stored states at step 3 with the same key,
    # gives the stored labels.
    key = jax.random.fold_in(jax.random.fold_in(jax.random.split(jax.random.PRNGKey(2), 3)[2],
                                                0), 3)
    obs = res.observations[[2 * T + 3, 3 * T + 3]]
    mpc, _ = agg.act(agg.state.model, jnp.asarray(obs), key, jnp.zeros((N, AGG_CFG.horizon, 2)))
    np.testing.assert_allclose(res.labels[[2 * T + 3, 3 * T + 3]], mpc, rtol=0, atol=1e-6)
    assert np.all(np.isfinite(res.losses)) and np.all(np.isfinite(res.returns))


def test_npg_continues_from_the_distilled_state(distilled):
    _, res = distilled
    log, state = train(NPG_CFG, seed=0, iterations=1, init_state=res.state, return_state=True)
    # The statistics carry on from the distilled ones (MPC rows) with the batch's steps added.
    assert float(state.stats.count) == N * T + log["env_steps"][-1]
    assert np.isfinite(log["returns"][0])
    fresh_log, fresh = train(NPG_CFG, seed=0, iterations=1, return_state=True)
    assert float(fresh.stats.count) == fresh_log["env_steps"][-1]


def test_mbmf_command_writes_both_curves(tmp_path):
    out = tmp_path / "run"
    cli.main(["npg", "--quick", "--task", "swimmer", "--mbmf-rounds", "1", "--seeds", "1",
              "--iterations", "1", "--out", str(out)])
    res = json.loads((out / "results.json").read_text())["results"]["mbmf"]["swimmer"]
    run = res["runs"][0]
    # --quick: 2 random + 2 MPC rollouts of 50 steps, then 1 DAgger iteration of 2 rollouts.
    assert run["model_based_steps"] == 6 * 50 and len(run["mpc_returns"]) == 1
    finetune, scratch = run["finetune"], res["scratch_runs"][0]
    # The fine-tuning counts the model-based steps; NPG from scratch starts at zero.
    assert finetune["env_steps"][0] == 300 + scratch["env_steps"][0]
    assert len(res["mbmf"]["returns"]) == len(res["scratch"]["returns"]) == 1
    assert (out / "mbmf_swimmer.png").stat().st_size > 0
