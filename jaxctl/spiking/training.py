"""Training helpers for networks that will run as spiking neurons.

A converted network fires only as fast as its rate network's activations:
at 35 Hz a neuron needs about 30 ms for its first spike, and DeWolf (2020)
saw no spike at all in a 30-step presentation. Penalising the rates outside
a band during rate training raises them without changing the neurons:

    penalty(r) = weight * mean(max(r - high, 0) + max(low - r, 0)),

the `put_in_range` term of DeWolf (2020), averaged over neurons (he sums,
with weight 100) so that the weight does not depend on the layer widths.

References:
  T. DeWolf (2020), "Converting your Keras model into a spiking neural
  network", studywolf blog.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from jaxctl.util.checks import as_float, check_nonnegative, check_scalar, concrete_scalar


def firing_rate_penalty(rates: jax.Array | Sequence[jax.Array], low: Any = 200.0,
                        high: Any = 300.0, weight: Any = 1.0) -> jax.Array:
    """`weight * mean(relu(r - high) + relu(low - r))` over all neurons of `rates`.

    Args:
      rates: firing rates (Hz), one array or a sequence of them (the hidden
        activations of `rate_apply`).
      low, high: the band, `0 <= low <= high`.
      weight: the penalty's weight, >= 0.

    Example:
      >>> float(firing_rate_penalty(jnp.array([100.0, 250.0, 400.0])))
      66.66...
    """
    check_nonnegative("low", low)
    check_scalar("high", high, low=0.0)
    lo, hi = concrete_scalar("low", low), concrete_scalar("high", high)
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"low must be <= high, got low={lo} and high={hi}")
    check_nonnegative("weight", weight)
    leaves = [as_float("rates", r).reshape(-1) for r in
              (rates if isinstance(rates, (list, tuple)) else [rates])]
    if not leaves:
        raise ValueError("rates must hold at least one array")
    r = jnp.concatenate(leaves)
    return weight * jnp.mean(jax.nn.relu(r - high) + jax.nn.relu(low - r))
