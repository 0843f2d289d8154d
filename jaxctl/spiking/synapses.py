"""First-order low-pass synapses, discretised exactly, with Nengo's timing.

A synapse `tau` filters a signal by `tau dy/dt = x - y` (impulse response
`exp(-t / tau) / tau`). Holding `x` constant over each step of length `dt`
(zero-order hold) makes the update exact:

    y[n + 1] = a y[n] + (1 - a) x[n],   a = exp(-dt / tau),   y[0] = 0.

As in Nengo, the filtered value read at step `n` is `y[n]`: the input of a
step reaches the output from the next step on, so a filtered connection
delays by one step and the response to a unit step input is
`y[n] = 1 - a^n`. `tau = 0` is that one-step delay alone; `None` is a
pass-through (no filter, no delay), as `synapse=None` in Nengo.

References:
  T. DeWolf (2020), "Converting your Keras model into a spiking neural
  network", studywolf blog (the `Lowpass` synapses of Nengo).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxctl.util.checks import as_float, static_float


def check_tau(name: str, tau: Any) -> float | None:
    """A synapse time constant: `None` (pass-through) or a static number `>= 0`."""
    return None if tau is None else static_float(name, tau, low=0.0)


def check_dt(dt: Any) -> float:
    """The simulation step: a static number `> 0` (seconds)."""
    return static_float("dt", dt, low=0.0, low_open=True)


def lowpass_decay(tau: float | None, dt: float) -> float | None:
    """The per-step decay `a = exp(-dt / tau)` (`0` for `tau = 0`, `None` for no synapse)."""
    tau = check_tau("tau", tau)
    dt = check_dt(dt)
    if tau is None:
        return None
    return 0.0 if tau == 0 else math.exp(-dt / tau)


def lowpass_step(state: jax.Array, x: jax.Array, decay: float | None):
    """One step: returns `(next state, output)`; the output is the state before `x` enters."""
    if decay is None:
        return state, x
    return decay * state + (1 - decay) * x, state


def lowpass(xs: jax.Array, tau: float | None, dt: float) -> jax.Array:
    """Filters `xs` along its first axis (time) with the synapse `tau`.

    Example:
      >>> y = lowpass(jnp.ones((3, 1)), tau=0.01, dt=0.001)
      >>> [round(float(v), 4) for v in y[:, 0]]
      [0.0, 0.0952, 0.1813]
    """
    xs = as_float("xs", xs)
    decay = lowpass_decay(tau, dt)
    if decay is None:
        return xs

    def step(state, x):
        return lowpass_step(state, x, decay)

    return lax.scan(step, jnp.zeros_like(xs[0]), xs)[1]
