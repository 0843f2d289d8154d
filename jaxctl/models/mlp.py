"""Multi-layer perceptrons as pure functions on a list of `{"w", "b"}` layers.

Used for policies, value functions and dynamics models. Parameters are a
plain list of dicts, so they are a pytree every jax and optax tool accepts.
Notation: `sizes = (n_in, h_1, ..., h_k, n_out)`; a hidden layer computes
`h = act(h_prev @ w + b)`, the output layer is linear.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from jaxctl.util.checks import as_float, check_choice, check_finite, check_positive_int

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "swish": jax.nn.swish,
    "linear": lambda x: x,
}


def mlp_init(key: jax.Array, sizes: Sequence[int], *, dtype=jnp.float32,
             output_scale: float = 1.0) -> list[dict[str, jax.Array]]:
    """Initialises an MLP with LeCun-normal weights and zero biases.

    Args:
      key: PRNG key.
      sizes: layer widths `(n_in, h_1, ..., n_out)`, at least two positive ints.
      dtype: parameter dtype.
      output_scale: multiplies the last layer's weights (small values give a
        near-uniform initial policy, a common choice for policy networks).

    Returns:
      A list of `{"w": (n_i, n_{i+1}), "b": (n_{i+1},)}` dicts.

    Example:
      >>> params = mlp_init(jax.random.PRNGKey(0), (4, 32, 32, 2))
      >>> mlp_apply(params, jnp.ones(4)).shape
      (2,)
    """
    sizes = tuple(check_positive_int("sizes", s) for s in sizes)
    if len(sizes) < 2:
        raise ValueError(f"sizes must hold at least two widths (input and output), got {sizes}")
    check_finite("output_scale", output_scale)
    keys = jax.random.split(key, len(sizes) - 1)
    params = []
    for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
        w = jax.random.normal(k, (n_in, n_out), dtype) / jnp.sqrt(jnp.asarray(n_in, dtype))
        if i == len(sizes) - 2:
            w = w * output_scale
        params.append({"w": w, "b": jnp.zeros((n_out,), dtype)})
    return params


def mlp_apply(params: Sequence[dict[str, jax.Array]], x: jax.Array,
              activation: str = "tanh") -> jax.Array:
    """Applies the MLP to one input `x` of shape `(n_in,)` (vmap for batches).

    Integer inputs are promoted to float.

    Returns:
      The linear output layer's value, shape `(n_out,)`.
    """
    check_choice("activation", activation, tuple(sorted(ACTIVATIONS)))
    if len(params) < 1:
        raise ValueError("params must hold at least one layer (as mlp_init returns)")
    x = as_float("x", x)
    n_in = params[0]["w"].shape[0]
    if x.shape != (n_in,):
        raise ValueError(f"x must have shape ({n_in},) (one unbatched input), got {x.shape}")
    act = ACTIVATIONS[activation]
    for layer in params[:-1]:
        x = act(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]
