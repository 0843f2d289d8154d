"""The learned dynamics model (`jaxctl.models.dynamics`, `.dynamics_training`) against known systems.

Oracles: numpy moments for the statistics, a linear system whose exact model
is written down by hand (prediction and open-loop rollout must match it),
and fitting that linear system from data.
"""

import functools

import chex

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxctl.control import planning
from jaxctl.models import dynamics as dyn
from jaxctl.models import dynamics_training as dyt
from jaxctl.util import checks

N, M = 3, 2
A = np.array([[0.9, 0.1, 0.0], [0.0, 0.95, 0.2], [-0.1, 0.0, 0.8]], np.float32)
B = np.array([[0.5, 0.0], [0.0, 0.3], [0.2, -0.4]], np.float32)


def linear_data(key, count):
    ks, ka = jax.random.split(key)
    s = 2.0 * jax.random.normal(ks, (count, N)) + jnp.array([1.0, -3.0, 0.5])
    a = jax.random.uniform(ka, (count, M), minval=-1.0, maxval=1.0)
    return dyn.Transitions(s, a, s @ A.T + a @ B.T)


DATA = linear_data(jax.random.PRNGKey(0), 2048)
TEST = linear_data(jax.random.PRNGKey(1), 256)
STATS = dyn.normalization_stats(DATA)


def exact_linear_model(stats):
    """Hand-built weights so that the normalised linear MLP equals s' = A s + B a exactly."""
    sig_in = np.concatenate([stats.state_std, stats.action_std])
    mu_in = np.concatenate([stats.state_mean, stats.action_mean])
    C = np.hstack([A - np.eye(N), B])  # delta = C [s; a]
    w2 = (C * sig_in[None, :]).T / np.asarray(stats.delta_std)[None, :]
    b2 = (C @ mu_in - np.asarray(stats.delta_mean)) / np.asarray(stats.delta_std)
    params = [{"w": jnp.eye(N + M), "b": jnp.zeros(N + M)},
              {"w": jnp.asarray(w2, jnp.float32), "b": jnp.asarray(b2, jnp.float32)}]
    return dyn.DynamicsModel(params, stats, "linear")


def test_normalization_stats_match_numpy_and_respect_count():
    st = dyn.normalization_stats(DATA, count=1000)
    s, a, s2 = (np.asarray(x[:1000], np.float64) for x in DATA)
    np.testing.assert_allclose(st.state_mean, s.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(st.state_std, s.std(0), rtol=1e-4)
    np.testing.assert_allclose(st.action_std, a.std(0), rtol=1e-4)
    np.testing.assert_allclose(st.delta_mean, (s2 - s).mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(st.delta_std, (s2 - s).std(0), rtol=1e-4)
    const = dyn.normalization_stats(dyn.Transitions(jnp.ones((4, 2)), jnp.ones((4, 1)),
                                                    jnp.ones((4, 2))))
    assert np.all(np.asarray(const.state_std) > 0)  # floor, not a division by zero


def test_exact_model_predicts_and_rolls_out_the_true_system():
    model = exact_linear_model(STATS)
    pred = jax.vmap(lambda s, a: dyn.dynamics_predict(model, s, a))(TEST.states, TEST.actions)
    np.testing.assert_allclose(pred, TEST.next_states, rtol=1e-4, atol=1e-4)
    assert float(dyt.dynamics_evaluate(model, TEST)) < 1e-8
    # Open loop: 30 steps of the true system in numpy, float64.
    acts = np.asarray(jax.random.uniform(jax.random.PRNGKey(2), (30, M), minval=-1, maxval=1))
    xs = [np.array([1.0, -2.0, 0.5])]
    for a in acts:
        xs.append(A.astype(np.float64) @ xs[-1] + B @ a)
    xs = np.stack(xs)
    ol = dyt.open_loop_prediction(model, jnp.asarray(xs, jnp.float32), jnp.asarray(acts))
    np.testing.assert_allclose(ol.predicted, xs, rtol=1e-4, atol=1e-4)
    assert ol.error.shape == (31,) and float(ol.error.max()) < 1e-4
    # A wrong model drifts: the error grows with the prediction length.
    wrong = model._replace(params=[model.params[0], {
        "w": model.params[1]["w"] * 1.1, "b": model.params[1]["b"]}])
    err = dyt.open_loop_prediction(wrong, jnp.asarray(xs, jnp.float32), jnp.asarray(acts)).error
    assert float(err[0]) == 0.0 and float(err[-1]) > 5 * float(err[1]) > 0


@functools.lru_cache(maxsize=None)
def _fit(activation, hidden, ensemble_size=None, noise_std=0.0, steps=1500, lr=1e-2):
    opt = optax.adam(lr)
    model = dyn.dynamics_init(jax.random.PRNGKey(3), STATS, hidden, activation=activation,
                              ensemble_size=ensemble_size)
    train = jax.jit(lambda m, s, k: dyt.dynamics_train(m, s, DATA, k, opt, num_steps=steps,
                                                       batch_size=128, noise_std=noise_std))
    model, _, log = train(model, opt.init(model.params), jax.random.PRNGKey(4))
    return model, np.asarray(log.losses)


def test_linear_model_fits_a_linear_system():
    model, losses = _fit("linear", (16,))
    assert losses[-50:].mean() < 1e-5 < losses[0]
    assert float(dyt.dynamics_evaluate(model, TEST)) < 1e-5
    pred = jax.vmap(lambda s, a: dyn.dynamics_predict(model, s, a))(TEST.states, TEST.actions)
    np.testing.assert_allclose(pred, TEST.next_states, atol=2e-2 * float(jnp.std(TEST.states)))


def test_relu_ensemble_fits_a_linear_system():
    model, losses = _fit("relu", (32,), ensemble_size=3, steps=600)
    assert dyn.ensemble_size(model) == 3
    members = dyn.dynamics_predict_members(model, TEST.states[0], TEST.actions[0])
    assert members.shape == (3, N)
    assert float(jnp.std(members, axis=0).max()) > 0  # members are different networks
    np.testing.assert_allclose(dyn.dynamics_predict(model, TEST.states[0], TEST.actions[0]),
                               members.mean(0), rtol=4 * float(jnp.finfo(members.dtype).eps))
    assert float(dyt.dynamics_evaluate(model, TEST)) < 2e-3
    assert losses[-50:].mean() < 0.02 * losses[:10].mean()


def test_noise_augmentation_sets_a_loss_floor():
    # Target noise of std 0.3 in z-units alone gives an expected loss >= 0.09;
    # the model still learns the system (evaluated without noise).
    model, losses = _fit("linear", (16,), noise_std=0.3)
    assert losses[-200:].mean() > 0.08
    assert float(dyt.dynamics_evaluate(model, TEST)) < 0.05


def test_rows_past_count_are_ignored():
    garbage = dyn.Transitions(*(jnp.concatenate([x, 1e6 * jnp.ones_like(x[:512])])
                                for x in DATA))
    count = DATA.states.shape[0]
    stats = dyn.normalization_stats(garbage, count)
    np.testing.assert_allclose(stats.state_mean, STATS.state_mean, rtol=1e-5, atol=1e-5)
    opt = optax.adam(1e-2)
    model = dyn.dynamics_init(jax.random.PRNGKey(3), stats, (16,), activation="linear")
    model, _, log = jax.jit(lambda m, s: dyt.dynamics_train(
        m, s, garbage, jax.random.PRNGKey(5), opt, num_steps=600, batch_size=128,
        count=count))(model, opt.init(model.params))
    assert np.all(np.isfinite(np.asarray(log.losses)))
    assert float(dyt.dynamics_evaluate(model, TEST)) < 1e-3


def test_trained_model_plugs_into_a_jitted_planner_without_recompiling():
    plan = planning.jit_planner("random_shooting", num_samples=32, horizon=4)
    reward = lambda s, a, s2: -jnp.sum(s2 ** 2)
    for model in (_fit("linear", (16,))[0], _fit("linear", (16,), noise_std=0.3)[0]):
        res = plan(jax.tree_util.Partial(dyn.dynamics_predict, model), reward, jnp.ones(N),
                   jax.random.PRNGKey(0), action_low=-jnp.ones(M), action_high=jnp.ones(M))
        assert np.isfinite(float(res.total_reward))
    assert plan.jitted._cache_size() == 1


def test_bad_inputs_raise_clear_errors():
    model = exact_linear_model(STATS)
    with pytest.raises(ValueError, match="expects state"):
        dyn.dynamics_predict(model, jnp.zeros(N + 1), jnp.zeros(M))
    with pytest.raises(ValueError, match="expects state"):
        dyn.dynamics_predict(model, jnp.zeros((5, N)), jnp.zeros((5, M)))
    with pytest.raises(ValueError, match="data must hold"):
        dyn.normalization_stats(dyn.Transitions(jnp.zeros((4, 2)), jnp.zeros((3, 1)),
                                                jnp.zeros((4, 2))))
    bad = dyn.Transitions(jnp.zeros((8, N + 1)), jnp.zeros((8, M)), jnp.zeros((8, N + 1)))
    with pytest.raises(ValueError, match="model was built for"):
        dyt.dynamics_train(model, None, bad, jax.random.PRNGKey(0), optax.adam(1e-3),
                           num_steps=1)
    with pytest.raises(ValueError, match="num_steps"):
        dyt.dynamics_train(model, None, DATA, jax.random.PRNGKey(0), optax.adam(1e-3),
                           num_steps=0)
    with pytest.raises(ValueError, match="ensemble_size"):
        dyn.dynamics_init(jax.random.PRNGKey(0), STATS, (4,), ensemble_size=0)
    with pytest.raises(ValueError, match="activation"):
        dyn.dynamics_init(jax.random.PRNGKey(0), STATS, (4,), activation="sigmoid")
    with pytest.raises(ValueError, match="states must be"):
        dyt.open_loop_prediction(model, jnp.zeros((5, N)), jnp.zeros((5, M)))


# ---------------------------------------------------------------------------
# Edges of training: counts, noise, non-finite rows, empty data, serialisation.

SMALL = dyn.Transitions(*(x[:64] for x in DATA))


def _small_model(key=3):
    return dyn.dynamics_init(jax.random.PRNGKey(key), dyn.normalization_stats(SMALL), (8,),
                             activation="linear")


def _train(model, data, steps=40, **kwargs):
    opt = optax.adam(1e-2)
    return dyt.dynamics_train(model, opt.init(model.params), data, jax.random.PRNGKey(6), opt,
                              num_steps=steps, batch_size=32, **kwargs)


@pytest.mark.parametrize("count, match", [(0, "count must be an integer >= 1"),
                                          (-3, "count must be an integer >= 1"),
                                          (65, "count must be <= the number of rows"),
                                          (2.0, "count must be an integer")])
def test_concrete_count_outside_the_rows_is_rejected(count, match):
    with pytest.raises(ValueError, match=match):
        _train(_small_model(), SMALL, count=count)
    with pytest.raises(ValueError, match=match):
        dyn.normalization_stats(SMALL, count)


def test_traced_count_past_the_rows_samples_every_row_uniformly():
    # A traced count above N is clipped to N: the batches must not pile up on the
    # last row (clamped gathers). Oracle: untraced count = N gives the same model.
    model = _small_model()
    over = jax.jit(lambda c: _train(model, SMALL, count=c)[0].params)(jnp.int32(10 * 64))
    exact = _train(model, SMALL, count=64)[0].params
    chex.assert_trees_all_close(over, exact, rtol=16 * float(jnp.finfo(jnp.float32).eps))


def test_traced_count_zero_leaves_the_model_unchanged():
    model = _small_model()
    new, _, log = jax.jit(lambda c: _train(model, SMALL, count=c))(jnp.int32(0))
    assert not np.any(np.asarray(log.accepted))
    jax.tree.map(np.testing.assert_array_equal, new.params, model.params)


@pytest.mark.parametrize("noise_std", [-0.1, float("nan"), float("inf")])
def test_bad_noise_std_is_rejected(noise_std):
    with pytest.raises(ValueError, match="noise_std"):
        _train(_small_model(), SMALL, noise_std=noise_std)


def test_traced_noise_std_is_used():
    model = _small_model()
    noisy = jax.jit(lambda s: _train(model, SMALL, noise_std=s)[2].losses)(jnp.float32(0.5))
    concrete = _train(model, SMALL, noise_std=0.5)[2].losses
    np.testing.assert_allclose(noisy, concrete, rtol=64 * float(jnp.finfo(noisy.dtype).eps))


def test_non_finite_rows_are_masked_from_statistics_and_training():
    rows = [x for x in SMALL]
    bad = dyn.Transitions(rows[0].at[5, 1].set(jnp.nan), rows[1].at[9, 0].set(jnp.inf),
                          rows[2].at[20, 2].set(jnp.nan))
    keep = np.setdiff1d(np.arange(64), [5, 9, 20])
    clean = dyn.Transitions(*(x[keep] for x in SMALL))
    stats = dyn.normalization_stats(bad)
    want = dyn.normalization_stats(clean)
    for got, ref in zip(stats, want):
        np.testing.assert_allclose(got, ref, rtol=64 * float(jnp.finfo(got.dtype).eps))
    model, _, log = _train(_small_model(), bad, steps=200)
    assert np.all(np.asarray(log.accepted))
    assert bool(checks.tree_all_finite(model.params))
    assert float(dyt.dynamics_evaluate(model, clean)) < 0.05


def test_a_non_finite_update_never_reaches_the_parameters():
    # A learning rate that overflows the first update: every step is rejected.
    model = _small_model()
    opt = optax.sgd(1e38)
    new, state, log = dyt.dynamics_train(model, opt.init(model.params), SMALL,
                                         jax.random.PRNGKey(0), opt, num_steps=3, batch_size=8)
    assert not np.all(np.asarray(log.accepted))
    assert bool(checks.tree_all_finite(new.params))


def test_empty_data_names_the_argument():
    empty = dyn.Transitions(jnp.zeros((0, N)), jnp.zeros((0, M)), jnp.zeros((0, N)))
    with pytest.raises(ValueError, match="at least one transition"):
        _train(_small_model(), empty)
    with pytest.raises(ValueError, match="at least one transition"):
        dyn.normalization_stats(empty)
    with pytest.raises(ValueError, match="T >= 1"):
        dyt.open_loop_prediction(_small_model(), jnp.zeros((1, N)), jnp.zeros((0, M)))


@pytest.mark.parametrize("ensemble", [None, 2])
def test_model_round_trips_through_flax_serialization(ensemble):
    serialization = pytest.importorskip("flax.serialization")
    model = dyn.dynamics_init(jax.random.PRNGKey(0), STATS, (4,), activation="tanh",
                              ensemble_size=ensemble)
    blob = serialization.to_bytes(model)
    template = dyn.dynamics_init(jax.random.PRNGKey(1), STATS, (4,), activation="tanh",
                                 ensemble_size=ensemble)
    back = serialization.from_bytes(template, blob)
    assert isinstance(back, dyn.DynamicsModel) and back.activation == "tanh"
    assert jax.tree.structure(back) == jax.tree.structure(model)
    jax.tree.map(np.testing.assert_array_equal, back, model)
    # activation is static configuration, not a leaf: jit and Partial work.
    predict = jax.jit(dyn.dynamics_predict)
    np.testing.assert_array_equal(predict(back, jnp.ones(N), jnp.ones(M)),
                                  predict(model, jnp.ones(N), jnp.ones(M)))


@pytest.mark.parametrize("ensemble", [None, 2])
def test_model_round_trips_through_the_package_checkpoint(ensemble, tmp_path):
    from jaxctl import restore_checkpoint, save_checkpoint
    from jaxctl.util.checkpoint import CheckpointError

    model = dyn.dynamics_init(jax.random.PRNGKey(0), STATS, (4,), activation="tanh",
                              ensemble_size=ensemble)
    save_checkpoint(str(tmp_path / "model.ckpt"), model, {"round": 3})
    template = dyn.dynamics_init(jax.random.PRNGKey(1), STATS, (4,), activation="tanh",
                                 ensemble_size=ensemble)
    back = restore_checkpoint(str(tmp_path / "model.ckpt"), template)
    assert isinstance(back, dyn.DynamicsModel) and back.activation == "tanh"
    jax.tree.map(np.testing.assert_array_equal, back, model)
    # A template of another architecture is refused, never silently reshaped.
    with pytest.raises(CheckpointError, match="template expects"):
        restore_checkpoint(str(tmp_path / "model.ckpt"),
                           dyn.dynamics_init(jax.random.PRNGKey(1), STATS, (5,), activation="tanh",
                                             ensemble_size=ensemble))
