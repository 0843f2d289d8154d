"""Learned neural-network dynamics: `f(s, a) -> s' - s` on z-scored data, optionally an ensemble.

Notation: `n` state size, `m` action size, `N` transitions. The model
predicts the state change in normalised units,

    s' = s + mu_d + sigma_d * f_theta((s - mu_s) / sigma_s, (a - mu_a) / sigma_a),

where `(mu, sigma)` are per-dimension statistics of the data (`NormStats`)
and `f_theta` is an MLP (`jaxctl.models.mlp`). Training minimises the mean
squared error of `f_theta` against the z-scored deltas with optax (Adam,
mini-batches), adding fresh Gaussian noise to the z-scored inputs and
targets of every mini-batch (`noise_std`; how this differs from the paper's
once-perturbed data is in `dynamics_train`). An ensemble stacks `E` independently initialised MLPs on a
leading axis; each member draws its own mini-batches and `dynamics_predict`
averages the members. A Gaussian head (`head="gaussian"`, Chua et al. 2018)
doubles the output: `f_theta` gives the mean and a log-variance of the
z-scored change, trained by negative log-likelihood; its mean is what
`dynamics_predict` uses, its samples are what trajectory sampling
(`jaxctl.models.particles`) propagates. All functions act on one unbatched
transition (vmap for batches) or on a whole data set where stated, and are
jittable.
Training and evaluation are in `jaxctl.models.dynamics_training`.

Rows of a data set that hold a non-finite entry (a diverged simulation, a
sensor dropout) are left out of the statistics and of training.

References:
  Nagabandi, Kahn, Fearing, Levine (2018), "Neural network dynamics for
  model-based deep reinforcement learning with model-free fine-tuning",
  ICRA, https://arxiv.org/abs/1708.02596.
  Chua, Calandra, McAllister, Levine (2018), "Deep reinforcement learning in
  a handful of trials using probabilistic dynamics models",
  https://arxiv.org/abs/1805.12114 (ensembles, Gaussian heads).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from jaxctl.models.mlp import ACTIVATIONS, mlp_apply, mlp_init
from jaxctl.util import checks


class Transitions(NamedTuple):
    """A data set of transitions `(s, a, s')`, one row per transition.

    Attributes:
      states: `(N, n)`.
      actions: `(N, m)`.
      next_states: `(N, n)`.
    """

    states: jax.Array
    actions: jax.Array
    next_states: jax.Array


class NormStats(NamedTuple):
    """Per-dimension mean and standard deviation of states, actions and state deltas.

    Attributes:
      state_mean, state_std: `(n,)`.
      action_mean, action_std: `(m,)`.
      delta_mean, delta_std: `(n,)` of `s' - s`.
    """

    state_mean: jax.Array
    state_std: jax.Array
    action_mean: jax.Array
    action_std: jax.Array
    delta_mean: jax.Array
    delta_std: jax.Array


class DynamicsModel(NamedTuple):
    """MLP dynamics model: parameters, normalisation statistics and (static) activation.

    A registered pytree: `params` and `stats` are its children, `activation`
    is static configuration, so a model can be passed through `jax.jit` /
    `jax.tree_util.Partial` and a retrained model reuses compiled code. Being
    a NamedTuple, state-dict serialisers (`flax.serialization.to_bytes` /
    `from_bytes`) and leaf-by-leaf checkpoints round-trip it; replace fields
    with `model._replace(stats=...)`.

    Attributes:
      params: MLP layers `[{"w": (n_i, n_j), "b": (n_j,)}]` from `mlp_init`;
        an ensemble has a leading member axis `E` on every leaf.
      stats: `NormStats` used to z-score inputs and outputs.
      activation: hidden activation name (a key of `jaxctl.models.mlp.ACTIVATIONS`).
    """

    params: Any
    stats: NormStats
    activation: str = "relu"


# Registered explicitly so that `activation` is static (a NamedTuple's fields are
# otherwise all children, and a string child cannot be traced).
jax.tree_util.register_dataclass(DynamicsModel, data_fields=["params", "stats"],
                                 meta_fields=["activation"])


def check_data(data: Transitions) -> tuple[int, int, int]:
    """`(N, n, m)` of a data set with `N, n, m >= 1`; a `ValueError` otherwise."""
    s, a, s2 = (jnp.shape(x) for x in data)
    if len(s) != 2 or len(a) != 2 or s2 != s or a[0] != s[0]:
        raise ValueError(f"data must hold states (N, n), actions (N, m), next_states (N, n); "
                         f"got {s}, {a}, {s2}")
    if 0 in s + a:
        raise ValueError(f"data must hold at least one transition of non-empty states and "
                         f"actions, got states {s} and actions {a}")
    return s[0], s[1], a[1]


def check_count(count: Any, num_rows: int) -> Any:
    """`count` (None -> `num_rows`); a concrete one must be an integer in `[1, num_rows]`.

    A traced count passes; the functions using it clip it to `[0, num_rows]`.
    """
    if count is None:
        return num_rows
    if checks.is_concrete(count):
        count = checks.check_int("count", count, low=1)
        if count > num_rows:
            raise ValueError(f"count must be <= the number of rows N = {num_rows}, got {count}")
    return count


def valid_rows(data: Transitions, count: Any) -> jax.Array:
    """`(N,)` bool: row `i < count` and every entry of the row finite."""
    N = data.states.shape[0]
    finite = [jnp.all(jnp.isfinite(x.reshape(N, -1)), axis=1) for x in data]
    return (jnp.arange(N) < count) & finite[0] & finite[1] & finite[2]


def normalization_stats(data: Transitions, count: jax.Array | int | None = None,
                        min_std: float = 1e-6) -> NormStats:
    """Mean and standard deviation of states, actions and deltas over the first `count` rows.

    `mu = (1/c) sum_{i in V} x_i`, `sigma = max(sqrt((1/c) sum_{i in V} (x_i - mu)^2), min_std)`
    over the valid rows `V` (index `< count`, every entry finite), `c = |V|`
    (the floor keeps constant dimensions from dividing by zero).

    Args:
      data: `Transitions` with `(N, n)`, `(N, m)`, `(N, n)` arrays, `N >= 1`.
      count: number of valid leading rows, `1 <= count <= N` (a traced
        scalar is fine: a data buffer of fixed capacity keeps compiled code);
        `None` uses all `N`.
      min_std: lower bound on every standard deviation (> 0).

    Returns:
      `NormStats`.

    Example:
      >>> d = Transitions(jnp.zeros((4, 2)), jnp.ones((4, 1)), jnp.ones((4, 2)))
      >>> normalization_stats(d).delta_mean.tolist()
      [1.0, 1.0]

    References:
      Nagabandi et al. (2018), https://arxiv.org/abs/1708.02596, Sec. IV-A.
    """
    N, _, _ = check_data(data)
    count = check_count(count, N)
    checks.check_finite_positive("min_std", min_std)
    data = Transitions(*checks.tree_as_float("data", tuple(data)))
    valid = valid_rows(data, count)
    w = valid.astype(data.states.dtype)
    w = w / jnp.maximum(jnp.sum(w), 1.0)

    def moments(x):
        x = jnp.where(valid[:, None], x, 0.0)  # 0 * NaN would still be NaN
        mean = w @ x
        std = jnp.sqrt(w @ jnp.where(valid[:, None], x - mean, 0.0) ** 2)
        return mean, jnp.maximum(std, min_std)

    sm, ss = moments(data.states)
    am, as_ = moments(data.actions)
    dm, ds = moments(data.next_states - data.states)
    return NormStats(sm, ss, am, as_, dm, ds)


HEADS = ("deterministic", "gaussian")
# Soft bounds of a Gaussian head's log-variance in z-scored units (the initial
# values of the learned bounds of Chua et al. 2018; here fixed).
LOGVAR_MAX, LOGVAR_MIN = 0.5, -10.0


def dynamics_init(key: jax.Array, stats: NormStats, hidden_sizes: Sequence[int] = (500,), *,
                  activation: str = "relu", ensemble_size: int | None = None,
                  head: str = "deterministic") -> DynamicsModel:
    """A fresh dynamics model `n + m -> hidden -> n` (or an ensemble of E of them).

    Args:
      key: PRNG key.
      stats: `NormStats` of the training data (fixes `n` and `m`).
      hidden_sizes: hidden widths (positive ints); the released configurations
        of Nagabandi et al. (2018) use `(500,)`.
      activation: hidden activation; Nagabandi et al. (2018) use ReLU.
      ensemble_size: `None` for one MLP, or E >= 1 members stacked on a
        leading axis of every parameter.
      head: `"deterministic"` (the change itself, Nagabandi et al. 2018) or
        `"gaussian"` (`2n` outputs: mean and log-variance, Chua et al. 2018).

    Returns:
      `DynamicsModel`.

    Example:
      >>> st = NormStats(*(jnp.ones(k) for k in (3, 3, 1, 1, 3, 3)))
      >>> model = dynamics_init(jax.random.PRNGKey(0), st, (32,))
      >>> dynamics_predict(model, jnp.zeros(3), jnp.zeros(1)).shape
      (3,)

    References:
      Nagabandi et al. (2018), https://arxiv.org/abs/1708.02596.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    checks.check_choice("head", head, HEADS)
    n, m = stats.state_mean.shape[0], stats.action_mean.shape[0]
    out = 2 * n if head == "gaussian" else n
    sizes = (n + m, *(checks.check_positive_int("hidden_sizes", h) for h in hidden_sizes), out)
    dtype = stats.state_mean.dtype
    if ensemble_size is None:
        params = mlp_init(key, sizes, dtype=dtype)
    else:
        ensemble_size = checks.check_positive_int("ensemble_size", ensemble_size)
        keys = jax.random.split(key, ensemble_size)
        params = jax.vmap(lambda k: mlp_init(k, sizes, dtype=dtype))(keys)
    return DynamicsModel(params, stats, activation)


def ensemble_size(model: DynamicsModel) -> int | None:
    """Number of ensemble members of a dynamics model, or `None` for a single MLP.

    Read from static shapes: an ensemble's first weight matrix is
    `(E, n + m, h_1)`, a single MLP's `(n + m, h_1)`. Usable at trace time.

    Args:
      model: `DynamicsModel`.

    Returns:
      E (int) or `None`.

    Example:
      >>> st = NormStats(*(jnp.ones(k) for k in (3, 3, 1, 1, 3, 3)))
      >>> ensemble_size(dynamics_init(jax.random.PRNGKey(0), st, (8,), ensemble_size=5))
      5

    References:
      Chua et al. (2018), https://arxiv.org/abs/1805.12114.
    """
    w = model.params[0]["w"]
    return None if w.ndim == 2 else w.shape[0]


def is_gaussian(model: DynamicsModel) -> bool:
    """Whether the model has Gaussian heads (`2n` outputs), read from static shapes.

    Example:
      >>> st = NormStats(*(jnp.ones(k) for k in (3, 3, 1, 1, 3, 3)))
      >>> is_gaussian(dynamics_init(jax.random.PRNGKey(0), st, (8,), head="gaussian"))
      True
    """
    return model.params[-1]["b"].shape[-1] == 2 * model.stats.state_mean.shape[0]


def bounded_logvar(raw: jax.Array) -> jax.Array:
    """Soft clamp of a raw log-variance into `(LOGVAR_MIN, LOGVAR_MAX)` (Chua et al. 2018).

    `v = hi - softplus(hi - raw)`, then `lo + softplus(v - lo)`: smooth, and
    close to the identity well inside the bounds.
    """
    v = LOGVAR_MAX - jax.nn.softplus(LOGVAR_MAX - raw)
    return LOGVAR_MIN + jax.nn.softplus(v - LOGVAR_MIN)


def normalized_gaussian(params: Any, model: DynamicsModel, state: jax.Array,
                        action: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    """One MLP's z-scored change: `(mean (n,), log-variance (n,))`, the
    log-variance `None` for a deterministic head."""
    st = model.stats
    x = jnp.concatenate([(state - st.state_mean) / st.state_std,
                         (action - st.action_mean) / st.action_std])
    out = mlp_apply(params, x, model.activation)
    if not is_gaussian(model):
        return out, None
    n = st.state_mean.shape[0]
    return out[:n], bounded_logvar(out[n:])


def normalized_delta(params: Any, model: DynamicsModel, state: jax.Array,
                     action: jax.Array) -> jax.Array:
    """`f_theta(z(s), z(a))`: one MLP's predicted state change (a Gaussian head's
    mean) in z-scored units, `(n,)`."""
    return normalized_gaussian(params, model, state, action)[0]


def _check_io(model: DynamicsModel, state, action):
    n, m = model.stats.state_mean.shape[0], model.stats.action_mean.shape[0]
    if jnp.shape(state) != (n,) or jnp.shape(action) != (m,):
        raise ValueError(f"the dynamics model expects state ({n},) and action ({m},) "
                         f"(one unbatched transition; vmap for batches), got "
                         f"{jnp.shape(state)} and {jnp.shape(action)}")


def dynamics_predict_members(model: DynamicsModel, state: jax.Array,
                             action: jax.Array) -> jax.Array:
    """Next state predicted by every ensemble member.

    `s'_e = s + mu_d + sigma_d * f_e(z(s), z(a))`.

    Args:
      model: `DynamicsModel` (single or ensemble).
      state: `(n,)`.
      action: `(m,)`.

    Returns:
      `(E, n)` for an ensemble, `(1, n)` for a single MLP.

    Example:
      >>> st = NormStats(*(jnp.ones(k) for k in (3, 3, 1, 1, 3, 3)))
      >>> model = dynamics_init(jax.random.PRNGKey(0), st, (8,), ensemble_size=4)
      >>> dynamics_predict_members(model, jnp.zeros(3), jnp.zeros(1)).shape
      (4, 3)

    References:
      Chua et al. (2018), https://arxiv.org/abs/1805.12114.
    """
    _check_io(model, state, action)
    st = model.stats
    if ensemble_size(model) is None:
        z = normalized_delta(model.params, model, state, action)[None]
    else:
        z = jax.vmap(lambda p: normalized_delta(p, model, state, action))(model.params)
    return state + st.delta_mean + st.delta_std * z


def dynamics_predict(model: DynamicsModel, state: jax.Array, action: jax.Array) -> jax.Array:
    """Next state `s' = s + mu_d + sigma_d * f(z(s), z(a))` (ensemble: mean over members).

    Use as the `dynamics` of a planner:
    `jax.tree_util.Partial(dynamics_predict, model)`.

    Args:
      model: `DynamicsModel`.
      state: `(n,)`.
      action: `(m,)`.

    Returns:
      `(n,)` predicted next state.

    Example:
      >>> st = NormStats(*(jnp.ones(k) for k in (3, 3, 1, 1, 3, 3)))
      >>> model = dynamics_init(jax.random.PRNGKey(0), st, (8,))
      >>> dynamics_predict(model, jnp.zeros(3), jnp.zeros(1)).shape
      (3,)

    References:
      Nagabandi et al. (2018), https://arxiv.org/abs/1708.02596, Eq. (1).
    """
    return jnp.mean(dynamics_predict_members(model, state, action), axis=0)
