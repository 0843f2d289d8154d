"""Random Fourier features and running observation statistics for simple policies.

Rajeswaran et al. (2017) train linear policies and "RBF" policies, linear in
random Fourier features of the (normalised) observation:

    phi_i(s) = sin(P_i . s / nu + b_i),   P_ij ~ N(0, 1),   b_i ~ U(-pi, pi),

whose scaled inner product approximates a Gaussian kernel of bandwidth `nu`
(Rahimi & Recht 2007): `(2 / D) phi(x) . phi(y) -> exp(-|x - y|^2 / (2 nu^2))`
as the number of features `D` grows.

`RunningStats` keeps the count, mean and summed squared deviations of every
observation seen, merged batch by batch with the parallel update of
Chan et al. (1979), so the statistics equal numpy's over all the data.

References:
  A. Rajeswaran, K. Lowrey, E. Todorov, S. Kakade (2017), "Towards
  generalization and simplicity in continuous control", NeurIPS.
  A. Rahimi, B. Recht (2007), "Random features for large-scale kernel
  machines", NeurIPS.
  T. Chan, G. Golub, R. LeVeque (1979), "Updating formulae and a pairwise
  algorithm for computing sample variances".
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxctl.util.checks import as_float, check_finite_positive, check_nonnegative, \
    check_positive_int


class FourierFeatures(NamedTuple):
    """Fixed random features `sin(s @ projection / bandwidth + phase)`."""
    projection: jax.Array  # (obs_dim, num_features)
    phase: jax.Array  # (num_features,)
    bandwidth: jax.Array  # ()


def fourier_features(key: jax.Array, obs_dim: int, num_features: int,
                     bandwidth: float = 1.0, dtype=jnp.float32) -> FourierFeatures:
    """Draws `num_features` random Fourier features of bandwidth `bandwidth > 0`.

    Example:
      >>> f = fourier_features(jax.random.PRNGKey(0), 3, 8)
      >>> fourier_apply(f, jnp.zeros(3)).shape
      (8,)
    """
    obs_dim = check_positive_int("obs_dim", obs_dim)
    num_features = check_positive_int("num_features", num_features)
    check_finite_positive("bandwidth", bandwidth)
    k1, k2 = jax.random.split(key)
    projection = jax.random.normal(k1, (obs_dim, num_features), dtype)
    phase = jax.random.uniform(k2, (num_features,), dtype, -jnp.pi, jnp.pi)
    return FourierFeatures(projection, phase, jnp.asarray(bandwidth, dtype))


def fourier_apply(features: FourierFeatures, obs: jax.Array) -> jax.Array:
    """`phi(obs)` for one observation `(obs_dim,)`."""
    obs = as_float("obs", obs)
    n = features.projection.shape[0]
    if obs.shape != (n,):
        raise ValueError(f"obs must have shape ({n},) (the features' obs_dim), got {obs.shape}")
    return jnp.sin(obs @ features.projection / features.bandwidth + features.phase)


class RunningStats(NamedTuple):
    """Count, mean and summed squared deviations `m2` of the observations seen."""
    count: jax.Array
    mean: jax.Array
    m2: jax.Array

    @property
    def var(self) -> jax.Array:
        """The population variance `m2 / count` (0 before any data)."""
        return self.m2 / jnp.maximum(self.count, 1)


def running_stats_init(obs_dim: int, dtype=jnp.float32) -> RunningStats:
    """Statistics of no data."""
    obs_dim = check_positive_int("obs_dim", obs_dim)
    zeros = jnp.zeros((obs_dim,), dtype)
    return RunningStats(jnp.zeros((), dtype), zeros, zeros)


def running_stats_update(stats: RunningStats, batch: jax.Array,
                         mask: jax.Array | None = None) -> RunningStats:
    """Merges a batch `(N, obs_dim)` (rows with `mask == False` left out) into `stats`.

    Chan et al.: with `delta = mean_b - mean`, `n = n_a + n_b`,
    `mean' = mean + delta n_b / n` and `m2' = m2_a + m2_b + delta^2 n_a n_b / n`.
    """
    batch = as_float("batch", batch)
    if batch.ndim != 2 or batch.shape[1] != stats.mean.shape[0]:
        raise ValueError(f"batch must have shape (N, {stats.mean.shape[0]}), got {batch.shape}")
    w = (jnp.ones(batch.shape[:1], batch.dtype) if mask is None
         else jnp.asarray(mask).astype(batch.dtype).reshape(batch.shape[:1]))
    n_b = jnp.sum(w)
    mean_b = jnp.sum(w[:, None] * batch, 0) / jnp.maximum(n_b, 1)
    m2_b = jnp.sum(w[:, None] * (batch - mean_b) ** 2, 0)
    n = stats.count + n_b
    delta = mean_b - stats.mean
    frac = n_b / jnp.maximum(n, 1)
    return RunningStats(n, stats.mean + delta * frac,
                        stats.m2 + m2_b + delta ** 2 * stats.count * frac)


def normalize_obs(stats: RunningStats, obs: jax.Array, clip: float = 10.0,
              eps: float = 1e-8) -> jax.Array:
    """`clip((obs - mean) / sqrt(var + eps), -clip, clip)`; the identity before any data."""
    check_finite_positive("clip", clip)
    check_nonnegative("eps", eps)
    obs = as_float("obs", obs)
    if obs.shape[-1:] != stats.mean.shape:
        raise ValueError(f"obs must end in the statistics' size {stats.mean.shape[0]}, "
                         f"got shape {obs.shape}")
    var = jnp.where(stats.count > 0, stats.var, jnp.ones_like(stats.var))
    z = (obs - stats.mean) / jnp.sqrt(var + eps)
    return jnp.where(stats.count > 0, jnp.clip(z, -clip, clip), obs)
