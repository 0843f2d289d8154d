"""The NPG sessions (`jaxctl.experiments.npg_sessions`) and `jaxctl npg --quick`.

Oracles: the same sessions run one at a time (vmap must not change them);
the initial policy's return (training must beat it); the per-batch figures
recomputed from the PNG/JSON the command writes.
"""

import json
import os

import jax
import numpy as np
import pytest

pytest.importorskip("gymnax")

import jaxctl.experiments.npg_sessions as agent  # noqa: E402
from jaxctl.apps.cli import build_parser, main  # noqa: E402
from jaxctl.experiments.policy_noise import policy_sampler  # noqa: E402

CHUNK = 4
CONFIG = agent.NPGSettings(delta=0.002, rel_damping=0.01, bootstrap=True)


@pytest.fixture(scope="module")
def compiled():
    """One compiled, session-vmapped CartPole NPG program shared by the tests."""
    return agent.SessionTrainer(CONFIG, CHUNK)


def test_vmapped_sessions_equal_sessions_run_one_by_one(compiled):
    init, run_chunk = compiled.init_fn, compiled.chunk_fn
    keys = agent.session_keys(7, 3)
    state, metrics = run_chunk(init(keys))
    # One by one: the un-vmapped session, jitted on its own.
    s_init, s_step = agent.make_session(CONFIG)
    one = jax.jit(lambda key: jax.lax.scan(lambda s, _: s_step(s), s_init(key), None, length=CHUNK))
    for i in range(3):
        s_state, s_metrics = one(keys[i])
        np.testing.assert_array_equal(metrics.max_return[i], s_metrics.max_return)
        np.testing.assert_array_equal(metrics.num_episodes[i], s_metrics.num_episodes)
        np.testing.assert_allclose(metrics.step_size[i], s_metrics.step_size, rtol=1e-3, atol=1e-6)
        for a, b in zip(jax.tree.leaves(jax.tree.map(lambda x: x[i], state.policy)),
                        jax.tree.leaves(s_state.policy)):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_a_few_npg_batches_beat_the_initial_policy(compiled):
    init, run_chunk = compiled.init_fn, compiled.chunk_fn
    state = init(agent.session_keys(0, 3))  # 3 sessions: the same compiled program
    returns = []
    for _ in range(8):  # 32 batches
        state, metrics = run_chunk(state)
        returns.append(np.asarray(metrics.mean_return))
    returns = np.concatenate(returns, axis=1)  # (sessions, batches)
    first, last = returns[:, :4].mean(), returns[:, -4:].mean()
    assert last > 2.0 * first and last > 60.0, (first, last)
    assert np.all(np.asarray(state.batch) == 32)
    assert np.all(np.isfinite(np.asarray(metrics.step_size)))


def test_chunk_program_does_not_recompile(compiled):
    init, run_chunk = compiled.init_fn, compiled.chunk_fn
    state = init(agent.session_keys(1, 3))
    state, _ = run_chunk(state)
    before = run_chunk._cache_size()
    state, _ = run_chunk(state)
    assert run_chunk._cache_size() == before


def test_confidence_interval_and_first_batch():
    x = np.array([[1.0, 200.0, 200.0], [3.0, 190.0, 200.0]])
    mean, half = agent.confidence_interval(x)
    np.testing.assert_allclose(mean, [2.0, 195.0, 200.0])
    # t_{0.975, 1} = 12.706; std of two points d apart is d / sqrt(2).
    np.testing.assert_allclose(half, 12.7062 * np.array([np.sqrt(2), 5 * np.sqrt(2), 0]) / np.sqrt(2),
                               rtol=1e-4)
    assert agent.first_batch(mean, 200.0) == 3 and agent.first_batch(mean, 300.0) is None


def test_cli_npg_quick_writes_results_and_plots(tmp_path):
    out = tmp_path / "run"
    # Two of the four variants keep the test fast (each variant is one more compile).
    assert main(["npg", "--quick", "--batches", "8", "--variants", "npg-damped,pg-adam",
                 "--pendulum-batches", "4", "--out", str(out)]) == 0
    with open(out / "results.json") as f:
        payload = json.load(f)
    results = payload["results"]
    assert payload["command"] == "npg" and payload["settings"]["quick"] is True
    variants = results["cartpole"]
    assert set(variants) == {"npg-damped", "pg-adam"}
    for name, v in variants.items():
        max_reward = np.asarray(v["max_reward"])
        assert max_reward.shape == (3, 8), name
        assert np.all((max_reward >= 1) & (max_reward <= 200))
        assert np.all(np.asarray(v["num_episodes"]) >= 1)
        assert v["timing"]["seconds_per_batch_per_session"] > 0
    assert len(results["summary"]) == 2
    assert os.path.getsize(out / "npg_cartpole.png") > 1000
    pend = results["pendulum"]
    assert np.asarray(pend["mean_return"]).shape == (2, 4)
    assert pend["random_policy_return"] < 0
    assert os.path.getsize(out / "npg_pendulum.png") > 1000


def test_session_trainer_logs_every_batch_and_calls_back(compiled):
    trainer, seen = compiled, []
    state, log = trainer.run(trainer.initial_state(agent.session_keys(2, 3)), 2 * CHUNK,
                             lambda st, done, m: seen.append((done, m.max_return.shape)))
    assert seen == [(CHUNK, (3, CHUNK)), (2 * CHUNK, (3, CHUNK))]
    assert log["metrics"].max_return.shape == (3, 2 * CHUNK)
    assert np.all(np.asarray(state.batch) == 2 * CHUNK)
    with pytest.raises(ValueError, match="multiple of chunk"):
        trainer.run(state, CHUNK + 1)


def test_policy_sampler_draws_the_actions_of_policy_sample():
    # Gumbel-max with the noise jax.random.categorical draws from the same key: the same
    # actions (log-softmax and logits differ by a constant per observation).
    env, env_params = agent.make_env(CONFIG)
    policy, _ = agent.make_policy_value(CONFIG._replace(policy_output_scale=1.0), env, env_params)
    act, noise = policy_sampler(policy, env, env_params)
    params = policy.init(jax.random.PRNGKey(3))
    keys = jax.random.split(jax.random.PRNGKey(4), 2000)
    obs = jax.random.normal(jax.random.PRNGKey(5), (2000, 4))
    got = jax.jit(jax.vmap(lambda k, o: act(params, noise(k), o)))(keys, obs)
    want = jax.jit(jax.vmap(lambda k, o: policy.sample(params, k, o)))(keys, obs)
    assert 300 < int(np.sum(want)) < 1700  # both actions drawn often
    np.testing.assert_array_equal(got, want)


def test_cli_npg_groups_study_counts_batches_per_group(tmp_path):
    out = tmp_path / "groups"
    assert main(["npg", "--quick", "--groups", "2", "--batches", "4", "--steps", "20",
                 "--variants", "npg-damped", "--out", str(out)]) == 0
    with open(out / "results.json") as f:
        study = json.load(f)["results"]["groups"]
    assert study["seeds"] == [0, 1] and study["sessions_per_group"] == 3
    v = study["variants"]["npg-damped"]
    max_reward = np.asarray(v["max_reward"])
    assert max_reward.shape == (2, 3, 4) and np.all((max_reward >= 1) & (max_reward <= 20))
    for g in range(2):  # first batch whose group mean reaches the 20-step maximum
        hits = np.nonzero(max_reward[g].mean(axis=0) >= 20)[0]
        assert v["batches_to_mean_200"][g] == (int(hits[0]) + 1 if hits.size else None)
    assert not np.array_equal(max_reward[0], max_reward[1])  # groups start from other seeds
    assert os.path.getsize(out / "npg_groups.png") > 1000


def test_help_documents_npg_flags():
    sub = build_parser()._subparsers._group_actions[0].choices["npg"].format_help()
    for flag in ("--out", "--quick", "--single-thread", "--sessions", "--batches", "--delta",
                 "--rel-damping", "--variants", "--pendulum-batches", "--dewolf-delta", "--groups"):
        assert flag in sub
