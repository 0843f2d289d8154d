"""The spiking CartPole controller against exact bounds and a NumPy integrate-and-fire oracle."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxctl.apps.spiking_cartpole_plot import cartpole_plot
from jaxctl.experiments import spiking_cartpole as sc
from jaxctl.experiments.npg_sessions import make_env
from jaxctl.models.mlp import mlp_init
from jaxctl.spiking.network import dense, rate_apply

DT = 0.001
K = 20  # CartPole's 20 ms step in 1 ms network steps
STEPS = 60
SETTINGS = sc.CartpoleSpikingSettings.quick()
ENV, ENV_PARAMS = make_env(sc.npg_settings(SETTINGS))
# A fixed random ReLU policy 4-16-2 with logits of order 1 (no training needed).
PARAMS = mlp_init(jax.random.PRNGKey(3), (4, 16, 2), output_scale=2.0)
KEYS = jax.random.split(jax.random.PRNGKey(4), 4)


def _episodes(tau):
    net = sc.policy_network(2, 1.0, tau, DT)
    return jax.jit(jax.vmap(lambda p, key: sc.evaluate(
        lambda q: sc.spiking_controller(net, q, K), p, key[None], ENV, ENV_PARAMS, STEPS),
        in_axes=(None, 0)))


@pytest.fixture(scope="module")
def no_synapse_run():
    """Scale 2048 folded into the weights (a power of 2: the fold is exact), no synapse."""
    folded = sc.fold_scale(jax.tree.map(lambda x: x[None], PARAMS), 2048.0)
    eps = _episodes(None)(folded, KEYS)
    return jax.tree.map(lambda x: x[:, 0, 0], eps)  # (keys, T, ...)


def _rate_logits(obs):
    return jax.vmap(jax.vmap(lambda o: rate_apply((dense(), dense()), PARAMS, o)[0]))(obs)


def test_large_scale_reproduces_the_rate_policy(no_synapse_run):
    eps = no_synapse_run
    rate = np.asarray(_rate_logits(eps.obs), np.float64)
    spiking = np.asarray(eps.logits, np.float64)
    # Reset by subtraction keeps 0 <= v < 1, so a window of k steps holds
    # c = s r k dt - (v_end - v_start) spikes: |c / (s k dt) - r| < 1 / (s k dt), and
    # the logit a is off by less than sum_j |W2[j, a]| / (s k dt) (exact bound; x1.01
    # plus 1e3 eps for the float32 sums).
    w2 = np.abs(np.asarray(PARAMS[1]["w"], np.float64)).sum(axis=0)
    eps32 = float(jnp.finfo(eps.logits.dtype).eps)
    bound = 1.01 * w2 / (2048 * K * DT) + 1e3 * eps32 * np.abs(rate).max()
    assert np.all(np.abs(spiking - rate) <= bound), np.abs(spiking - rate).max(axis=(0, 1))
    same = np.asarray(eps.actions) == rate.argmax(-1)
    assert same.mean() >= 0.9, same.mean()
    # a disagreement can only be a near tie of the rate logits
    gap = np.abs(rate[..., 0] - rate[..., 1])
    assert np.all(gap[~same] <= bound.sum())
    assert np.asarray(eps.spikes).sum() > 0


def _oracle_logits(params, obs_seq, s, tau, carry=True):
    """NumPy float64: window-mean read-out for each held observation, Nengo's step order."""
    w1, b1 = (np.asarray(params[0][n], np.float64) for n in ("w", "b"))
    w2, b2 = (np.asarray(params[1][n], np.float64) for n in ("w", "b"))
    a = np.exp(-DT / tau)
    v, syn, out = np.zeros(w1.shape[1]), np.zeros(w1.shape[1]), []
    for obs in obs_seq:
        if not carry:
            v, syn = np.zeros_like(v), np.zeros_like(syn)
        window = []
        for _ in range(K):
            v = v + np.maximum(s * (obs @ w1 + b1), 0) * DT
            n = np.floor(v)
            v -= n
            seen = syn  # the synapse delays by one step
            syn = a * syn + (1 - a) * (n / DT) / s
            window.append(seen @ w2 + b2)
        out.append(np.mean(window, axis=0))
    return np.array(out)


@pytest.fixture(scope="module")
def synapse_run():
    folded = sc.fold_scale(jax.tree.map(lambda x: x[None], PARAMS), 64.0)
    eps = _episodes(0.005)(folded, KEYS[:1])
    return jax.tree.map(lambda x: x[0, 0, 0], eps)  # (T, ...)


def test_state_carries_across_env_steps(synapse_run):
    eps = synapse_run
    n = 4
    obs = np.asarray(eps.obs[:n], np.float64)
    carried = _oracle_logits(PARAMS, obs, 64.0, 0.005)
    got = np.asarray(eps.logits[:n], np.float64)
    # float32 against float64 over n k = 80 steps of 16-term sums: 1e3 eps of the scale
    tol = 1e3 * float(jnp.finfo(eps.logits.dtype).eps) * np.abs(carried).max()
    np.testing.assert_allclose(got, carried, rtol=0, atol=tol)
    # the carry matters: restarting voltages and synapses every env step differs
    reset = _oracle_logits(PARAMS, obs, 64.0, 0.005, carry=False)
    assert np.abs(reset[1:] - got[1:]).max() > 100 * tol
    np.testing.assert_array_equal(np.asarray(eps.actions[:n]), carried.argmax(-1))


def test_fold_scale_is_the_networks_scale_bitwise():
    obs = jnp.array([0.03, -0.4, 0.05, 0.7])
    api = sc.policy_network(2, 64.0, 0.005, DT).run(PARAMS, obs, 50, probe=True)
    folded = sc.policy_network(2, 1.0, 0.005, DT).run(sc.fold_scale(PARAMS, 64.0), obs, 50,
                                                      probe=True)
    np.testing.assert_array_equal(np.asarray(api.output), np.asarray(folded.output))
    np.testing.assert_array_equal(np.asarray(api.spikes[0]), np.asarray(folded.spikes[0]))
    assert np.asarray(api.spikes[0]).sum() > 0


@pytest.fixture(scope="module")
def quick_study():
    return sc.run_study(SETTINGS)


def test_quick_study_returns_its_figures(quick_study):
    res = quick_study
    json.dumps(res)
    assert set(res) >= {"rate_reward", "spiking", "default", "steps_per_env_step", "dt",
                        "env_dt", "episode_limit", "wall_seconds", "settings"}
    assert res["steps_per_env_step"] == K and res["env_dt"] == pytest.approx(0.02)
    assert len(res["spiking"]) == len(SETTINGS.scales) * len(SETTINGS.taus)
    limit = SETTINGS.max_episode_steps
    assert res["rate_reward"]["mean_rate_hz"] > 0  # the rate policy's mean hidden activation
    for rec in [res["rate_reward"], *res["spiking"]]:
        assert 0 < rec["mean_reward"] <= limit
        assert rec["episodes"] == SETTINGS.policy_seeds * SETTINGS.episodes
    assert (res["default"]["scale"], res["default"]["tau"]) in \
        {(r["scale"], r["tau"]) for r in res["spiking"]}
    # firing rates grow in proportion to the scale (same policies, more spikes)
    rates = [r["mean_rate_hz"] for r in res["spiking"]]
    assert rates[-1] > rates[0]


def test_cartpole_plot_writes_a_png(quick_study, tmp_path):
    path = cartpole_plot(quick_study, str(tmp_path / "cartpole.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("env_dt, dt, match", [
    (0.02, 0.05, "network steps"), (0.02, 0.003, "network steps"), (0.02, 0.0, "dt must be")])
def test_bad_steps_per_env_step(env_dt, dt, match):
    with pytest.raises(ValueError, match=match):
        sc.steps_per_env_step(env_dt, dt)


@pytest.mark.parametrize("field, value, match", [
    ("scales", (0.0,), "scales"), ("scales", (-2.0,), "scales"), ("taus", (-0.01,), "taus"),
    ("policy_hidden", (), "policy_hidden"),
    ("episodes", 0, "episodes"), ("dt", -0.001, "dt")])
def test_bad_settings(field, value, match):
    with pytest.raises(ValueError, match=match):
        sc.run_study(SETTINGS._replace(**{field: value}))


def test_bad_network_steps_and_scale():
    with pytest.raises(ValueError, match="steps per environment step"):
        sc.spiking_controller(sc.policy_network(2, 1.0, None, DT), PARAMS, 0)
    with pytest.raises(ValueError, match="scale_firing_rates"):
        sc.policy_network(2, 0.0, None, DT)


def test_choose_default_takes_the_smallest_solving_scale():
    rec = lambda s, tau, r: {"scale": s, "tau": tau, "mean_reward": r, "ci95": 1.0}
    records = [rec(10.0, None, 150.0), rec(20.0, None, 196.0), rec(10.0, 0.02, 180.0),
               rec(20.0, 0.02, 199.0), rec(50.0, None, 200.0)]
    best = sc.choose_default(records)
    assert (best["scale"], best["tau"], best["solved"]) == (20.0, 0.02, True)
    best = sc.choose_default(records[:1] + records[2:3])
    assert (best["scale"], best["tau"], best["solved"]) == (10.0, 0.02, False)
