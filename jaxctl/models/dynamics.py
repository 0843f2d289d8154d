"""Learned neural-network dynamics: `f(s, a) -> s' - s` on z-scored data, optionally an ensemble.

Notation: `n` state size, `m` action size, `N` transitions. The model
predicts the state change in normalised units,

    s' = s + mu_d + sigma_d * f_theta((s - mu_s) / sigma_s, (a - mu_a) / sigma_a),

where `(mu, sigma)` are per-dimension statistics of the data (`NormStats`)
and `f_theta` is an MLP (`jaxctl.models.mlp`). Training minimises the mean
squared error of `f_theta` against the z-scored deltas with optax (Adam,
mini-batches), adding Gaussian noise to the z-scored inputs and targets
(`noise_std`). An ensemble stacks `E` independently initialised MLPs on a
leading axis; each member draws its own mini-batches and `dynamics_predict`
averages the members. All functions act on one unbatched transition (vmap
for batches) or on a whole data set where stated, and are jittable.

References:
  Nagabandi, Kahn, Fearing, Levine (2018), "Neural network dynamics for
  model-based deep reinforcement learning with model-free fine-tuning",
  ICRA, https://arxiv.org/abs/1708.02596.
  Chua, Calandra, McAllister, Levine (2018), "Deep reinforcement learning in
  a handful of trials using probabilistic dynamics models",
  https://arxiv.org/abs/1805.12114 (ensembles).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxctl.control.simulate import simulate
from jaxctl.models.mlp import ACTIVATIONS, mlp_apply, mlp_init


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


@dataclasses.dataclass(frozen=True)
class DynamicsModel:
    """MLP dynamics model: parameters, normalisation statistics and (static) activation.

    A pytree: `params` and `stats` are leaves, `activation` is static, so a
    model can be passed through `jax.jit` / `jax.tree_util.Partial` and a
    retrained model reuses compiled code.

    Attributes:
      params: MLP layers `[{"w": (n_i, n_j), "b": (n_j,)}]` from `mlp_init`;
        an ensemble has a leading member axis `E` on every leaf.
      stats: `NormStats` used to z-score inputs and outputs.
      activation: hidden activation name (a key of `jaxctl.models.mlp.ACTIVATIONS`).
    """

    params: Any
    stats: NormStats
    activation: str = "relu"


jax.tree_util.register_dataclass(DynamicsModel, data_fields=["params", "stats"],
                                 meta_fields=["activation"])


def _check_data(data: Transitions) -> tuple[int, int, int]:
    s, a, s2 = (jnp.shape(x) for x in data)
    if len(s) != 2 or len(a) != 2 or s2 != s or a[0] != s[0]:
        raise ValueError(f"data must hold states (N, n), actions (N, m), next_states (N, n); "
                         f"got {s}, {a}, {s2}")
    return s[0], s[1], a[1]


def normalization_stats(data: Transitions, count: jax.Array | int | None = None,
                        min_std: float = 1e-6) -> NormStats:
    """Mean and standard deviation of states, actions and deltas over the first `count` rows.

    `mu = (1/c) sum_{i<c} x_i`, `sigma = max(sqrt((1/c) sum_{i<c} (x_i - mu)^2), min_std)`
    (the floor keeps constant dimensions from dividing by zero).

    Args:
      data: `Transitions` with `(N, n)`, `(N, m)`, `(N, n)` arrays.
      count: number of valid leading rows (a traced scalar is fine: a data
        buffer of fixed capacity keeps compiled code); `None` uses all `N`.
      min_std: lower bound on every standard deviation.

    Returns:
      `NormStats`.

    Example:
      >>> d = Transitions(jnp.zeros((4, 2)), jnp.ones((4, 1)), jnp.ones((4, 2)))
      >>> normalization_stats(d).delta_mean
      Array([1., 1.], dtype=float32)

    References:
      Nagabandi et al. (2018), https://arxiv.org/abs/1708.02596, Sec. IV-A.
    """
    N, _, _ = _check_data(data)
    count = N if count is None else count
    w = (jnp.arange(N) < count).astype(data.states.dtype)
    w = w / jnp.maximum(jnp.sum(w), 1.0)

    def moments(x):
        mean = w @ x
        std = jnp.sqrt(w @ (x - mean) ** 2)
        return mean, jnp.maximum(std, min_std)

    sm, ss = moments(data.states)
    am, as_ = moments(data.actions)
    dm, ds = moments(data.next_states - data.states)
    return NormStats(sm, ss, am, as_, dm, ds)


def dynamics_init(key: jax.Array, stats: NormStats, hidden_sizes: Sequence[int] = (500,), *,
                  activation: str = "relu", ensemble_size: int | None = None) -> DynamicsModel:
    """A fresh dynamics model `n + m -> hidden -> n` (or an ensemble of E of them).

    Args:
      key: PRNG key.
      stats: `NormStats` of the training data (fixes `n` and `m`).
      hidden_sizes: hidden widths; the seed's released configs use `(500,)`.
      activation: hidden activation; the seed uses ReLU.
      ensemble_size: `None` for one MLP, or E >= 1 members stacked on a
        leading axis of every parameter.

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
    n, m = stats.state_mean.shape[0], stats.action_mean.shape[0]
    sizes = (n + m, *(int(h) for h in hidden_sizes), n)
    dtype = stats.state_mean.dtype
    if ensemble_size is None:
        params = mlp_init(key, sizes, dtype=dtype)
    else:
        if isinstance(ensemble_size, bool) or not isinstance(ensemble_size, int) or ensemble_size < 1:
            raise ValueError(f"ensemble_size must be None or an int >= 1, got {ensemble_size!r}")
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


def _normalized_delta(params, model: DynamicsModel, state, action):
    st = model.stats
    x = jnp.concatenate([(state - st.state_mean) / st.state_std,
                         (action - st.action_mean) / st.action_std])
    return mlp_apply(params, x, model.activation)


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
        z = _normalized_delta(model.params, model, state, action)[None]
    else:
        z = jax.vmap(lambda p: _normalized_delta(p, model, state, action))(model.params)
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


def dynamics_loss(params: Any, model: DynamicsModel, batch: Transitions,
                  weights: jax.Array | None = None) -> jax.Array:
    """Mean squared error of one MLP in z-scored delta units.

    `L = (1/B) sum_i w_i ||f(z(s_i), z(a_i)) - (s'_i - s_i - mu_d) / sigma_d||^2 / n`.

    Args:
      params: one MLP's parameters (no ensemble axis).
      model: supplies the statistics and activation.
      batch: `Transitions` of B rows.
      weights: optional `(B,)` row weights summing to 1 (default uniform).

    Returns:
      `()` loss.

    Example:
      >>> st = NormStats(*(jnp.ones(k) for k in (3, 3, 1, 1, 3, 3)))
      >>> model = dynamics_init(jax.random.PRNGKey(0), st, (8,))
      >>> b = Transitions(jnp.zeros((5, 3)), jnp.zeros((5, 1)), jnp.ones((5, 3)))
      >>> dynamics_loss(model.params, model, b).shape
      ()

    References:
      Nagabandi et al. (2018), https://arxiv.org/abs/1708.02596, Eq. (2).
    """
    st = model.stats
    pred = jax.vmap(lambda s, a: _normalized_delta(params, model, s, a))(batch.states,
                                                                        batch.actions)
    target = (batch.next_states - batch.states - st.delta_mean) / st.delta_std
    per_row = jnp.mean((pred - target) ** 2, axis=-1)
    if weights is None:
        return jnp.mean(per_row)
    return jnp.sum(weights * per_row)


class TrainLog(NamedTuple):
    """Losses recorded by `dynamics_train`.

    Attributes:
      losses: `(num_steps,)` mini-batch loss of each step (ensemble: member mean).
    """

    losses: jax.Array


def dynamics_train(model: DynamicsModel, opt_state: Any, data: Transitions, key: jax.Array,
                   optimizer: optax.GradientTransformation, *, num_steps: int,
                   batch_size: int = 512, noise_std: float = 0.0,
                   count: jax.Array | int | None = None) -> tuple[DynamicsModel, Any, TrainLog]:
    """`num_steps` optax steps on random mini-batches of the first `count` rows, in one `lax.scan`.

    Each step draws B row indices uniformly from `[0, count)` (each ensemble
    member its own), adds `N(0, noise_std^2)` noise to the z-scored inputs
    and targets (the seed's data augmentation), and applies
    `optimizer.update` to the MLP parameters. The statistics in `model` are
    kept; recompute them with `normalization_stats` when the data grows.

    Args:
      model: `DynamicsModel` to train.
      opt_state: `optimizer.init(model.params)`.
      data: `Transitions` of capacity N (rows past `count` are ignored).
      key: PRNG key.
      optimizer: optax transformation, e.g. `optax.adam(1e-3)`.
      num_steps: number of gradient steps (static).
      batch_size: B, rows per mini-batch (static).
      noise_std: standard deviation of the augmentation noise, in z-scored units.
      count: number of valid rows (traced is fine); `None` uses all N.

    Returns:
      `(model, opt_state, TrainLog)`.

    Example:
      >>> st = NormStats(*(jnp.ones(k) for k in (3, 3, 1, 1, 3, 3)))
      >>> model = dynamics_init(jax.random.PRNGKey(0), st, (8,))
      >>> opt = optax.adam(1e-3)
      >>> d = Transitions(jnp.zeros((5, 3)), jnp.zeros((5, 1)), jnp.ones((5, 3)))
      >>> model, s, log = dynamics_train(model, opt.init(model.params), d,
      ...                                jax.random.PRNGKey(1), opt, num_steps=3, batch_size=4)
      >>> log.losses.shape
      (3,)

    References:
      Nagabandi et al. (2018), https://arxiv.org/abs/1708.02596, Sec. IV-A;
      Kingma & Ba (2015), https://arxiv.org/abs/1412.6980 (Adam).
    """
    N, n, m = _check_data(data)
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if model.stats.state_mean.shape != (n,) or model.stats.action_mean.shape != (m,):
        raise ValueError(f"data has n={n}, m={m} but the model was built for "
                         f"n={model.stats.state_mean.shape[0]}, m={model.stats.action_mean.shape[0]}")
    count = N if count is None else count
    E = ensemble_size(model)
    st = model.stats

    def member_batch(k):
        k_idx, k_noise = jax.random.split(k)
        idx = jax.random.randint(k_idx, (batch_size,), 0, jnp.maximum(count, 1))
        b = Transitions(*(x[idx] for x in data))
        if noise_std > 0:
            # Noise is drawn in z-scored units, then mapped back to raw units, so each
            # dimension is perturbed relative to its own spread (seed: noise on the data).
            ks, ka, kd = jax.random.split(k_noise, 3)
            dt = data.states.dtype
            s = b.states + noise_std * st.state_std * jax.random.normal(ks, b.states.shape, dt)
            a = b.actions + noise_std * st.action_std * jax.random.normal(ka, b.actions.shape, dt)
            d = (b.next_states - b.states) + noise_std * st.delta_std * jax.random.normal(
                kd, b.states.shape, dt)
            b = Transitions(s, a, s + d)
        return b

    def member_loss_grad(params, k):
        return jax.value_and_grad(dynamics_loss)(params, model, member_batch(k))

    def step(carry, k):
        params, opt_state = carry
        if E is None:
            loss, grads = member_loss_grad(params, k)
        else:
            loss, grads = jax.vmap(member_loss_grad)(params, jax.random.split(k, E))
            loss = jnp.mean(loss)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, opt_state), loss

    (params, opt_state), losses = lax.scan(step, (model.params, opt_state),
                                           jax.random.split(key, num_steps))
    return dataclasses.replace(model, params=params), opt_state, TrainLog(losses)


def dynamics_evaluate(model: DynamicsModel, data: Transitions) -> jax.Array:
    """One-step prediction error in z-scored delta units (member-mean prediction).

    `(1/N) sum_i ||(s_hat'_i - s'_i) / sigma_d||^2 / n`.

    Args:
      model: `DynamicsModel`.
      data: `Transitions` of N rows.

    Returns:
      `()` mean squared error.

    Example:
      >>> st = NormStats(*(jnp.ones(k) for k in (3, 3, 1, 1, 3, 3)))
      >>> model = dynamics_init(jax.random.PRNGKey(0), st, (8,))
      >>> d = Transitions(jnp.zeros((5, 3)), jnp.zeros((5, 1)), jnp.ones((5, 3)))
      >>> dynamics_evaluate(model, d).shape
      ()

    References:
      Nagabandi et al. (2018), https://arxiv.org/abs/1708.02596.
    """
    _check_data(data)
    pred = jax.vmap(lambda s, a: dynamics_predict(model, s, a))(data.states, data.actions)
    return jnp.mean(((pred - data.next_states) / model.stats.delta_std) ** 2)


class OpenLoopPrediction(NamedTuple):
    """A multi-step open-loop prediction against the true trajectory.

    Attributes:
      predicted: `(T + 1, n)` model states from the true start state.
      true: `(T + 1, n)` the true states.
      error: `(T + 1,)` root-mean-square error per step over state dimensions,
        each dimension divided by the data's state standard deviation.
    """

    predicted: jax.Array
    true: jax.Array
    error: jax.Array


def open_loop_prediction(model: DynamicsModel, states: jax.Array,
                         actions: jax.Array) -> OpenLoopPrediction:
    """Feeds the model its own predictions for T steps and compares with the true trajectory.

    `s_hat_0 = s_0`, `s_hat_{t+1} = f(s_hat_t, a_t)`;
    `e_t = sqrt(mean_j ((s_hat_{t,j} - s_{t,j}) / sigma_{s,j})^2)` (the seed's Fig. 6).

    Args:
      model: `DynamicsModel`.
      states: `(T + 1, n)` true states of a trajectory.
      actions: `(T, m)` actions that produced it.

    Returns:
      `OpenLoopPrediction` (vmap over trajectories for many).

    Example:
      >>> st = NormStats(*(jnp.ones(k) for k in (3, 3, 1, 1, 3, 3)))
      >>> model = dynamics_init(jax.random.PRNGKey(0), st, (8,))
      >>> p = open_loop_prediction(model, jnp.zeros((11, 3)), jnp.zeros((10, 1)))
      >>> p.error.shape
      (11,)

    References:
      Nagabandi et al. (2018), https://arxiv.org/abs/1708.02596, Fig. 6.
    """
    if states.ndim != 2 or actions.ndim != 2 or states.shape[0] != actions.shape[0] + 1:
        raise ValueError(f"states must be (T + 1, n) and actions (T, m), got {states.shape} "
                         f"and {actions.shape}")
    pred = simulate(lambda s, a: dynamics_predict(model, s, a), states[0], actions)
    err = jnp.sqrt(jnp.mean(((pred - states) / model.stats.state_std) ** 2, axis=-1))
    return OpenLoopPrediction(pred, states, err)
