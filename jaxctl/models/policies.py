"""Stochastic policies and value baselines as small pure MLPs.

A policy is a `Policy` NamedTuple of pure functions built by a factory that
closes over the (static) architecture, optax-style:

- `init(key) -> params`
- `log_prob(params, obs, action) -> scalar`, `log pi(a | s)` for ONE sample
  (its gradient with respect to `params` is the score `d log pi / d theta`)
- `sample(params, key, obs) -> action`
- `mode(params, obs) -> action`, the most likely action (for evaluation)
- `entropy(params, obs) -> scalar`

Every function acts on one unbatched observation; batch with `jax.vmap`.

Notation: `obs` has shape (obs_dim,); a discrete action is an int32 scalar
in `[0, num_actions)`; a continuous action has shape (action_dim,).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from jaxctl.models.features import FourierFeatures, fourier_apply
from jaxctl.models.mlp import ACTIVATIONS, mlp_apply, mlp_init
from jaxctl.util.checks import (
    PyTree,
    as_float,
    check_choice,
    check_finite,
    check_finite_positive,
    check_int,
    check_positive_int,
)


class Policy(NamedTuple):
    """Pure functions of a stochastic policy (see the module docstring)."""

    init: Callable[[jax.Array], PyTree]
    log_prob: Callable[[PyTree, jax.Array, jax.Array], jax.Array]
    sample: Callable[[PyTree, jax.Array, jax.Array], jax.Array]
    mode: Callable[[PyTree, jax.Array], jax.Array]
    entropy: Callable[[PyTree, jax.Array], jax.Array]


class ValueFunction(NamedTuple):
    """Pure functions of a state-value baseline: `init(key)`, `apply(params, obs) -> scalar`."""

    init: Callable[[jax.Array], PyTree]
    apply: Callable[[PyTree, jax.Array], jax.Array]


def _check_sizes(obs_dim: int, out: tuple[str, int], hidden: Sequence[int], activation: str,
                 output_scale: float) -> tuple[int, ...]:
    """The MLP widths `(obs_dim, *hidden, out_dim)`, each a positive int; `out = (name, out_dim)`."""
    sizes = (check_positive_int("obs_dim", obs_dim),
             *(check_positive_int("hidden widths", h) for h in hidden),
             check_positive_int(*out))
    check_choice("activation", activation, tuple(sorted(ACTIVATIONS)))
    check_finite("output_scale", output_scale)
    return sizes


def _check_obs(obs: jax.Array, obs_dim: int) -> jax.Array:
    obs = as_float("obs", obs)
    if obs.shape != (obs_dim,):
        raise ValueError(f"obs must have shape ({obs_dim},) (one unbatched observation; vmap "
                         f"for batches), got {obs.shape}")
    return obs


def categorical_policy(
    obs_dim: int,
    num_actions: int,
    hidden: Sequence[int] = (),
    *,
    activation: str = "tanh",
    output_scale: float = 0.01,
) -> Policy:
    """Softmax policy over `num_actions` discrete actions from an MLP's logits.

    `pi(a | s) = softmax(f_theta(s))_a`; the score is
    `d log pi(a|s) / d theta = d f_a / d theta - sum_b pi(b|s) d f_b / d theta`.
    `hidden=()` is the linear softmax policy of DeWolf (2018) (plus a bias).

    Args:
      obs_dim: observation size.
      num_actions: number of discrete actions (>= 2).
      hidden: hidden-layer widths of the logit MLP.
      activation: hidden activation (see `jaxctl.models.mlp.ACTIVATIONS`).
      output_scale: scale of the last layer's initial weights; small values
        start near the uniform policy.

    Returns:
      A `Policy`; actions are int32 scalars.

    Example:
      >>> pi = categorical_policy(4, 2, hidden=(32,))
      >>> params = pi.init(jax.random.PRNGKey(0))
      >>> a = pi.sample(params, jax.random.PRNGKey(1), jnp.zeros(4))
      >>> float(pi.log_prob(params, jnp.zeros(4), a))  # ~ log(1/2)
      -0.693...

    References:
      Williams (1992), "Simple statistical gradient-following algorithms for
      connectionist reinforcement learning".
    """
    check_int("num_actions", num_actions, low=2)
    sizes = _check_sizes(obs_dim, ("num_actions", num_actions), hidden, activation, output_scale)

    def init(key):
        return mlp_init(key, sizes, output_scale=output_scale)

    def logits(params, obs):
        return mlp_apply(params, _check_obs(obs, obs_dim), activation)

    def log_prob(params, obs, action):
        action = jnp.asarray(action)
        if action.ndim != 0 or not jnp.issubdtype(action.dtype, jnp.integer):
            raise ValueError(f"action must be an integer scalar index, got shape {action.shape} "
                             f"dtype {action.dtype}")
        logp = jax.nn.log_softmax(logits(params, obs))
        return jnp.take(logp, action)

    def sample(params, key, obs):
        return jax.random.categorical(key, logits(params, obs)).astype(jnp.int32)

    def mode(params, obs):
        return jnp.argmax(logits(params, obs)).astype(jnp.int32)

    def entropy(params, obs):
        logp = jax.nn.log_softmax(logits(params, obs))
        return -jnp.sum(jnp.exp(logp) * logp)

    return Policy(init, log_prob, sample, mode, entropy)


def gaussian_policy(
    obs_dim: int,
    action_dim: int,
    hidden: Sequence[int] = (32, 32),
    *,
    activation: str = "tanh",
    output_scale: float = 0.01,
    log_std_init: float = 0.0,
    action_scale: float = 1.0,
) -> Policy:
    """Diagonal Gaussian policy: MLP mean, state-independent log standard deviation.

    `pi(a | s) = N(a; action_scale * mu_theta(s), diag(exp(2 log_std)))`,
    `log pi = -0.5 sum_i ((a_i - m_i) / sigma_i)^2 - sum_i log sigma_i
    - (d / 2) log(2 pi)`. Parameters: `{"mean": mlp, "log_std": (action_dim,)}`
    (the layout of Rajeswaran et al. 2017). Actions are not clipped here:
    the environment clips, and the score is that of the unclipped sample.

    Args:
      obs_dim: observation size.
      action_dim: action size.
      hidden: hidden widths of the mean MLP.
      activation: hidden activation.
      output_scale: scale of the mean's last-layer initial weights.
      log_std_init: initial log standard deviation (in units of
        `action_scale`).
      action_scale: multiplies the mean and the standard deviation, so the
        network works in units of order one (e.g. the torque limit).

    Returns:
      A `Policy`; actions have shape (action_dim,).

    Example:
      >>> pi = gaussian_policy(3, 1, hidden=(32, 32))
      >>> params = pi.init(jax.random.PRNGKey(0))
      >>> pi.sample(params, jax.random.PRNGKey(1), jnp.zeros(3)).shape
      (1,)

    References:
      Rajeswaran, Lowrey, Todorov & Kakade (2017), "Towards generalization and
      simplicity in continuous control".
    """
    sizes = _check_sizes(obs_dim, ("action_dim", action_dim), hidden, activation, output_scale)

    def mean(params, obs):
        return mlp_apply(params, _check_obs(obs, obs_dim), activation)

    return _gaussian(lambda key: mlp_init(key, sizes, output_scale=output_scale), mean,
                     action_dim, log_std_init, action_scale)


def rbf_gaussian_policy(features: FourierFeatures, action_dim: int, *,
                        log_std_init: float = 0.0, action_scale: float = 1.0) -> Policy:
    """Gaussian policy whose mean is linear in random Fourier features (Rajeswaran et al. 2017).

    `mu(s) = phi(s) @ w + b` with `phi` from `jaxctl.models.features.fourier_features`
    (fixed, not trained); parameters `{"mean": [{"w", "b"}], "log_std"}`,
    `w` initialised to zero. Otherwise as `gaussian_policy`; a linear policy
    is `gaussian_policy(obs_dim, action_dim, hidden=())`.

    Example:
      >>> from jaxctl.models.features import fourier_features
      >>> pi = rbf_gaussian_policy(fourier_features(jax.random.PRNGKey(0), 3, 16), 2)
      >>> pi.mode(pi.init(jax.random.PRNGKey(1)), jnp.ones(3)).shape
      (2,)
    """
    obs_dim, num_features = features.projection.shape
    check_positive_int("action_dim", action_dim)

    def init(key):
        del key
        dtype = features.projection.dtype
        return [{"w": jnp.zeros((num_features, action_dim), dtype),
                 "b": jnp.zeros((action_dim,), dtype)}]

    def mean(params, obs):
        phi = fourier_apply(features, _check_obs(obs, obs_dim))
        return phi @ params[0]["w"] + params[0]["b"]

    return _gaussian(init, mean, action_dim, log_std_init, action_scale)


def _gaussian(init_mean, mean_fn, action_dim, log_std_init, action_scale) -> Policy:
    """A diagonal Gaussian `N(action_scale * mean_fn(params["mean"], s), exp(2 log_std))`."""
    log_scale = math.log(float(check_finite_positive("action_scale", action_scale)))
    check_finite("log_std_init", log_std_init)

    def init(key):
        return {"mean": init_mean(key),
                "log_std": jnp.full((action_dim,), log_std_init, jnp.float32)}

    def mean_std(params, obs):
        mean = action_scale * mean_fn(params["mean"], obs)
        log_std = params["log_std"] + log_scale
        return mean, log_std

    def log_prob(params, obs, action):
        action = as_float("action", action)
        if action.shape != (action_dim,):
            raise ValueError(f"action must have shape ({action_dim},), got {action.shape}")
        mean, log_std = mean_std(params, obs)
        z = (action - mean) * jnp.exp(-log_std)
        return -0.5 * jnp.sum(z * z) - jnp.sum(log_std) - 0.5 * action_dim * math.log(2 * math.pi)

    def sample(params, key, obs):
        mean, log_std = mean_std(params, obs)
        return mean + jnp.exp(log_std) * jax.random.normal(key, (action_dim,), mean.dtype)

    def mode(params, obs):
        return mean_std(params, obs)[0]

    def entropy(params, obs):
        _, log_std = mean_std(params, obs)
        return jnp.sum(log_std) + 0.5 * action_dim * (1.0 + math.log(2 * math.pi))

    return Policy(init, log_prob, sample, mode, entropy)


def value_function(
    obs_dim: int,
    hidden: Sequence[int] = (10,),
    *,
    activation: str = "relu",
) -> ValueFunction:
    """State-value baseline `V_phi(s)`, an MLP with a scalar output.

    The default (4-10-1, ReLU) is the value network of DeWolf (2018).

    Args:
      obs_dim: observation size.
      hidden: hidden widths.
      activation: hidden activation.

    Returns:
      A `ValueFunction(init, apply)`; `apply(params, obs)` is a scalar.

    Example:
      >>> vf = value_function(4)
      >>> vf.apply(vf.init(jax.random.PRNGKey(0)), jnp.zeros(4)).shape
      ()
    """
    sizes = _check_sizes(obs_dim, ("output size", 1), hidden, activation, 1.0)

    def init(key):
        return mlp_init(key, sizes)

    def apply(params, obs):
        return mlp_apply(params, _check_obs(obs, obs_dim), activation)[0]

    return ValueFunction(init, apply)
