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
      sizes: layer widths `(n_in, h_1, ..., n_out)`, at least two entries.
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
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"sizes must hold at least two positive widths, got {sizes}")
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

    Returns:
      The linear output layer's value, shape `(n_out,)`.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    n_in = params[0]["w"].shape[0]
    if x.shape != (n_in,):
        raise ValueError(f"x must have shape ({n_in},) (one unbatched input), got {x.shape}")
    act = ACTIVATIONS[activation]
    for layer in params[:-1]:
        x = act(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]
