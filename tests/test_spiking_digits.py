"""The digits experiment of DeWolf (2020): the split, rate training, and the conversion
checked against closed forms (spike counts from the rates, the 1/(s T dt) bound)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxctl.experiments import spiking_digits as sd

TINY = sd.TrainSettings(epochs=4)  # the quick study's training: one compiled program
SEEDS = (0, 1)
N_IMAGES, N_STEPS = 40, 40  # one image count and presentation time: fewer compilations


@pytest.fixture(scope="module")
def data():
    return sd.load_digits_split()


@pytest.fixture(scope="module")
def trained(data):
    return sd.train(data, TINY, SEEDS)


def _seed(params, i):
    return jax.tree.map(lambda a: a[i], params)


def test_split_is_fixed_stratified_and_scaled(data):
    assert data.x_train.shape == (1437, 8, 8, 1) and data.x_test.shape == (360, 8, 8, 1)
    assert float(data.x_train.min()) == 0.0 and float(data.x_train.max()) == 1.0
    counts = np.bincount(np.asarray(data.y_test), minlength=10)
    # 1797 digits, about 180 a class: a stratified 20% split holds 36 +- 1 of each
    assert counts.min() >= 35 and counts.max() <= 37
    again = sd.load_digits_split()
    np.testing.assert_array_equal(np.asarray(again.y_test), np.asarray(data.y_test))
    with pytest.raises(ValueError, match="test_size"):
        sd.load_digits_split(test_size=1795)


def test_tiny_training_beats_chance(data, trained):
    params, losses = trained
    assert losses.shape == (len(SEEDS), TINY.epochs)
    assert np.all(np.asarray(losses[:, -1]) < np.log(10))  # below the loss of a uniform guess
    for i in range(len(SEEDS)):
        assert sd.rate_accuracy(_seed(params, i), data.x_test, data.y_test) > 0.5


def test_rate_unit_changes_rates_not_the_function(data):
    # ReLU is positively homogeneous: w_conv * u, w_dense / u is the same network, rates * u
    plain, _ = sd.train(data, TINY, SEEDS)
    scaled, _ = sd.train(data, TINY._replace(rate_unit=10.0), SEEDS)  # the same program
    lo1, r1 = sd.logits_and_rates(_seed(plain, 0), data.x_test[:50])
    lo2, r2 = sd.logits_and_rates(_seed(scaled, 0), data.x_test[:50])
    tol = 1e3 * float(jnp.finfo(lo1.dtype).eps)  # two trainings' rounding, amplified by Adam
    np.testing.assert_allclose(np.asarray(r2), 10 * np.asarray(r1), rtol=tol, atol=10 * tol)
    np.testing.assert_allclose(np.asarray(lo2), np.asarray(lo1), rtol=tol, atol=tol)


def test_spike_counts_are_those_the_rates_predict(data, trained):
    # no synapse, from rest: a neuron at rate r fires floor(s r T dt) spikes in T steps
    params, _ = trained
    x, y = data.x_test[:N_IMAGES], data.y_test[:N_IMAGES]
    settings = sd.SpikingSettings(n_steps=N_STEPS, scale=20.0)
    ev = sd.evaluate_spiking(params, x, y, settings)
    stats = sd.rate_statistics(_seed(params, 0), x, (N_STEPS,), settings.dt, scale=20.0)
    predicted = stats["predicted_spikes_per_image"][N_STEPS]
    assert predicted > 0
    # floor() can flip for a rate within rounding of an integer count: allow 1 spike an image
    assert abs(float(ev.spikes_per_image[0]) - predicted) <= 1.0
    assert abs(float(ev.active_fraction[0]) - stats["fraction_can_spike"][N_STEPS]) \
        <= 1.0 / (36 * TINY.filters)  # one flipped neuron
    silent = sd.evaluate_spiking(params, x, y, sd.SpikingSettings(n_steps=N_STEPS))
    assert stats["max_rate_hz"] / 20.0 * N_STEPS * settings.dt < 1  # no neuron can spike ...
    assert np.all(silent.spikes_per_image == 0)  # ... and none does


def test_large_scale_converges_to_the_rate_network(data, trained):
    params, _ = trained
    x, y = data.x_test[:N_IMAGES], data.y_test[:N_IMAGES]
    p0 = _seed(params, 0)
    logits = np.asarray(sd.logits_and_rates(p0, x)[0])
    n_steps, dt = N_STEPS, 0.001
    w1 = np.abs(np.asarray(p0[1]["w"])).sum(axis=0)  # sum_j |W_jk|
    errors = []
    for scale in (10.0, 100.0, 1000.0):
        ev = sd.evaluate_spiking(params, x, y, sd.SpikingSettings(n_steps=n_steps, scale=scale))
        mean_out = ev.output[0].mean(axis=1)
        # each neuron's mean output is floor(s r T dt) / (s T dt), within 1 / (s T dt) of r
        bound = w1 / (scale * n_steps * dt) + 1e-4 * np.abs(logits).max()
        err = np.abs(mean_out - logits)
        assert np.all(err <= bound), (scale, float((err - bound).max()))
        errors.append(float(err.max()))
    assert errors[2] < errors[0] / 10
    rate_pred = logits.argmax(-1)
    window = sd.readout_accuracy(ev.output, y, n_steps)  # ev: scale 1000, mean of all steps
    agree = np.mean(ev.output[0].mean(axis=1).argmax(-1) == rate_pred)
    assert agree >= 1 - 1 / N_IMAGES
    assert abs(float(window[0]) - sd.rate_accuracy(p0, x, y)) <= 1 / N_IMAGES + 1e-6


def test_bad_settings_are_rejected(data, trained):
    params, _ = trained
    with pytest.raises(ValueError, match="readout_window"):
        sd.evaluate_spiking(params, data.x_test[:2], data.y_test[:2],
                            sd.SpikingSettings(n_steps=5, readout_window=6))
    with pytest.raises(ValueError, match="batch_size"):
        sd.train(data, TINY._replace(batch_size=5000))
    with pytest.raises(ValueError, match="rate_unit"):
        sd.train(data, TINY._replace(rate_unit=0.0))
