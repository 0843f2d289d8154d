"""Feed-forward networks run as rate or spiking neurons over time.

A network is a tuple of layers (`dense()`, `conv2d(...)`) and a list of
`{"w", "b"}` parameters, one per layer: the format of `jaxctl.mlp_init`
(dense `w` of shape `(n_in, n_out)`), conv kernels in HWIO with inputs in
HWC, or a flax module's params through `from_flax`. Every layer but the last
is followed by neurons; the last is the linear read-out. A dense layer
flattens its input.

`SpikingNetwork` runs trained parameters with other neurons, the conversion
of DeWolf (2020) (Nengo DL's `Converter` with `swap_activations`): per step
`n`, layer `i` reads its input through its synapse, computes
`J_i = W_i x_i + b_i` and drives its neurons with `s_i J_i`, sending
`neuron(s_i J_i) / s_i` on. The firing-rate scale `s_i`
(`scale_firing_rates`) leaves a ReLU network's rate function unchanged,
`max(s J, 0) / s = max(J, 0)`, while the neurons fire `s` times faster; for
other neurons it changes the function (a warning says so). The step order
and the synapses' one-step delay are Nengo's, so a network run here and the
same network built in Nengo give the same spikes (a test checks it).

References:
  T. DeWolf (2020), "Converting your Keras model into a spiking neural
  network", studywolf blog.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jaxctl.spiking.neurons import RectifiedLinear, SpikingRectifiedLinear
from jaxctl.spiking.synapses import check_dt, check_tau, lowpass_decay, lowpass_step
from jaxctl.util.checks import PyTree, as_float, check_choice, check_positive_int, static_float

Params = Sequence[dict[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class Dense:
    """`x.ravel() @ w + b`, `w` of shape `(n_in, n_out)`."""


@dataclasses.dataclass(frozen=True)
class Conv2D:
    """2-D convolution of an `(H, W, C)` input with an HWIO kernel, plus `b` per channel."""
    strides: tuple[int, int] = (1, 1)
    padding: str = "VALID"


def dense() -> Dense:
    """A dense layer."""
    return Dense()


def conv2d(strides: int | tuple[int, int] = 1, padding: str = "VALID") -> Conv2D:
    """A 2-D convolution layer (`padding` is `"VALID"` or `"SAME"`)."""
    if not isinstance(strides, (tuple, list)):
        strides = (strides, strides)
    if len(strides) != 2:
        raise ValueError(f"strides must be an int or a pair of ints, got {strides!r}")
    strides = tuple(check_positive_int("strides", s) for s in strides)
    return Conv2D(strides, check_choice("padding", padding, ("VALID", "SAME")))


def affine(layer: Dense | Conv2D, p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    """The layer's affine map `W x + b` on one input."""
    if isinstance(layer, Dense):
        return x.reshape(-1) @ p["w"] + p["b"]
    dtype = jnp.result_type(x, p["w"])  # lax.conv does not promote mixed dtypes
    y = lax.conv_general_dilated(x[None].astype(dtype), p["w"].astype(dtype), layer.strides,
                                 layer.padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y[0] + p["b"]


def check_network(layers: Sequence[Any], params: Params, x: jax.Array) -> None:
    """Checks that `params` has one `{"w", "b"}` per layer, with shapes that chain from `x`."""
    if len(layers) == 0:
        raise ValueError("layers must hold at least one layer")
    if not isinstance(params, (list, tuple)) or len(params) != len(layers):
        n = len(params) if isinstance(params, (list, tuple)) else type(params).__name__
        raise ValueError(f"params must be a list of one {{'w', 'b'}} dict per layer "
                         f"({len(layers)} layers), got {n}")
    shape = tuple(x.shape)
    for i, (layer, p) in enumerate(zip(layers, params)):
        if not isinstance(p, dict) or set(p) != {"w", "b"}:
            raise ValueError(f"params[{i}] must be a dict with keys 'w' and 'b'")
        w, b = p["w"], p["b"]
        if isinstance(layer, Dense):
            size = math.prod(shape)
            if w.ndim != 2 or w.shape[0] != size:
                raise ValueError(f"params[{i}]['w'] of the dense layer {i} must have shape "
                                 f"({size}, n_out) for an input of shape {shape}, got {w.shape}")
        elif isinstance(layer, Conv2D):
            if len(shape) != 3 or w.ndim != 4 or w.shape[2] != shape[-1]:
                raise ValueError(f"layer {i} is conv2d: it needs an (H, W, C) input and an "
                                 f"(kh, kw, C, C_out) kernel; got input {shape} and params[{i}]"
                                 f"['w'] {w.shape}")
        else:
            raise ValueError(f"layers[{i}] must be dense() or conv2d(...), got {layer!r}")
        if b.shape != (w.shape[-1],):
            raise ValueError(f"params[{i}]['b'] must have shape ({w.shape[-1]},), got {b.shape}")
        shape = jax.eval_shape(lambda v, p=p, layer=layer: affine(layer, p, v),
                               jax.ShapeDtypeStruct(shape, x.dtype)).shape


def rate_apply(layers: Sequence[Any], params: Params, x: jax.Array,
               activation=jax.nn.relu) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """The network as a rate network on one input: `(output, hidden activations)`.

    The hidden activations are the firing rates (Hz, at amplitude 1) that a
    firing-rate penalty acts on.
    """
    x = as_float("x", x)
    check_network(layers, params, x)
    hidden = []
    for layer, p in zip(layers[:-1], params[:-1]):
        x = activation(affine(layer, p, x))
        hidden.append(x)
    return affine(layers[-1], params[-1], x), tuple(hidden)


def from_flax(variables: PyTree) -> list[dict[str, jax.Array]]:
    """A flax (linen) module's `Dense`/`Conv` params as `[{"w": kernel, "b": bias}, ...]`.

    Layers are taken in definition order (flax keeps it); accepts the
    `{"params": {...}}` variables or the inner dict.
    """
    tree = variables.get("params", variables) if isinstance(variables, dict) else None
    if not isinstance(tree, dict) or not tree:
        raise ValueError("variables must be a flax params dict {'params': {name: {'kernel', "
                         "'bias'}}}")
    out = []
    for name, p in tree.items():
        if not isinstance(p, dict) or set(p) != {"kernel", "bias"}:
            raise ValueError(f"variables: layer {name!r} must hold exactly 'kernel' and 'bias' "
                             "(a Dense or Conv with use_bias=True)")
        out.append({"w": jnp.asarray(p["kernel"]), "b": jnp.asarray(p["bias"])})
    return out


class StepOutput(NamedTuple):
    """One step of a `SpikingNetwork`.

    Attributes:
      output: the read-out after the output synapse.
      spikes: per hidden layer, spikes emitted in the step (`floor(v)` counts
        for spiking neurons, `rate * dt` for rate neurons).
      filtered: per hidden layer, its output after the synapse into the next
        layer (the signal the next layer integrates).
    """
    output: jax.Array
    spikes: tuple[jax.Array, ...]
    filtered: tuple[jax.Array, ...]


class SimResult(NamedTuple):
    """`SpikingNetwork.run`: per-step `output (n_steps, ...)`, probes, and the final state."""
    output: jax.Array
    spikes: tuple[jax.Array, ...] | None
    filtered: tuple[jax.Array, ...] | None
    state: PyTree


def _per_layer(name: str, value: Any, n: int, check) -> tuple:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} must be one value or a list of {n} (one per "
                             f"{'layer' if name == 'synapses' else 'hidden layer'}), "
                             f"got {len(value)}")
        return tuple(check(f"{name}[{i}]", v) for i, v in enumerate(value))
    return (check(name, value),) * n


def _check_scale(name, s):
    return static_float(name, s, low=0.0, low_open=True)


@dataclasses.dataclass(frozen=True)
class SpikingNetwork:
    """A network run with `neuron` over time; build it with `spiking_network`."""
    layers: tuple
    neuron: Any
    dt: float
    synapses: tuple
    output_synapse: float | None
    scale_firing_rates: tuple

    def init(self, params: Params, x: jax.Array, voltage: Any = 0.0) -> PyTree:
        """The state before the first step: synapses at 0, voltages at `voltage`."""
        x = as_float("x", x)
        check_network(self.layers, params, x)
        states, inp = [], x
        for i, (layer, p) in enumerate(zip(self.layers, params)):
            J = affine(layer, p, inp)
            hidden = i < len(self.layers) - 1
            states.append((jnp.zeros_like(inp),
                           self.neuron.init_state(J, voltage) if hidden else ()))
            inp = J
        return tuple(states), jnp.zeros_like(inp)

    def step(self, params: Params, state: PyTree, x: jax.Array) -> tuple[PyTree, StepOutput]:
        """Advances every layer by one step `dt` with the input `x` held."""
        layer_states, out_state = state
        decays = [lowpass_decay(tau, self.dt) for tau in self.synapses]
        new_states, spikes, filtered, inp = [], [], [], as_float("x", x)
        for i, (layer, p, (syn, neu)) in enumerate(zip(self.layers, params, layer_states)):
            syn, seen = lowpass_step(syn, inp, decays[i])
            if i > 0:
                filtered.append(seen)
            J = affine(layer, p, seen)
            if i < len(self.layers) - 1:
                s = self.scale_firing_rates[i]
                neu, out = self.neuron.step(neu, s * J, self.dt)
                spikes.append(out * (self.dt / self.neuron.amplitude))
                inp = out / s
            else:
                inp = J
            new_states.append((syn, neu))
        out_state, output = lowpass_step(out_state, inp,
                                         lowpass_decay(self.output_synapse, self.dt))
        return (tuple(new_states), out_state), StepOutput(output, tuple(spikes), tuple(filtered))

    def run(self, params: Params, x: jax.Array, n_steps: int, *, state: PyTree = None,
            probe: bool = False) -> SimResult:
        """Presents `x` for `n_steps` steps (from `state`, or from `init`).

        Returns the output of every step and, with `probe`, the spikes and
        filtered outputs of every hidden layer, each `(n_steps, ...)`.
        """
        n_steps = check_positive_int("n_steps", n_steps)
        x = as_float("x", x)
        if state is None:
            state = self.init(params, x)
        else:
            check_network(self.layers, params, x)

        def body(carry, _):
            carry, out = self.step(params, carry, x)
            return carry, (out if probe else out.output)

        state, outs = lax.scan(body, state, None, length=n_steps)
        if probe:
            return SimResult(outs.output, outs.spikes, outs.filtered, state)
        return SimResult(outs, None, None, state)


def spiking_network(layers: Sequence[Any], *, neuron: Any = SpikingRectifiedLinear(),
                    dt: float = 0.001, synapses: Any = None, output_synapse: float | None = None,
                    scale_firing_rates: Any = 1.0) -> SpikingNetwork:
    """A network of `layers` run with `neuron` at step `dt` (seconds).

    Args:
      layers: `dense()` / `conv2d(...)` layers; all but the last get neurons.
      neuron: a neuron of `jaxctl.spiking.neurons` (rate or spiking).
      dt: the step, > 0.
      synapses: low-pass time constant of the connection INTO each layer
        (the first filters the input): None (pass-through), one value for
        all, or a list with one per layer, each None or >= 0.
      output_synapse: low-pass filter on the read-out (Nengo's probe synapse).
      scale_firing_rates: the rate scale `s > 0`, one value or one per
        hidden layer.

    Example:
      >>> net = spiking_network((dense(), dense()), synapses=0.005)
      >>> params = [{"w": jnp.ones((2, 3)), "b": jnp.zeros(3)},
      ...           {"w": jnp.ones((3, 1)), "b": jnp.zeros(1)}]
      >>> net.run(params, jnp.array([10.0, 20.0]), n_steps=50).output.shape
      (50, 1)
    """
    layers = tuple(layers)
    if not layers or not all(isinstance(layer, (Dense, Conv2D)) for layer in layers):
        raise ValueError(f"layers must be a non-empty list of dense() / conv2d(...), got {layers!r}")
    if not hasattr(neuron, "step") or not hasattr(neuron, "init_state"):
        raise ValueError(f"neuron must be a neuron of jaxctl.spiking.neurons, got {neuron!r}")
    dt = check_dt(dt)
    synapses = _per_layer("synapses", synapses, len(layers), check_tau)
    scales = _per_layer("scale_firing_rates", scale_firing_rates, max(len(layers) - 1, 1),
                        _check_scale)
    if not isinstance(neuron, RectifiedLinear) and any(s != 1.0 for s in scales):
        warnings.warn(f"scale_firing_rates != 1 changes the function of a network of "
                      f"{type(neuron).__name__} neurons: only rectified-linear neurons satisfy "
                      "f(s J) / s = f(J)", stacklevel=2)
    return SpikingNetwork(layers, neuron, dt, synapses, check_tau("output_synapse", output_synapse),
                          scales)
