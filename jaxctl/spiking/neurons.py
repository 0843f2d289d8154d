"""Neuron models: rate curves and one-step spiking updates, as in Nengo.

Every neuron maps an input current `J` (dimensionless, as Nengo's) to an
output. Rate neurons output their steady firing rate `r(J)`; spiking neurons
keep a state and emit spikes of height `amplitude / dt`, so that a spike
integrates to `amplitude` over its step and the time average of the output
tends to `amplitude * r(J)` (the convention of Nengo, which DeWolf (2020)
multiplies by `dt` to count spikes per step).

- `RectifiedLinear`: `r(J) = max(J, 0)`.
- `SpikingRectifiedLinear`: integrate and fire, `v += max(J, 0) dt`; it emits
  `floor(v)` spikes in the step (several are allowed) and resets by
  subtraction, `v -= floor(v)`. Its rate is exactly `max(J, 0)`.
- `LIFRate`: `r(J) = 1 / (tau_ref + tau_rc log(1 + 1/(J - 1)))` for `J > 1`.
- `LIF`: the membrane `tau_rc dv/dt = J - v` integrated exactly over the part
  of the step outside the refractory period; a spike at `v > 1` resets `v`
  to 0 and starts `tau_ref` of refractoriness counted from the
  interpolated spike time.
- `SoftLIFRate`: the LIF rate curve with `J - 1` replaced by
  `sigma softplus((J - 1) / sigma)`, smooth for training
  (Hunsberger & Eliasmith 2015).

The neurons are frozen dataclasses: hashable, static under `jit`. Their
states are pytrees of arrays shaped like `J`.

References:
  T. DeWolf (2020), "Converting your Keras model into a spiking neural
  network", studywolf blog.
  E. Hunsberger, C. Eliasmith (2015), "Spiking deep networks with LIF
  neurons", arXiv:1510.08829.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxctl.util.checks import static_float


def _positive(name, value):
    return static_float(name, value, low=0.0, low_open=True)


def _nonnegative(name, value):
    return static_float(name, value, low=0.0)


def _floor_straight_through(v: jax.Array) -> jax.Array:
    """`floor(v)` forward, identity backward (a straight-through surrogate)."""
    return v + jax.lax.stop_gradient(jnp.floor(v) - v)


@dataclasses.dataclass(frozen=True)
class RectifiedLinear:
    """Rate ReLU: `r(J) = amplitude * max(J, 0)`."""
    amplitude: float = 1.0
    spiking = False

    def __post_init__(self):
        object.__setattr__(self, "amplitude", _positive("amplitude", self.amplitude))

    def rate(self, J: jax.Array) -> jax.Array:
        """The steady firing rate per unit amplitude, `max(J, 0)`."""
        return jnp.maximum(J, 0)

    def init_state(self, J: jax.Array, voltage: Any = 0.0) -> tuple:
        """Rate neurons have no state."""
        del J, voltage
        return ()

    def step(self, state: tuple, J: jax.Array, dt: Any) -> tuple[tuple, jax.Array]:
        """Returns `(state, amplitude * r(J))`."""
        del dt
        return state, self.amplitude * self.rate(J)


@dataclasses.dataclass(frozen=True)
class SpikingRectifiedLinear(RectifiedLinear):
    """Integrate-and-fire ReLU; `surrogate=True` gives it the ReLU's gradient.

    With `surrogate`, `floor` is differentiated as the identity
    (straight-through), so the reset `v - floor(v)` passes no gradient back
    in time and each step's spike count has the gradient `dt` of its own
    input: the gradient of the mean output equals the rate ReLU's.
    """
    surrogate: bool = False
    spiking = True

    def init_state(self, J: jax.Array, voltage: Any = 0.0) -> jax.Array:
        """The voltage, `voltage` broadcast to `J`'s shape (Nengo draws it from U(0, 1))."""
        return jnp.broadcast_to(jnp.asarray(voltage, J.dtype), J.shape) + jnp.zeros_like(J)

    def step(self, state, J, dt):
        """`v += max(J, 0) dt`; `n = floor(v)` spikes of height `amplitude / dt`; `v -= n`."""
        v = state + jnp.maximum(J, 0) * dt
        n = _floor_straight_through(v) if self.surrogate else jnp.floor(v)
        return v - n, (self.amplitude / dt) * n


@dataclasses.dataclass(frozen=True)
class LIFRate:
    """Rate LIF: `r(J) = amplitude / (tau_ref + tau_rc log1p(1 / (J - 1)))`, 0 for `J <= 1`."""
    tau_rc: float = 0.02
    tau_ref: float = 0.002
    amplitude: float = 1.0
    spiking = False

    def __post_init__(self):
        object.__setattr__(self, "tau_rc", _positive("tau_rc", self.tau_rc))
        object.__setattr__(self, "tau_ref", _nonnegative("tau_ref", self.tau_ref))
        object.__setattr__(self, "amplitude", _positive("amplitude", self.amplitude))

    def _rate_of_excess(self, j: jax.Array) -> jax.Array:
        """The rate for the suprathreshold current `j = J - 1 > 0` (0 elsewhere)."""
        safe = jnp.where(j > 0, j, 1.0)
        r = 1.0 / (self.tau_ref + self.tau_rc * jnp.log1p(1.0 / safe))
        return jnp.where(j > 0, r, 0.0)

    def rate(self, J: jax.Array) -> jax.Array:
        """The steady firing rate (Hz) per unit amplitude."""
        return self._rate_of_excess(J - 1)

    def init_state(self, J, voltage=0.0) -> tuple:
        del J, voltage
        return ()

    def step(self, state, J, dt):
        del dt
        return state, self.amplitude * self.rate(J)


@dataclasses.dataclass(frozen=True)
class SoftLIFRate(LIFRate):
    """LIF rate with the threshold smoothed: `J - 1 -> sigma softplus((J - 1) / sigma)`."""
    sigma: float = 0.02

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "sigma", _positive("sigma", self.sigma))

    def rate(self, J):
        return self._rate_of_excess(self.sigma * jax.nn.softplus((J - 1) / self.sigma))


@dataclasses.dataclass(frozen=True)
class LIF(LIFRate):
    """Spiking leaky integrate-and-fire with a refractory period.

    State `(v, refractory)`. Per step: `refractory -= dt`; the neuron
    integrates for `delta = clip(dt - refractory, 0, dt)`,
    `v <- v + (J - v)(1 - exp(-delta / tau_rc))`; where `v > 1` it spikes,
    `v <- 0` and `refractory <- tau_ref + t_spike`, with `t_spike` the time
    left in the step after the threshold crossing; `v` is floored at
    `min_voltage`.
    """
    min_voltage: float = 0.0
    spiking = True

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "min_voltage", static_float("min_voltage", self.min_voltage,
                                                        high=1.0, high_open=True))

    def init_state(self, J, voltage=0.0):
        v = jnp.broadcast_to(jnp.asarray(voltage, J.dtype), J.shape) + jnp.zeros_like(J)
        return v, jnp.zeros_like(J)

    def step(self, state, J, dt):
        v, refractory = state
        refractory = refractory - dt
        delta = jnp.clip(dt - refractory, 0.0, dt)
        v = v - (J - v) * jnp.expm1(-delta / self.tau_rc)
        spiked = v > 1
        # time from the threshold crossing to the end of the step (J > v > 1 where it spiked)
        ratio = jnp.where(spiked, (v - 1) / jnp.where(spiked, J - 1, 1.0), 0.0)
        t_spike = dt + self.tau_rc * jnp.log1p(-ratio)
        out = jnp.where(spiked, self.amplitude / dt, 0.0).astype(J.dtype)
        v = jnp.where(spiked, 0.0, jnp.maximum(v, self.min_voltage))
        refractory = jnp.where(spiked, self.tau_ref + t_spike, refractory)
        return (v, refractory), out


NEURONS = (RectifiedLinear, SpikingRectifiedLinear, LIFRate, SoftLIFRate, LIF)
