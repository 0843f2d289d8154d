"""jaxctl.spiking against closed forms: neuron rates, synapse responses, conversion limits, errors.

The comparison with Nengo's reference simulator is in test_spiking_nengo.py.
"""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxctl.spiking import (
    LIF,
    LIFRate,
    RectifiedLinear,
    SoftLIFRate,
    SpikingRectifiedLinear,
    conv2d,
    dense,
    firing_rate_penalty,
    lowpass,
    rate_apply,
    spiking_network,
)
from jaxctl.spiking.network import affine

DT = 0.001


def _run_neuron(neuron, J, n_steps, dt=DT):
    """Spike counts of `neuron` driven by the constant current `J` for `n_steps`."""
    def body(state, _):
        state, out = neuron.step(state, J, dt)
        return state, out * dt / neuron.amplitude
    return jax.lax.scan(body, neuron.init_state(J), None, length=n_steps)[1]


_run_neuron_jit = jax.jit(_run_neuron, static_argnums=(0, 2))


@pytest.mark.parametrize("n_steps", [10, 100, 1000])
def test_spiking_relu_rate_converges_within_one_over_T(n_steps):
    # J * dt up to 3.5: several spikes per step must be counted.
    J = jnp.array([-50.0, 0.0, 7.0, 33.3, 210.0, 999.0, 1500.0, 3500.0])
    counts = _run_neuron_jit(SpikingRectifiedLinear(), J, n_steps)
    rate = np.asarray(counts.sum(0)) / (n_steps * DT)
    T = n_steps * DT
    # reset by subtraction: count = floor(max(J, 0) T), so 0 <= r(J) - rate < 1/T
    err = np.maximum(np.asarray(J), 0) - rate
    assert np.all(err >= -1e-3) and np.all(err < 1 / T + 1e-3), err
    assert np.max(np.asarray(counts)) >= 3  # several spikes in one step at J dt = 3.5


def test_lif_rate_matches_its_rate_curve():
    neuron = LIF(tau_rc=0.02, tau_ref=0.002)
    J = jnp.array([0.5, 1.0, 1.5, 3.0, 10.0, 50.0])
    n_steps = 4000
    counts = _run_neuron_jit(neuron, J, n_steps)
    rate = np.asarray(counts.sum(0)) / (n_steps * DT)
    expected = np.asarray(LIFRate(0.02, 0.002).rate(J))
    # closed form r = 1 / (tau_ref + tau_rc log(1 + 1/(J - 1))); the first spike and the count
    # quantisation are off by at most one spike period plus one spike over T
    period = np.where(expected > 0, 1 / np.maximum(expected, 1e-9), 0.0)
    assert np.all(np.abs(rate - expected) <= (1 + period / (n_steps * DT)) / (n_steps * DT) + 1.0)
    assert expected[0] == 0 and expected[1] == 0 and rate[0] == 0
    assert np.all(np.diff(expected[2:]) > 0)
    # interpolated spike times: the rate is not quantised to 1/(k dt)
    assert abs(rate[-1] - expected[-1]) < 0.01 * expected[-1]


def test_soft_lif_tends_to_lif_and_has_gradients_below_threshold():
    J = jnp.linspace(0.0, 5.0, 101)
    hard = LIFRate().rate(J)
    gaps = [float(jnp.max(jnp.abs(SoftLIFRate(sigma=s).rate(J) - hard))) for s in (0.1, 0.01, 0.001)]
    assert gaps[0] > gaps[1] > gaps[2]
    grad = jax.grad(lambda j: SoftLIFRate(sigma=0.05).rate(j))(jnp.array(0.9))
    assert np.isfinite(float(grad)) and float(grad) > 0
    assert float(jax.grad(lambda j: LIFRate().rate(j))(jnp.array(0.9))) == 0.0


def test_lowpass_matches_the_closed_form_step_response():
    tau = 0.005
    n = np.arange(200)
    y = np.asarray(lowpass(jnp.ones((200, 1)), tau, DT))[:, 0]
    # exact discretisation with a one-step delay: y[n] = 1 - exp(-n dt / tau)
    np.testing.assert_allclose(y, 1 - np.exp(-n * DT / tau), atol=10 * np.finfo(np.float32).eps)
    # an impulse of area 1 (height 1/dt) decays as exp(-t / tau) / tau
    imp = np.zeros((50, 1), np.float32)
    imp[0] = 1 / DT
    h = np.asarray(lowpass(jnp.asarray(imp), tau, DT))[1:, 0]
    a = math.exp(-DT / tau)
    np.testing.assert_allclose(h, (1 - a) / DT * a ** np.arange(49), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(lowpass(jnp.arange(3.0), None, DT)), [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(np.asarray(lowpass(jnp.arange(3.0), 0.0, DT)), [0.0, 0.0, 1.0])


def test_conv_layer_matches_explicit_sums():
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (6, 5, 2))
    p = {"w": jax.random.normal(jax.random.PRNGKey(1), (3, 2, 2, 4)),
         "b": jnp.arange(4.0)}
    y = np.asarray(affine(conv2d(strides=(2, 1)), p, x))
    xn, w = np.asarray(x), np.asarray(p["w"])
    ref = np.zeros((2, 4, 4))
    for i in range(2):
        for j in range(4):
            ref[i, j] = np.einsum("hwc,hwco->o", xn[2 * i:2 * i + 3, j:j + 2], w) + np.arange(4)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def _two_layer(key, n_in=4, n_hidden=16, n_out=3):
    k1, k2 = jax.random.split(key)
    return [{"w": jax.random.normal(k1, (n_in, n_hidden)) * 2, "b": jnp.full((n_hidden,), 0.5)},
            {"w": jax.random.normal(k2, (n_hidden, n_out)) / 4, "b": jnp.zeros(n_out)}]


@jax.jit
def _conversion_errors(params, x):
    rate_out, _ = rate_apply((dense(), dense()), params, x)
    errors = []
    for s in (1.0, 10.0, 100.0):
        net = spiking_network((dense(), dense()), scale_firing_rates=s)
        out = net.run(params, x, 200).output
        errors.append(jnp.max(jnp.abs(jnp.mean(out, 0) - rate_out)))
    return jnp.stack(errors), jnp.max(jnp.abs(rate_out))


def test_scaled_relu_network_converges_to_the_rate_network():
    params = _two_layer(jax.random.PRNGKey(0))
    x = jnp.array([1.0, -0.5, 2.0, 0.3])
    errors, size = _conversion_errors(params, x)
    errors = np.asarray(errors)
    # mean output over T: each hidden unit's count error is < 1 spike, i.e. < 1/(s T) in rate
    bound = float(np.sum(np.abs(np.asarray(params[1]["w"])), 0).max()) / 0.2
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] <= bound / 100 + 1e-4
    assert errors[2] < 0.05 * float(size)


def test_rate_mode_equals_rate_apply_and_vmap_equals_a_loop():
    params = _two_layer(jax.random.PRNGKey(1))
    xs = jax.random.normal(jax.random.PRNGKey(2), (5, 4))
    net = spiking_network((dense(), dense()), neuron=RectifiedLinear())
    out = jax.vmap(lambda x: net.run(params, x, 3).output)(xs)
    ref = jax.vmap(lambda x: rate_apply((dense(), dense()), params, x)[0])(xs)
    np.testing.assert_allclose(np.asarray(out[:, -1]), np.asarray(ref), rtol=1e-5, atol=1e-5)
    spiking = spiking_network((dense(), dense()), synapses=[None, 0.002])
    batched = jax.vmap(lambda x: spiking.run(params, x, 20).output)(xs)
    for i in range(5):
        np.testing.assert_array_equal(np.asarray(batched[i]),
                                      np.asarray(spiking.run(params, xs[i], 20).output))


def test_run_in_pieces_equals_one_run_and_probes_count_spikes():
    params = _two_layer(jax.random.PRNGKey(3))
    x = jnp.array([3.0, 1.0, -1.0, 2.0])
    net = spiking_network((dense(), dense()), synapses=0.003, output_synapse=0.01,
                          scale_firing_rates=20.0)
    whole = net.run(params, x, 40, probe=True)
    first = net.run(params, x, 25)
    rest = net.run(params, x, 15, state=first.state)
    np.testing.assert_array_equal(np.asarray(whole.output),
                                  np.asarray(jnp.concatenate([first.output, rest.output])))
    counts = np.asarray(whole.spikes[0])
    assert counts.shape == (40, 16) and np.all(counts == np.round(counts)) and counts.sum() > 0
    # the filtered probe is the hidden output (counts / (s dt)) through the synapse into layer 2
    np.testing.assert_allclose(np.asarray(whole.filtered[0]),
                               np.asarray(lowpass(jnp.asarray(counts) / (20.0 * DT), 0.003, DT)),
                               rtol=1e-5, atol=1e-3)


def test_surrogate_gradient_is_the_rate_gradient():
    params = _two_layer(jax.random.PRNGKey(4))
    x = jnp.array([1.0, 0.5, -0.5, 2.0])
    layers = (dense(), dense())
    n_steps, s = 400, 10.0

    def spiking_loss(p):
        net = spiking_network(layers, neuron=SpikingRectifiedLinear(surrogate=True),
                              scale_firing_rates=s)
        return jnp.sum(jnp.mean(net.run(p, x, n_steps).output, 0) ** 2)

    def rate_loss(p):
        return jnp.sum(rate_apply(layers, p, x)[0] ** 2)

    g_spk, g_rate = jax.jit(jax.grad(spiking_loss))(params), jax.grad(rate_loss)(params)
    for a, b in zip(jax.tree.leaves(g_spk), jax.tree.leaves(g_rate)):
        # the same linearisation at inputs that differ by < 1 spike / (s T) per hidden unit
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0.05,
                                   atol=0.05 * float(jnp.max(jnp.abs(b))))
    g_plain = jax.grad(lambda p: jnp.sum(spiking_network(layers).run(p, x, 5).output))(params)
    assert float(jnp.max(jnp.abs(g_plain[0]["w"]))) == 0.0  # floor has no gradient of its own


def test_firing_rate_penalty_closed_form():
    rates = [jnp.array([100.0, 250.0]), jnp.array([[400.0, 300.0]])]
    # (100 below 200) + 0 + (100 above 300) + 0 over 4 neurons, times 2
    assert float(firing_rate_penalty(rates, 200, 300, weight=2.0)) == pytest.approx(100.0)
    g = jax.grad(lambda r: firing_rate_penalty(r))(jnp.array([100.0, 250.0, 400.0]))
    np.testing.assert_allclose(np.asarray(g), [-1 / 3, 0.0, 1 / 3], rtol=1e-6)


@pytest.mark.parametrize("bad", [0.0, -0.001, np.float32(-1.0), jnp.array(0.0), float("nan")])
def test_bad_dt_names_dt(bad):
    with pytest.raises(ValueError, match="dt must be"):
        spiking_network((dense(), dense()), dt=bad)
    with pytest.raises(ValueError, match="dt must be"):
        lowpass(jnp.ones((3, 1)), 0.01, bad)


@pytest.mark.parametrize("bad", [-0.001, np.float64(-1.0), jnp.array(-0.5)])
def test_negative_tau_names_the_synapse(bad):
    with pytest.raises(ValueError, match=r"synapses\[1\] must be >= 0"):
        spiking_network((dense(), dense()), synapses=[None, bad])
    with pytest.raises(ValueError, match="output_synapse must be >= 0"):
        spiking_network((dense(), dense()), output_synapse=bad)


@pytest.mark.parametrize("bad", [-1.0, 0.0, np.float32(-5.0), jnp.array(-2.0)])
def test_bad_scale_names_the_argument(bad):
    with pytest.raises(ValueError, match="scale_firing_rates must be > 0"):
        spiking_network((dense(), dense()), scale_firing_rates=bad)


def test_per_layer_lists_must_match_the_layers():
    with pytest.raises(ValueError, match="synapses must be one value or a list of 2"):
        spiking_network((dense(), dense()), synapses=[0.001])
    with pytest.raises(ValueError, match="scale_firing_rates must be one value or a list of 2"):
        spiking_network((dense(), dense(), dense()), scale_firing_rates=[1.0])


def test_params_that_do_not_match_the_layers_are_rejected():
    params = _two_layer(jax.random.PRNGKey(0))
    x = jnp.ones(4)
    net3 = spiking_network((dense(), dense(), dense()))
    with pytest.raises(ValueError, match=r"one \{'w', 'b'\} dict per layer \(3 layers\), got 2"):
        net3.run(params, x, 5)
    with pytest.raises(ValueError, match=r"params\[0\]\['w'\] of the dense layer 0 must have shape"):
        rate_apply((dense(), dense()), params, jnp.ones(5))
    with pytest.raises(ValueError, match="layer 0 is conv2d"):
        rate_apply((conv2d(), dense()), params, x)
    with pytest.raises(ValueError, match="layers must be a non-empty list"):
        spiking_network(("dense", "dense"))
    with pytest.raises(ValueError, match="n_steps must be an integer >= 1"):
        spiking_network((dense(), dense())).run(params, x, 0)


def test_neuron_parameters_are_checked():
    with pytest.raises(ValueError, match="tau_rc must be > 0"):
        LIF(tau_rc=0.0)
    with pytest.raises(ValueError, match="tau_ref must be >= 0"):
        LIFRate(tau_ref=np.float32(-0.001))
    with pytest.raises(ValueError, match="amplitude must be > 0"):
        SpikingRectifiedLinear(amplitude=jnp.array(-1.0))
    with pytest.raises(ValueError, match="low must be <= high"):
        firing_rate_penalty(jnp.ones(3), low=300, high=200)


def test_scaling_non_linear_neurons_warns():
    with pytest.warns(UserWarning, match="only rectified-linear neurons"):
        spiking_network((dense(), dense()), neuron=LIF(), scale_firing_rates=5.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spiking_network((dense(), dense()), neuron=SpikingRectifiedLinear(), scale_firing_rates=5.0)
        spiking_network((dense(), dense()), neuron=LIF())


def test_dtype_follows_the_parameters():
    params = jax.tree.map(lambda a: a.astype(jnp.float32), _two_layer(jax.random.PRNGKey(0)))
    out = spiking_network((dense(), dense()), synapses=0.002).run(params, jnp.ones(4, jnp.float32), 5)
    assert out.output.dtype == jnp.float32
    assert jax.tree.leaves(out.state)[0].dtype == jnp.float32
