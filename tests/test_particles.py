"""Gaussian heads and trajectory sampling (`jaxctl.models.particles`, PETS).

Oracles: data with a known, state-dependent noise level (the learned variance
must recover it), per-member simulation of the returned plan, numpy's mean /
min / quantile of the particle returns, and a hand-built two-member ensemble
whose members disagree on one action only (the aggregate decides the plan).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxctl.control.planners import cem, mppi, random_shooting
from jaxctl.control.simulate import simulate
from jaxctl.models import dynamics as dyn
from jaxctl.models import dynamics_training as dyt
from jaxctl.models.mlp import mlp_apply
from jaxctl.models.particles import aggregate_returns, plan_with_particles

EPS32 = float(jnp.finfo(jnp.float32).eps)
ONE_D = dyn.NormStats(*(jnp.full(1, v) for v in (0.0, 1.0, 0.0, 1.0, 0.0, 1.0)))
BOUNDS = dict(action_low=-jnp.ones(1), action_high=jnp.ones(1))


def noisy_data(key, count=4096):
    """s' = s + 0.5 a + sigma(s) xi, sigma(s) = 0.05 + 0.2 (s + 1), s ~ U(-1, 1)."""
    ks, ka, kx = jax.random.split(key, 3)
    s = jax.random.uniform(ks, (count, 1), minval=-1.0, maxval=1.0)
    a = jax.random.uniform(ka, (count, 1), minval=-1.0, maxval=1.0)
    sigma = 0.05 + 0.2 * (s + 1.0)
    return dyn.Transitions(s, a, s + 0.5 * a + sigma * jax.random.normal(kx, s.shape))


@functools.lru_cache(maxsize=None)
def trained_ensemble():
    data = noisy_data(jax.random.PRNGKey(0))
    stats = dyn.normalization_stats(data)
    model = dyn.dynamics_init(jax.random.PRNGKey(1), stats, (32, 32), ensemble_size=4,
                              head="gaussian")
    opt = optax.adam(optax.cosine_decay_schedule(3e-3, 800))
    model, _, log = jax.jit(lambda mdl: dyt.dynamics_train(
        mdl, opt.init(mdl.params), data, jax.random.PRNGKey(2), opt, num_steps=800,
        batch_size=256))(model)
    return model, log


def member_moments(model, s, a):
    """Each member's predicted mean change and standard deviation in raw units, (E,)."""
    st = model.stats
    mean, logvar = jax.vmap(lambda p: dyn.normalized_gaussian(p, model, jnp.array([s]),
                                                              jnp.array([a])))(model.params)
    return (st.delta_mean + st.delta_std * mean)[:, 0], (st.delta_std * jnp.exp(0.5 * logvar))[:, 0]


def test_gaussian_heads_learn_the_state_dependent_noise_by_nll():
    model, log = trained_ensemble()
    assert dyn.is_gaussian(model) and dyn.ensemble_size(model) == 4
    assert bool(log.accepted.all()) and float(log.losses[-100:].mean()) < float(log.losses[:100].mean())
    for s in (-0.8, 0.0, 0.6):
        mean, std = member_moments(model, s, 0.4)
        true_std = 0.05 + 0.2 * (s + 1.0)
        # Mean change 0.5 a = 0.2 within a fifth of the noise level (0.09 to 0.37), and
        # the noise level itself within 20 %, by every member.
        np.testing.assert_allclose(np.asarray(mean), 0.2, atol=0.2 * true_std)
        np.testing.assert_allclose(np.asarray(std), true_std, rtol=0.2)


def test_nll_loss_matches_the_gaussian_formula():
    model, _ = trained_ensemble()
    p0 = jax.tree.map(lambda x: x[0], model.params)
    batch = noisy_data(jax.random.PRNGKey(5), 64)
    out = np.asarray(jax.vmap(lambda s, a: mlp_apply(p0, jnp.concatenate([
        (s - model.stats.state_mean) / model.stats.state_std,
        (a - model.stats.action_mean) / model.stats.action_std]), "relu"))(
        batch.states, batch.actions), np.float64)
    y = np.asarray((batch.next_states - batch.states - model.stats.delta_mean)
                   / model.stats.delta_std, np.float64)
    mu, raw = out[:, :1], out[:, 1:]
    hi, lo = dyn.LOGVAR_MAX, dyn.LOGVAR_MIN
    softplus = lambda x: np.logaddexp(0.0, x)
    v = lo + softplus(hi - softplus(hi - raw) - lo)
    expected = np.mean(0.5 * ((mu - y) ** 2 * np.exp(-v) + v))
    assert float(dyt.dynamics_loss(p0, model, batch)) == pytest.approx(expected, rel=1e-4)
    # Far outside the bounds the log-variance saturates at them.
    bounded = np.asarray(dyn.bounded_logvar(jnp.array([-1e3, 0.0, 1e3])))
    assert bounded[0] == pytest.approx(lo, abs=1e-3) and bounded[2] == pytest.approx(hi, abs=1e-3)


def test_members_disagree_outside_the_data():
    model, _ = trained_ensemble()
    spread = lambda s: float(np.std(np.asarray(member_moments(model, s, 0.0)[0])))
    inside = max(spread(s) for s in (-0.9, 0.0, 0.9))  # the data cover s in [-1, 1]
    assert spread(10.0) > 4 * inside > 0


def reward_x(s, a, s2):
    return s2[0]


def test_particles_follow_their_members_and_the_total_is_the_aggregate():
    model, _ = trained_ensemble()
    det = dyn.DynamicsModel(jax.tree.map(lambda w: w[..., :1] if w.shape[-1] == 2 else w,
                                         model.params), model.stats)  # the means only
    assert not dyn.is_gaussian(det)
    state, P, H = jnp.array([0.3]), 8, 4

    @jax.jit
    def per_member(actions):  # oracle: each member simulated on its own, (E, H + 1, 1)
        one = lambda p: simulate(lambda s, a: dyn.dynamics_predict(
            dyn.DynamicsModel(p, det.stats), s, a), state, actions)
        return jax.vmap(one)(det.params)

    for aggregate in ("mean", 0.25):
        plan = jax.jit(lambda k, agg=aggregate: plan_with_particles(
            random_shooting, det, reward_x, state, k, horizon=H, num_particles=P,
            aggregate=agg, num_samples=64, **BOUNDS))(jax.random.PRNGKey(3))
        xs = np.asarray(per_member(plan.actions))[np.arange(P) % 4]  # particle p: member p mod 4
        np.testing.assert_allclose(np.asarray(plan.particle_states).swapaxes(0, 1), xs,
                                   atol=100 * EPS32)
        returns = xs[:, 1:, 0].sum(axis=1)
        np.testing.assert_allclose(np.asarray(plan.particle_returns), returns, atol=1e-4)
        ref = np.mean(returns) if aggregate == "mean" else np.quantile(returns, 0.25)
        assert float(plan.total_reward) == pytest.approx(ref, abs=1e-4)
        assert float(jnp.sum(plan.rewards)) == pytest.approx(float(plan.total_reward), abs=1e-4)
    np.testing.assert_allclose(np.asarray(aggregate_returns(jnp.array([[3.0, 1.0, 2.0]]), 0.5)), [2.0])


def test_gaussian_particles_spread_and_stay_finite():
    model, _ = trained_ensemble()
    plan = jax.jit(lambda k: plan_with_particles(cem, model, reward_x, jnp.array([0.5]), k,
                                                 horizon=5, num_particles=8, num_samples=32,
                                                 **BOUNDS))(jax.random.PRNGKey(4))
    assert plan.particle_states.shape == (6, 8, 1) and bool(jnp.isfinite(plan.total_reward))
    spread = np.std(np.asarray(plan.particle_states[-1, :, 0]))
    assert spread > 0.05  # 5 noisy steps of sigma >= 0.05 each


def disagreeing_ensemble():
    """Two members, identity statistics: f_e(s, a) = c_e relu(a) + 0.3 relu(-a), c = (3, -1.5).

    Action +1 moves by 3 or -1.5 (mean 0.75, min -1.5); action -1 by 0.3 in both.
    """
    w1 = jnp.array([[0.0, 0.0], [1.0, -1.0]])
    layer1 = {"w": jnp.stack([w1, w1]), "b": jnp.zeros((2, 2))}
    layer2 = {"w": jnp.array([[[3.0], [0.3]], [[-1.5], [0.3]]]), "b": jnp.zeros((2, 1))}
    return dyn.DynamicsModel([layer1, layer2], ONE_D)


@pytest.mark.parametrize("planner", [random_shooting, cem, mppi], ids=["rs", "cem", "mppi"])
def test_the_aggregate_decides_between_optimism_and_caution(planner):
    model = disagreeing_ensemble()
    def first_action(aggregate):
        return float(jax.jit(lambda k: plan_with_particles(
            planner, model, reward_x, jnp.zeros(1), k, horizon=1, num_particles=2,
            aggregate=aggregate, num_samples=256, **BOUNDS).actions[0, 0])(jax.random.PRNGKey(0)))

    assert first_action("mean") > 0.9    # +1: 0.75 on average beats 0.3
    assert first_action("min") < -0.9    # -1: a sure 0.3 beats a worst case of -1.5


def test_plans_for_many_states_in_one_vmapped_call():
    model = disagreeing_ensemble()
    f = jax.jit(jax.vmap(lambda s, k: plan_with_particles(
        random_shooting, model, reward_x, s, k, horizon=1, num_particles=2, num_samples=64,
        **BOUNDS).total_reward))
    totals = f(jnp.zeros((3, 1)), jax.random.split(jax.random.PRNGKey(0), 3))
    assert totals.shape == (3,) and bool(jnp.all(totals > 0.3))


def test_bad_input_is_named():
    model = disagreeing_ensemble()
    call = functools.partial(plan_with_particles, random_shooting, model, reward_x, jnp.zeros(1),
                             jax.random.PRNGKey(0), horizon=2, num_samples=8)
    with pytest.raises(ValueError, match="multiple of the ensemble size E = 2"):
        call(num_particles=3, **BOUNDS)
    for bad in ("median", 1.5, np.float32(0.0), jnp.array(1.0)):
        with pytest.raises(ValueError, match="aggregate"):
            call(num_particles=2, aggregate=bad, **BOUNDS)
    with pytest.raises(ValueError, match="num_particles"):
        call(num_particles=np.int32(0), **BOUNDS)
    with pytest.raises(ValueError, match=r"state must have shape \(1,\)"):
        plan_with_particles(random_shooting, model, reward_x, jnp.zeros(2), jax.random.PRNGKey(0),
                            horizon=2, num_samples=8, num_particles=2, **BOUNDS)
    with pytest.raises(ValueError, match=r"action_low must have shape \(1,\)"):
        call(num_particles=2, action_low=-jnp.ones(2), action_high=jnp.ones(2))
    with pytest.raises(ValueError, match="must return a scalar"):
        plan_with_particles(random_shooting, model, lambda s, a, s2: s2, jnp.zeros(1),
                            jax.random.PRNGKey(0), horizon=2, num_samples=8, num_particles=2,
                            **BOUNDS)
    with pytest.raises(ValueError, match="ensemble_size"):
        dyn.dynamics_init(jax.random.PRNGKey(0), ONE_D, (4,), ensemble_size=0)
    with pytest.raises(ValueError, match="head"):
        dyn.dynamics_init(jax.random.PRNGKey(0), ONE_D, (4,), head="poisson")
