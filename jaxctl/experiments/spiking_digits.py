"""The conversion story of DeWolf (2020) on scikit-learn's 8x8 digits.

A rate network, a 3x3 conv layer of 32 ReLU filters (stride 1, VALID: a 6x6
map, 1152 neurons; on an 8x8 image stride 2 would leave a 3x3 map and lose
most of the spatial detail) and a dense read-out of 10 units, is trained in
rate mode with Adam on the cross-entropy, then run as spiking ReLU neurons
(`jaxctl.spiking.spiking_network`). Each held-out image is presented for
`n_steps` steps of `dt` from a fresh state (voltages and synapses at 0); the
prediction is the argmax of the read-out at the last step, as DeWolf (2020)
reads it (`readout_window=k` averages the last `k` steps instead).

Why a converted network may not spike at all: a spiking ReLU driven by a
constant current `J` fires `floor(J T dt)` spikes in `T` steps from rest, so
a neuron can spike within the presentation only if its rate-mode activation
`r = J` (Hz) satisfies `r T dt >= 1` (`rate_statistics`). The remedies are
those of DeWolf (2020): longer presentations, low-pass synapses on the
input->conv and conv->dense connections, a firing-rate scale `s` (the
neurons see `s J` and send `1/s` per spike), and rate-regularised training
(`firing_rate_penalty`, 200-300 Hz).

Notation: images `x` of shape `(8, 8, 1)` in `[0, 1]`, labels `y` in
`0..9`, parameters `[{"w", "b"}, {"w", "b"}]` for `LAYERS`.

References:
  T. DeWolf (2020), "Converting your Keras model into a spiking neural
  network", studywolf blog.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxctl.spiking import conv2d, dense, firing_rate_penalty, rate_apply, spiking_network
from jaxctl.util.checks import check_finite_positive, check_int, check_nonnegative, check_positive_int

LAYERS = (conv2d(strides=1, padding="VALID"), dense())
N_CLASSES = 10


class DigitsData(NamedTuple):
    """A fixed stratified split of the 1797 digits: images `(n, 8, 8, 1)` in [0, 1], labels `(n,)`."""
    x_train: jax.Array
    y_train: jax.Array
    x_test: jax.Array
    y_test: jax.Array


def load_digits_split(test_size: int = 360, seed: int = 0) -> DigitsData:
    """scikit-learn's digits (shipped with it, nothing downloaded), pixels 0..16 scaled to [0, 1].

    The split is stratified by label and fixed by `seed` (default 1437 train / 360 test).

    Example:
      >>> data = load_digits_split()
      >>> data.x_train.shape, data.x_test.shape
      ((1437, 8, 8, 1), (360, 8, 8, 1))
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    test_size = check_int("test_size", test_size, low=N_CLASSES)
    images, labels = load_digits(return_X_y=True)
    if test_size > len(labels) - N_CLASSES:
        raise ValueError(f"test_size must leave at least {N_CLASSES} training images, "
                         f"got {test_size} of {len(labels)}")
    x = (images / 16.0).reshape(-1, 8, 8, 1).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, labels, test_size=test_size, stratify=labels,
                                              random_state=seed)
    return DigitsData(jnp.asarray(x_tr), jnp.asarray(y_tr), jnp.asarray(x_te), jnp.asarray(y_te))


class TrainSettings(NamedTuple):
    """Rate-mode training (hashable: a new value recompiles).

    Attributes:
      filters, kernel: the conv layer, `kernel x kernel x 1 x filters`.
      epochs, batch_size, learning_rate: Adam on the mean cross-entropy;
        each epoch is a fresh permutation cut into full batches.
      rate_weight: weight of `firing_rate_penalty` on the conv activations
        (0 = plain training); `rate_low`, `rate_high`: its band in Hz
        (DeWolf 2020: 200-300 Hz).
      rate_unit: Hz per unit of the parameters Adam sees: the network is
        trained as `w_conv = rate_unit * v_conv`, `w_dense = v_dense /
        rate_unit` (the same function for a ReLU network, rates times
        `rate_unit`). Adam moves each parameter by about `learning_rate` per
        step, so rates of a few Hz would need ~10^4 steps to reach 200 Hz;
        in units of 100 Hz they start within reach of the band.
    """
    filters: int = 32
    kernel: int = 3
    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 3e-3
    rate_weight: float = 0.0
    rate_low: float = 200.0
    rate_high: float = 300.0
    rate_unit: float = 1.0


def init_params(key: jax.Array, filters: int = 32, kernel: int = 3,
                image_shape: tuple[int, int, int] = (8, 8, 1)) -> list[dict[str, jax.Array]]:
    """He-normal conv kernel (HWIO), LeCun-normal read-out, zero biases."""
    filters, kernel = check_positive_int("filters", filters), check_positive_int("kernel", kernel)
    h, w, c = image_shape
    k1, k2 = jax.random.split(key)
    n_hidden = (h - kernel + 1) * (w - kernel + 1) * filters
    conv_w = jax.random.normal(k1, (kernel, kernel, c, filters)) * np.sqrt(2.0 / (kernel ** 2 * c))
    dense_w = jax.random.normal(k2, (n_hidden, N_CLASSES)) / np.sqrt(n_hidden)
    return [{"w": conv_w, "b": jnp.zeros(filters)},
            {"w": dense_w, "b": jnp.zeros(N_CLASSES)}]


def logits_and_rates(params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Rate-mode read-out `(n, 10)` and conv activations `(n, 6, 6, filters)` (Hz) of a batch."""
    out, hidden = jax.vmap(lambda xi: rate_apply(LAYERS, params, xi))(x)
    return out, hidden[0]


def from_units(v, rate_unit: float) -> list[dict[str, jax.Array]]:
    """The network's parameters from the trained ones `v` (see `TrainSettings.rate_unit`)."""
    return [{"w": rate_unit * v[0]["w"], "b": rate_unit * v[0]["b"]},
            {"w": v[1]["w"] / rate_unit, "b": v[1]["b"]}]


def loss_fn(v, x, y, settings: TrainSettings) -> jax.Array:
    """Mean cross-entropy plus `rate_weight * firing_rate_penalty(conv rates)`."""
    logits, rates = logits_and_rates(from_units(v, settings.rate_unit), x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss + firing_rate_penalty(rates, settings.rate_low, settings.rate_high,
                                      settings.rate_weight)


def _train_one(key, x, y, settings: TrainSettings):
    opt = optax.adam(settings.learning_rate)
    init_key, key = jax.random.split(key)
    params = init_params(init_key, settings.filters, settings.kernel, tuple(x.shape[1:]))
    n_batches = x.shape[0] // settings.batch_size

    def batch_step(carry, idx):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, x[idx], y[idx], settings)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    # one scan over every batch of every epoch (a scan of scans compiles several times slower)
    orders = jax.vmap(lambda k: jax.random.permutation(k, x.shape[0]))(
        jax.random.split(key, settings.epochs))[:, : n_batches * settings.batch_size]
    (params, _), losses = lax.scan(batch_step, (params, opt.init(params)),
                                   orders.reshape(settings.epochs * n_batches, -1))
    losses = losses.reshape(settings.epochs, n_batches).mean(axis=1)
    return from_units(params, settings.rate_unit), losses


def train(data: DigitsData, settings: TrainSettings = TrainSettings(),
          seeds: Sequence[int] = (0,)) -> tuple[list[dict[str, jax.Array]], jax.Array]:
    """Trains one network per seed in one jitted program (one `lax.map` over the training seeds).

    Returns the parameters with a leading seed axis and the mean training
    loss per epoch `(n_seeds, epochs)`.
    """
    check_positive_int("epochs", settings.epochs)
    check_positive_int("batch_size", settings.batch_size)
    check_nonnegative("rate_weight", settings.rate_weight)
    check_finite_positive("rate_unit", settings.rate_unit)
    if settings.batch_size > data.x_train.shape[0]:
        raise ValueError(f"batch_size must be <= the {data.x_train.shape[0]} training images, "
                         f"got {settings.batch_size}")
    keys = jnp.stack([jax.random.key_data(jax.random.key(int(s))) for s in seeds])
    # the sizes are static, the numbers traced: plain and regularised training share a program
    sizes = TrainSettings(settings.filters, settings.kernel, settings.epochs, settings.batch_size)
    numbers = {k: jnp.float32(getattr(settings, k)) for k in _TRACED}
    return _train_jit(keys, data.x_train, data.y_train, sizes, numbers)


_TRACED = ("learning_rate", "rate_weight", "rate_low", "rate_high", "rate_unit")


@jax.jit(static_argnames="sizes")
def _train_jit(keys, x, y, sizes, numbers):
    settings = sizes._replace(**numbers)
    return lax.map(lambda k: _train_one(jax.random.wrap_key_data(k), x, y, settings), keys)


def rate_accuracy(params, x: jax.Array, y: jax.Array) -> float:
    """Accuracy of the rate network (one set of parameters) on `(x, y)`."""
    return float(_rate_accuracy(params, x, y))


@jax.jit
def _rate_accuracy(params, x, y):
    return jnp.mean(jnp.argmax(logits_and_rates(params, x)[0], axis=-1) == y)


class SpikingSettings(NamedTuple):
    """How the trained network runs as spiking ReLU neurons.

    Attributes:
      n_steps: presentation time per image, in steps of `dt` seconds.
      dt: the step (Nengo's default, 1 ms).
      tau: low-pass synapse on the input->conv and conv->dense connections
        (DeWolf 2020's per-connection choice); None = no synapse.
      scale: `scale_firing_rates` of the conv layer.
      readout_window: the prediction is the argmax of the read-out averaged
        over the last `readout_window` steps (1 = the last step, as DeWolf
        2020).
    """
    n_steps: int = 50
    dt: float = 0.001
    tau: float | None = None
    scale: float = 1.0
    readout_window: int = 1


def network(settings: SpikingSettings):
    """The `SpikingNetwork` of `settings` (spiking ReLU, synapses on both connections)."""
    return spiking_network(LAYERS, dt=settings.dt, synapses=(settings.tau, settings.tau),
                           scale_firing_rates=settings.scale)


class SpikingEval(NamedTuple):
    """Spiking evaluation of one or more seeds (leading axis) on a set of images.

    Attributes:
      accuracy: `(n_seeds,)`, argmax of the read-out at the last step (or
        its mean over the window) against the labels.
      spikes_per_image: `(n_seeds,)` mean conv-layer spike count per image.
      active_fraction: `(n_seeds,)` fraction of conv neurons that spiked at
        least once, mean over images.
      output: `(n_seeds, n_images, n_steps, 10)` the read-out at every step.
    """
    accuracy: np.ndarray
    spikes_per_image: np.ndarray
    active_fraction: np.ndarray
    output: np.ndarray


@jax.jit(static_argnames=("net", "n_steps"))
def _simulate(net, params, x, n_steps):
    def one(p, xi):
        def body(state, _):
            state, out = net.step(p, state, xi)
            return state, (out.output, out.spikes[0])

        # spike totals are carried, not stacked, so memory stays (n_images, neurons)
        def body_sum(carry, _):
            state, total = carry
            state, (output, spikes) = body(state, None)
            return (state, total + spikes), output

        state = net.init(p, xi)
        zeros = jnp.zeros_like(net.step(p, state, xi)[1].spikes[0])
        (_, total), outputs = lax.scan(body_sum, (state, zeros), None, length=n_steps)
        return outputs, total

    return jax.vmap(lambda p: jax.vmap(lambda xi: one(p, xi))(x))(params)


def readout_accuracy(outputs: jax.Array, y: jax.Array, window: int = 1) -> np.ndarray:
    """Accuracy per seed of read-outs `(n_seeds, n_images, n_steps, 10)`: the argmax of
    their mean over the last `window` steps against `y`."""
    window = check_positive_int("window", window)
    pred = jnp.argmax(jnp.mean(outputs[:, :, -window:], axis=2), axis=-1)
    return np.asarray(jnp.mean(pred == y, axis=1))


def evaluate_spiking(params, x: jax.Array, y: jax.Array,
                     settings: SpikingSettings = SpikingSettings()) -> SpikingEval:
    """Presents every image for `n_steps` from a fresh state, for every seed of `params`.

    `params` carries a leading seed axis (as `train` returns it).
    """
    n_steps = check_positive_int("n_steps", settings.n_steps)
    window = check_positive_int("readout_window", settings.readout_window)
    if window > n_steps:
        raise ValueError(f"readout_window must be <= n_steps={n_steps}, got {window}")
    outputs, totals = _simulate(network(settings), params, x, n_steps)
    axes = tuple(range(2, totals.ndim))
    return SpikingEval(readout_accuracy(outputs, y, window),
                       np.asarray(totals.sum(axis=axes).mean(axis=1)),
                       np.asarray((totals > 0).mean(axis=axes).mean(axis=1)),
                       np.asarray(outputs))


def rate_statistics(params, x: jax.Array, n_steps: Sequence[int], dt: float = 0.001,
                    scale: float = 1.0) -> dict[str, Any]:
    """Why a converted network may stay silent, read from its rate-mode activations.

    From rest, a spiking ReLU with the constant input `scale * r` (no input
    synapse) fires `floor(scale * r * T * dt)` spikes in `T` steps, so it can
    spike at all only if `scale * r * T * dt >= 1`.

    Returns the maximum and mean conv rate (Hz) over the images, the
    fraction of (image, neuron) pairs with a positive rate, and per `T`
    the fraction of (image, neuron) pairs that can spike within `T` steps
    and the predicted spike count per image.
    """
    rates = scale * logits_and_rates(params, x)[1].reshape(x.shape[0], -1)
    can = {int(t): float(jnp.mean(rates * t * dt >= 1)) for t in n_steps}
    counts = {int(t): float(jnp.floor(rates * t * dt).sum(axis=1).mean()) for t in n_steps}
    return {"max_rate_hz": float(rates.max()), "mean_rate_hz": float(rates.mean()),
            "active_fraction": float(jnp.mean(rates > 0)),
            "steps_to_first_spike": float(np.ceil(1.0 / (float(rates.max()) * dt)))
            if float(rates.max()) > 0 else None,
            "fraction_can_spike": can, "predicted_spikes_per_image": counts}


def probe(params, x: jax.Array, settings: SpikingSettings) -> tuple[np.ndarray, np.ndarray]:
    """One network (no seed axis) on a few images: conv spike counts `(n_images, n_steps, neurons)`
    and read-outs `(n_images, n_steps, 10)`."""
    net = network(settings)
    res = jax.vmap(lambda xi: net.run(params, xi, settings.n_steps, probe=True))(x)
    spikes = res.spikes[0].reshape(x.shape[0], settings.n_steps, -1)
    return np.asarray(spikes), np.asarray(res.output)
