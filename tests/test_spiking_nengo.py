"""jaxctl.spiking against Nengo's reference simulator, and flax params through `from_flax`.

The same network is built in Nengo the way Nengo DL's converter builds it:
a `Node` for the input, one `Ensemble` per hidden layer driven on its
`.neurons` with gain `s` and bias `s b` (the firing-rate scale `s`), neuron
amplitude `1 / s`, the weights as connection transforms with a `Lowpass`
synapse per connection, and a read-out `Node` whose bias arrives through an
unfiltered connection. Voltages start from the same array in both.

Tolerance: in float64 every spike of every neuron falls on the same step
(the updates are the same arithmetic in the same order), and the outputs
agree to rounding. In float32 a voltage within float32 rounding of an
integer (or of the LIF threshold) can cross one step earlier or later, so a
neuron's count may differ by one; the outputs then agree to one spike's
worth of the read-out.
"""

import contextlib

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from jaxctl.spiking import (LIF, SpikingRectifiedLinear, conv2d, dense, from_flax, rate_apply,
                            spiking_network)

nengo = pytest.importorskip("nengo")

DT = 0.001
SIZES = (3, 12, 8, 2)
SCALES = (2.0, 3.0)
SYNAPSES = (0.002, None, 0.005)
OUTPUT_SYNAPSE = 0.01
N_STEPS = 300


def _problem():
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(a, b)) * 30 for a, b in zip(SIZES[:-1], SIZES[1:])]
    biases = [rng.normal(size=b) * 10 + 10 for b in SIZES[1:]]
    x = rng.uniform(0, 1, size=SIZES[0])
    v0 = [rng.uniform(0, 1, size=n) for n in SIZES[1:-1]]
    return weights, biases, x, v0


def _nengo_run(kind):
    weights, biases, x, v0 = _problem()
    neuron = {"relu": nengo.SpikingRectifiedLinear, "lif": nengo.LIF}[kind]
    with nengo.Network() as net:
        prev = nengo.Node(x)
        ensembles = []
        for i, s in enumerate(SCALES):
            n = SIZES[i + 1]
            ens = nengo.Ensemble(n, 1, neuron_type=neuron(amplitude=1 / s,
                                                          initial_state={"voltage": v0[i]}),
                                 gain=s * np.ones(n), bias=s * biases[i])
            nengo.Connection(prev if i == 0 else prev.neurons, ens.neurons,
                             transform=weights[i].T, synapse=SYNAPSES[i])
            prev = ens
            ensembles.append(ens)
        out = nengo.Node(size_in=SIZES[-1])
        nengo.Connection(prev.neurons, out, transform=weights[-1].T, synapse=SYNAPSES[-1])
        nengo.Connection(nengo.Node(biases[-1]), out, synapse=None)
        p_out = nengo.Probe(out, synapse=OUTPUT_SYNAPSE)
        p_spikes = [nengo.Probe(e.neurons, synapse=None) for e in ensembles]
    with nengo.Simulator(net, dt=DT, progress_bar=False) as sim:
        sim.run_steps(N_STEPS)
    counts = [sim.data[p] * DT * s for p, s in zip(p_spikes, SCALES)]  # amplitude / dt per spike
    assert all(np.allclose(c, np.round(c), atol=1e-9) for c in counts)
    return sim.data[p_out], [np.round(c) for c in counts]


def _jaxctl_run(kind, dtype):
    weights, biases, x, v0 = _problem()
    params = [{"w": jnp.asarray(w, dtype), "b": jnp.asarray(b, dtype)}
              for w, b in zip(weights, biases)]
    neuron = {"relu": SpikingRectifiedLinear(), "lif": LIF()}[kind]
    with pytest.warns(UserWarning) if kind == "lif" else contextlib.nullcontext():
        net = spiking_network((dense(),) * 3, neuron=neuron, dt=DT, synapses=SYNAPSES,
                              output_synapse=OUTPUT_SYNAPSE, scale_firing_rates=SCALES)
    xj = jnp.asarray(x, dtype)
    layers, out_state = net.init(params, xj)
    layers = tuple(
        (syn, neu if i == len(layers) - 1 else
         (jnp.asarray(v0[i], dtype) if kind == "relu" else (jnp.asarray(v0[i], dtype), neu[1])))
        for i, (syn, neu) in enumerate(layers))
    result = net.run(params, xj, N_STEPS, state=(layers, out_state), probe=True)
    return np.asarray(result.output), [np.asarray(c) for c in result.spikes]


@pytest.fixture(scope="module", params=["relu", "lif"])
def nengo_result(request):
    return request.param, _nengo_run(request.param)


def test_float64_spikes_are_identical_to_nengo(nengo_result):
    kind, (n_out, n_counts) = nengo_result
    with jax.enable_x64(True):
        out, counts = _jaxctl_run(kind, jnp.float64)
    for ours, theirs in zip(counts, n_counts):
        assert ours.sum() > 50, "the network must actually spike"
        np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_allclose(out, n_out, rtol=1e-9, atol=1e-9 * np.abs(n_out).max())


def test_float32_agrees_with_nengo_within_one_spike(nengo_result):
    kind, (n_out, n_counts) = nengo_result
    out, counts = _jaxctl_run(kind, jnp.float32)
    for ours, theirs in zip(counts, n_counts):
        assert np.all(np.abs(ours.sum(0) - theirs.sum(0)) <= 1)
        assert np.mean(ours != theirs) < 0.01
    weights = _problem()[0]
    one_spike = np.abs(weights[-1]).max() / (SCALES[-1] * DT)
    assert np.max(np.abs(out - n_out)) <= one_spike + 1e-4 * np.abs(n_out).max()


def test_rate_curves_match_nengo():
    J = np.linspace(-1.0, 30.0, 63)
    ours = np.asarray(LIF(tau_rc=0.03, tau_ref=0.004).rate(jnp.asarray(J)))
    theirs = nengo.LIFRate(tau_rc=0.03, tau_ref=0.004).rates(J, gain=1.0, bias=0.0).ravel()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)
    relu = np.asarray(SpikingRectifiedLinear().rate(jnp.asarray(J)))
    np.testing.assert_allclose(relu, nengo.SpikingRectifiedLinear().rates(J, 1.0, 0.0).ravel(),
                               atol=1e-6)


def test_flax_params_run_as_the_flax_module():
    nn = pytest.importorskip("flax.linen")

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(6, (3, 3), padding="VALID")(x))
            return nn.Dense(4)(x.reshape(-1))

    x = jax.random.uniform(jax.random.PRNGKey(0), (8, 8, 1))
    variables = Net().init(jax.random.PRNGKey(1), x)
    ours = rate_apply((conv2d(), dense()), from_flax(variables), x)[0]
    np.testing.assert_allclose(np.asarray(ours), np.asarray(Net().apply(variables, x)),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="must hold exactly 'kernel' and 'bias'"):
        from_flax({"params": {"Dense_0": {"kernel": jnp.ones((2, 2))}}})
