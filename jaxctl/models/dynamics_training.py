"""Training and evaluating the learned dynamics models of `jaxctl.models.dynamics`.

Notation as there: `n` state size, `m` action size, `N` rows of a data set,
`B` mini-batch rows, `z(.)` the z-scoring by the model's `NormStats`. The
loss of one MLP is the mean squared error of its predicted state change in
z-scored units,

    L = (1/B) sum_i ||f(z(s_i), z(a_i)) - (s'_i - s_i - mu_d) / sigma_d||^2 / n;

a Gaussian head (mean `mu`, log-variance `v`) minimises the negative
log-likelihood of the same target `y` instead (Chua et al. 2018),

    L = (1/B) sum_i (1/2n) sum_j [(mu_ij - y_ij)^2 exp(-v_ij) + v_ij].

Training draws mini-batches among the valid rows (index `< count`, every
entry finite) and applies an optax update only when the loss and the new
parameters are finite: a NaN row or a diverging step never reaches the
parameters (the step is skipped and reported in `TrainLog.accepted`).

References:
  Nagabandi, Kahn, Fearing, Levine (2018), "Neural network dynamics for
  model-based deep reinforcement learning with model-free fine-tuning",
  ICRA, https://arxiv.org/abs/1708.02596.
  Kingma & Ba (2015), https://arxiv.org/abs/1412.6980 (Adam).
  Chua, Calandra, McAllister, Levine (2018), https://arxiv.org/abs/1805.12114
  (Gaussian heads trained by negative log-likelihood).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxctl.control.simulate import simulate
from jaxctl.models.dynamics import (
    DynamicsModel,
    Transitions,
    check_count,
    check_data,
    dynamics_predict,
    ensemble_size,
    normalized_gaussian,
    valid_rows,
)
from jaxctl.util import checks


def dynamics_loss(params: Any, model: DynamicsModel, batch: Transitions,
                  weights: jax.Array | None = None) -> jax.Array:
    """Mean squared error of one MLP in z-scored delta units (Gaussian head: the NLL).

    `L = (1/B) sum_i w_i ||f(z(s_i), z(a_i)) - y_i||^2 / n`, `y_i = (s'_i - s_i - mu_d) / sigma_d`;
    a Gaussian head `(mu, v)` gives `(1/B) sum_i w_i (1/2n) sum_j [(mu_ij - y_ij)^2 e^{-v_ij} + v_ij]`
    (the negative log-likelihood up to the constant `log(2 pi) / 2`).

    Args:
      params: one MLP's parameters (no ensemble axis).
      model: supplies the statistics and activation.
      batch: `Transitions` of B rows.
      weights: optional `(B,)` row weights summing to 1 (default uniform).

    Returns:
      `()` loss.

    Example:
      >>> from jaxctl.models.dynamics import NormStats, dynamics_init
      >>> st = NormStats(*(jnp.ones(k) for k in (3, 3, 1, 1, 3, 3)))
      >>> model = dynamics_init(jax.random.PRNGKey(0), st, (8,))
      >>> b = Transitions(jnp.zeros((5, 3)), jnp.zeros((5, 1)), jnp.ones((5, 3)))
      >>> dynamics_loss(model.params, model, b).shape
      ()

    References:
      Nagabandi et al. (2018), https://arxiv.org/abs/1708.02596, Eq. (2);
      Chua et al. (2018), https://arxiv.org/abs/1805.12114, Eq. (1) (NLL).
    """
    st = model.stats
    mean, logvar = jax.vmap(lambda s, a: normalized_gaussian(params, model, s, a))(
        batch.states, batch.actions)
    target = (batch.next_states - batch.states - st.delta_mean) / st.delta_std
    if logvar is None:
        per_row = jnp.mean((mean - target) ** 2, axis=-1)
    else:
        per_row = 0.5 * jnp.mean((mean - target) ** 2 * jnp.exp(-logvar) + logvar, axis=-1)
    if weights is None:
        return jnp.mean(per_row)
    return jnp.sum(weights * per_row)


class TrainLog(NamedTuple):
    """What `dynamics_train` did at each step.

    Attributes:
      losses: `(num_steps,)` mini-batch loss of each step (ensemble: member mean).
      accepted: `(num_steps,)` bool, the update was applied (False: no valid
        row, or a non-finite loss or update; parameters and optimizer state
        were kept).
    """

    losses: jax.Array
    accepted: jax.Array


def dynamics_train(model: DynamicsModel, opt_state: Any, data: Transitions, key: jax.Array,
                   optimizer: optax.GradientTransformation, *, num_steps: int,
                   batch_size: int = 512, noise_std: float | jax.Array = 0.0,
                   count: jax.Array | int | None = None) -> tuple[DynamicsModel, Any, TrainLog]:
    """`num_steps` optax steps on random mini-batches of the valid rows, in one `lax.scan`.

    Each step draws B rows uniformly (with replacement) among the valid rows
    (index `< count`, every entry finite; each ensemble member its own
    batch), perturbs them (below), and applies `optimizer.update`; a step
    whose loss or new parameters are not finite, or that finds no valid row,
    is skipped. The statistics in `model` are kept; recompute them with
    `normalization_stats` when the data grows.

    The perturbation adds independent `N(0, noise_std^2)` noise, in z-scored
    units, to the state, the action and the target change of every drawn
    row, fresh at every step. Nagabandi et al. (2018) perturb the stored
    data instead: their code adds noise once to the states and to the state
    changes as the data enter the set (not to the actions), with a standard
    deviation of 0.01 times each column's mean. Noise on the inputs smooths
    the model between the visited points; noise on the targets stands for
    dynamics the data did not see exactly (a next state is never perfectly
    known given the state and the action). Here the scale is each column's
    spread rather than its mean (a velocity's mean is near zero, which
    would switch its noise off), fresh draws do not fix one perturbed copy
    for all epochs, and the actions are perturbed too, since the planner
    searches over them and profits from a model that is smooth in them.

    Args:
      model: `DynamicsModel` to train.
      opt_state: `optimizer.init(model.params)`.
      data: `Transitions` of capacity `N >= 1` (rows past `count` are ignored).
      key: PRNG key.
      optimizer: optax transformation, e.g. `optax.adam(1e-3)`.
      num_steps: number of gradient steps (static, >= 1).
      batch_size: B, rows per mini-batch (static, >= 1).
      noise_std: standard deviation of the augmentation noise in z-scored
        units, finite and >= 0 (a traced value outside that range adds none).
      count: number of leading rows in use, `1 <= count <= N` (traced is
        fine, then clipped to `[0, N]`); `None` uses all N.

    Returns:
      `(model, opt_state, TrainLog)`.

    Example:
      >>> from jaxctl.models.dynamics import NormStats, dynamics_init
      >>> st = NormStats(*(jnp.ones(k) for k in (3, 3, 1, 1, 3, 3)))
      >>> model = dynamics_init(jax.random.PRNGKey(0), st, (8,))
      >>> opt = optax.adam(1e-3)
      >>> d = Transitions(jnp.zeros((5, 3)), jnp.zeros((5, 1)), jnp.ones((5, 3)))
      >>> model, s, log = dynamics_train(model, opt.init(model.params), d,
      ...                                jax.random.PRNGKey(1), opt, num_steps=3, batch_size=4)
      >>> log.losses.shape, bool(log.accepted.all())
      ((3,), True)

    References:
      Nagabandi et al. (2018), https://arxiv.org/abs/1708.02596, Sec. IV-A;
      Kingma & Ba (2015), https://arxiv.org/abs/1412.6980 (Adam).
    """
    N, n, m = check_data(data)
    num_steps = checks.check_positive_int("num_steps", num_steps)
    batch_size = checks.check_positive_int("batch_size", batch_size)
    if model.stats.state_mean.shape != (n,) or model.stats.action_mean.shape != (m,):
        raise ValueError(f"data has n={n}, m={m} but the model was built for "
                         f"n={model.stats.state_mean.shape[0]}, m={model.stats.action_mean.shape[0]}")
    count = check_count(count, N)
    checks.check_scalar("noise_std", noise_std, low=0.0, high=float("inf"), high_open=True)
    add_noise = not (checks.is_concrete(noise_std) and float(noise_std) == 0.0)
    # Traced noise_std: NaN, inf or negative values add no noise (documented fallback).
    data = Transitions(*checks.tree_as_float("data", tuple(data)))
    dt = data.states.dtype
    noise = jnp.where(jnp.isfinite(noise_std) & (noise_std > 0), noise_std, 0.0).astype(dt)
    E = ensemble_size(model)
    st = model.stats
    valid = valid_rows(data, count)
    num_valid = jnp.sum(valid.astype(jnp.int32))
    # Valid row indices first (stable): a uniform index below num_valid picks a valid row.
    order = jnp.argsort(~valid, stable=True)

    def member_batch(k):
        k_idx, k_noise = jax.random.split(k)
        idx = order[jax.random.randint(k_idx, (batch_size,), 0, jnp.maximum(num_valid, 1))]
        b = Transitions(*(x[idx] for x in data))
        if add_noise:
            # Noise is drawn in z-scored units, then mapped back to raw units, so each
            # dimension is perturbed relative to its own spread.
            ks, ka, kd = jax.random.split(k_noise, 3)
            s = b.states + noise * st.state_std * jax.random.normal(ks, b.states.shape, dt)
            a = b.actions + noise * st.action_std * jax.random.normal(ka, b.actions.shape, dt)
            d = (b.next_states - b.states) + noise * st.delta_std * jax.random.normal(
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
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        ok = (num_valid > 0) & jnp.isfinite(loss) & checks.tree_all_finite(new_params)
        params = checks.tree_where(ok, new_params, params)
        opt_state = checks.tree_where(ok, new_opt_state, opt_state)
        return (params, opt_state), (loss, ok)

    (params, opt_state), (losses, accepted) = lax.scan(step, (model.params, opt_state),
                                                       jax.random.split(key, num_steps))
    return model._replace(params=params), opt_state, TrainLog(losses, accepted)


def dynamics_evaluate(model: DynamicsModel, data: Transitions) -> jax.Array:
    """One-step prediction error in z-scored delta units (member-mean prediction).

    `(1/N) sum_i ||(s_hat'_i - s'_i) / sigma_d||^2 / n`.

    Args:
      model: `DynamicsModel`.
      data: `Transitions` of `N >= 1` rows.

    Returns:
      `()` mean squared error.

    Example:
      >>> from jaxctl.models.dynamics import NormStats, dynamics_init
      >>> st = NormStats(*(jnp.ones(k) for k in (3, 3, 1, 1, 3, 3)))
      >>> model = dynamics_init(jax.random.PRNGKey(0), st, (8,))
      >>> d = Transitions(jnp.zeros((5, 3)), jnp.zeros((5, 1)), jnp.ones((5, 3)))
      >>> dynamics_evaluate(model, d).shape
      ()

    References:
      Nagabandi et al. (2018), https://arxiv.org/abs/1708.02596.
    """
    check_data(data)
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
    `e_t = sqrt(mean_j ((s_hat_{t,j} - s_{t,j}) / sigma_{s,j})^2)`
    (Nagabandi et al. 2018, Fig. 6).

    Args:
      model: `DynamicsModel`.
      states: `(T + 1, n)` true states of a trajectory, `T >= 1`.
      actions: `(T, m)` actions that produced it.

    Returns:
      `OpenLoopPrediction` (vmap over trajectories for many).

    Example:
      >>> from jaxctl.models.dynamics import NormStats, dynamics_init
      >>> st = NormStats(*(jnp.ones(k) for k in (3, 3, 1, 1, 3, 3)))
      >>> model = dynamics_init(jax.random.PRNGKey(0), st, (8,))
      >>> p = open_loop_prediction(model, jnp.zeros((11, 3)), jnp.zeros((10, 1)))
      >>> p.error.shape
      (11,)

    References:
      Nagabandi et al. (2018), https://arxiv.org/abs/1708.02596, Fig. 6.
    """
    states, actions = checks.as_float("states", states), checks.as_float("actions", actions)
    if states.ndim != 2 or actions.ndim != 2 or states.shape[0] != actions.shape[0] + 1 \
            or actions.shape[0] == 0:
        raise ValueError(f"states must be (T + 1, n) and actions (T, m) with T >= 1, got "
                         f"{states.shape} and {actions.shape}")
    pred = simulate(lambda s, a: dynamics_predict(model, s, a), states[0], actions)
    err = jnp.sqrt(jnp.mean(((pred - states) / model.stats.state_std) ** 2, axis=-1))
    return OpenLoopPrediction(pred, states, err)
