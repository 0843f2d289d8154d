"""Trajectory sampling through an ensemble (PETS, Chua et al. 2018), for any planner.

Notation as in `jaxctl.control.planners` (`n`, `m`, `H`, `K`), plus `E`
ensemble members and `P` particles. All `P` particles start at the current
state; particle `p` follows member `e(p) = p mod E` for the whole horizon
(TS-inf) and, with Gaussian heads, samples its change,

    s_{t+1,p} = s_{t,p} + mu_d + sigma_d (mu_e + exp(v_e / 2) eps_{t,p}),  eps ~ N(0, I),

drawn once per call, so every candidate sees the same noise (common random
numbers: candidates differ by their actions, not by their luck). A
deterministic head propagates its mean (`eps` unused). A candidate `U` scores
an aggregate of its particle returns `R_p(U) = sum_t r(s_{t,p}, u_t, s_{t+1,p})`:

    A = mean_p R_p ("mean", Chua et al. 2018) | min_p R_p ("min") | quantile_q(R_p) (q in (0, 1)).

How any planner optimises `A` unchanged: it is handed one augmented state
`z = (s_1..s_P, R_1..R_P, t)` and the per-step reward `A(R_{t+1}) - A(R_t)`,
whose sum telescopes to `A(R_H)` because `R_0 = 0`. A candidate on which any
particle's rollout is not finite scores `-inf`, as in the planners.

References:
  Chua, Calandra, McAllister, Levine (2018), "Deep reinforcement learning in
  a handful of trials using probabilistic dynamics models", NeurIPS,
  https://arxiv.org/abs/1805.12114 (PETS: ensembles, TS-inf, CEM).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxctl.models.dynamics import DynamicsModel, ensemble_size, is_gaussian, normalized_gaussian
from jaxctl.util import checks

AGGREGATES = ("mean", "min")


class ParticlePlan(NamedTuple):
    """A plan scored through `P` particles.

    Attributes:
      actions: `(H, m)` the planned sequence; execute `actions[0]`.
      particle_states: `(H + 1, P, n)` the particles along `actions`.
      particle_returns: `(P,)` each particle's predicted return.
      rewards: `(H,)` per-step increments of the aggregate, summing to `total_reward`.
      total_reward: `()` the aggregate `A(R_1..R_P)`, or `-inf` if a rollout is not finite.
      num_finite: `()` int32, finite candidates of the planner's last round.
    """

    actions: jax.Array
    particle_states: jax.Array
    particle_returns: jax.Array
    rewards: jax.Array
    total_reward: jax.Array
    num_finite: jax.Array


def check_aggregate(aggregate: Any) -> str | float:
    """`"mean"`, `"min"` or a quantile level `q` in `(0, 1)` (Python, numpy or jax scalar)."""
    if isinstance(aggregate, str):
        return checks.check_choice("aggregate", aggregate, AGGREGATES)
    try:
        return checks.static_float("aggregate", aggregate, low=0.0, low_open=True, high=1.0)
    except ValueError as err:
        raise ValueError(f"aggregate must be 'mean', 'min' or a concrete quantile level q in "
                         f"(0, 1), got {aggregate!r}") from err


def aggregate_returns(returns: jax.Array, aggregate: str | float) -> jax.Array:
    """`A(R)` over the last axis of `returns` (see the module docstring)."""
    if aggregate == "mean":
        return jnp.mean(returns, axis=-1)
    if aggregate == "min":
        return jnp.min(returns, axis=-1)
    return jnp.quantile(returns, aggregate, axis=-1)


def _propagate(model: DynamicsModel, states: jax.Array, action: jax.Array,
               eps: jax.Array) -> jax.Array:
    """`(P, n)` next particles; particle `p` uses member `p mod E` and noise `eps[p]`."""
    P, n = states.shape
    E = ensemble_size(model)
    st = model.stats

    def member(params, xs, es):  # (P/E, n) particles of one member
        mean, logvar = jax.vmap(lambda x: normalized_gaussian(params, model, x, action))(xs)
        z = mean if logvar is None else mean + jnp.exp(0.5 * logvar) * es
        return xs + st.delta_mean + st.delta_std * z

    if E is None:
        return member(model.params, states, eps)
    # Particle p = i E + e sits at [i, e]: member e gets particles e, e + E, ...
    grouped = lambda a: jnp.swapaxes(a.reshape(P // E, E, n), 0, 1)
    nxt = jax.vmap(member)(model.params, grouped(states), grouped(eps))
    return jnp.swapaxes(nxt, 0, 1).reshape(P, n)


def plan_with_particles(planner: Callable, model: DynamicsModel, reward: Callable,
                        state: jax.Array, key: jax.Array, *, horizon: int,
                        num_particles: int = 20, aggregate: str | float = "mean",
                        **planner_options: Any) -> ParticlePlan:
    """Plans with `planner` on the particle-aggregated return of `model` (PETS).

    Args:
      planner: a planner of `jaxctl.control.planners` (`random_shooting`, `cem`, `mppi`).
      model: `DynamicsModel`, usually an ensemble with Gaussian heads.
      reward: `reward(state (n,), action (m,), next_state (n,)) -> ()`, pure.
      state: `(n,)` current state.
      key: PRNG key (the particle noise and the planner's draws).
      horizon: H >= 1 (static).
      num_particles: P >= 1, a multiple of the ensemble size (static).
        Chua et al. (2018) use 20 particles on 5 members.
      aggregate: `"mean"`, `"min"` or a quantile level `q` in (0, 1) (static);
        a low `q` is pessimistic about the members' disagreement.
      **planner_options: the planner's keywords (`num_samples`, `action_low`,
        `action_high`, `init_actions`, `num_iterations`, ...).

    Returns:
      `ParticlePlan`.

    Example:
      >>> from jaxctl.control.planners import cem
      >>> from jaxctl.models.dynamics import NormStats, dynamics_init
      >>> st = NormStats(*(jnp.ones(k) for k in (3, 3, 1, 1, 3, 3)))
      >>> model = dynamics_init(jax.random.PRNGKey(0), st, (8,), ensemble_size=2,
      ...                       head="gaussian")
      >>> plan = plan_with_particles(cem, model, lambda s, a, s2: -jnp.sum(s2 ** 2),
      ...                            jnp.zeros(3), jax.random.PRNGKey(1), horizon=5,
      ...                            num_particles=4, num_samples=32,
      ...                            action_low=-jnp.ones(1), action_high=jnp.ones(1))
      >>> plan.actions.shape, plan.particle_states.shape
      ((5, 1), (6, 4, 3))

    References:
      Chua et al. (2018), https://arxiv.org/abs/1805.12114, Sec. 4-5.
    """
    horizon = checks.check_positive_int("horizon", horizon)
    P = checks.check_positive_int("num_particles", num_particles)
    aggregate = check_aggregate(aggregate)
    E = ensemble_size(model)
    if E is not None and P % E:
        raise ValueError(f"num_particles must be a multiple of the ensemble size E = {E}, "
                         f"got {P}")
    n = model.stats.state_mean.shape[0]
    state = checks.as_float("state", state)
    if state.shape != (n,):
        raise ValueError(f"state must have shape ({n},), the model's state size, got "
                         f"{state.shape}")
    low = planner_options.get("action_low")
    m = model.stats.action_mean.shape[0]
    if jnp.shape(low) != (m,):
        raise ValueError(f"action_low must have shape ({m},), the model's action size, got "
                         f"{jnp.shape(low)}")
    r_spec = jax.eval_shape(reward, state, jax.ShapeDtypeStruct((m,), state.dtype), state)
    if getattr(r_spec, "shape", None) != ():
        raise ValueError(f"reward(state, action, next_state) must return a scalar, got shape "
                         f"{getattr(r_spec, 'shape', r_spec)}")
    k_noise, k_plan = jax.random.split(key)
    dtype = jnp.result_type(state, model.stats.state_mean)
    state = state.astype(dtype)
    eps = (jax.random.normal(k_noise, (horizon, P, n), dtype) if is_gaussian(model)
           else jnp.zeros((horizon, P, n), dtype))

    def unpack(z):
        return z[:P * n].reshape(P, n), z[P * n:P * n + P], z[-1]

    def dynamics(z, u):
        xs, returns, t = unpack(z)
        e_t = lax.dynamic_index_in_dim(eps, jnp.clip(t.astype(jnp.int32), 0, horizon - 1),
                                       keepdims=False)
        nxt = _propagate(model, xs, u, e_t)
        r = jax.vmap(lambda x, x2: reward(x, u, x2))(xs, nxt)
        return jnp.concatenate([nxt.reshape(-1), returns + r, (t + 1)[None]])

    def increment(z, u, z_next):
        return (aggregate_returns(unpack(z_next)[1], aggregate)
                - aggregate_returns(unpack(z)[1], aggregate))

    z0 = jnp.concatenate([jnp.tile(state, P), jnp.zeros(P + 1, dtype)])
    res = planner(dynamics, increment, z0, k_plan, horizon=horizon, **planner_options)
    xs = res.states[:, :P * n].reshape(horizon + 1, P, n)
    return ParticlePlan(res.actions, xs, res.states[-1, P * n:P * n + P], res.rewards,
                        res.total_reward, res.num_finite)
