"""Rollouts, returns and advantages for policy-gradient methods.

Notation: a batch is T consecutive time steps of one environment; `obs[t]`
is `s_t`, `actions[t]` is `a_t ~ pi(. | s_t)`, `rewards[t]` is `r_t`,
`next_obs[t]` is `s_{t+1}` as the environment produced it (before any
automatic reset). An episode ends at t when the next state is terminal
(`terminated[t]`, no value after it), when it hits the time limit
(`truncated[t]`, the value of `s_{t+1}` is bootstrapped), or at the end of
the batch (`t = T - 1`, cut by the batch: also bootstrapped, or treated as
terminal as DeWolf (2018) did).

Environments follow gymnax's functional interface:
`env.reset(key, params) -> (obs, state)` and
`env.step(key, state, action, params) -> (obs, state, reward, terminated,
truncated, info)` with automatic reset (gymnax >= 1.0; the older 5-tuple
`(obs, state, reward, done, info)` is accepted as well).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxctl.control.simulate import carry_zero
from jaxctl.util.checks import PyTree, as_float, check_positive_int, check_scalar, tree_as_float


def _typed_after(tree: PyTree, ref: jax.Array) -> PyTree:
    """`tree` plus a zero typed after `ref` (booleans or-ed with False), leaf by leaf."""
    def one(x):
        x = jnp.asarray(x)
        if x.dtype == bool:
            return x | (carry_zero(ref, dtype=jnp.int32) != 0)
        return x + carry_zero(ref, dtype=x.dtype)

    return jax.tree.map(one, tree)


class Trajectory(NamedTuple):
    """T time steps of interaction (leading axis T on every field).

    Attributes:
      obs: (T, *obs_shape) observations `s_t` the actions were taken in.
      actions: (T, *action_shape) actions `a_t`.
      rewards: (T,) float32 rewards `r_t`.
      terminated: (T,) bool, `s_{t+1}` is terminal.
      truncated: (T,) bool, the episode hit its time limit at t.
      next_obs: (T, *obs_shape) `s_{t+1}` before any automatic reset (for
        bootstrapping a truncated episode).
    """

    obs: jax.Array
    actions: jax.Array
    rewards: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    next_obs: jax.Array


class EpisodeStats(NamedTuple):
    """Undiscounted episode returns within one batch.

    Attributes:
      max_return: the largest return among the batch's episodes (DeWolf's
        2018 "max reward per batch"); the episode cut by the batch end counts with
        the steps it got in the batch.
      mean_return: mean return over the same episodes.
      num_episodes: int32, episodes that ended in the batch (incl. the cut one).
    """

    max_return: jax.Array
    mean_return: jax.Array
    num_episodes: jax.Array


def _step(env, key, state, action, env_params):
    out = env.step(key, state, action, env_params)
    if len(out) == 6:
        obs, state, reward, terminated, truncated, info = out
        final_obs = info.get("final_observation", obs) if isinstance(info, dict) else obs
    elif len(out) == 5:  # gymnax < 1.0: done includes the time limit
        obs, state, reward, done, info = out
        discount = info.get("discount") if isinstance(info, dict) else None
        terminated = done if discount is None else done & (discount == 0)
        truncated = done & ~terminated
        final_obs = info.get("final_observation", obs) if isinstance(info, dict) else obs
    else:
        raise ValueError(f"env.step must return 5 or 6 values (gymnax interface), got {len(out)}")
    return obs, state, reward, terminated, truncated, final_obs


def _gymnax_auto_reset(env) -> bool:
    """Whether `env.step` is gymnax's own auto-resetting step (not a wrapper's override)."""
    try:
        from gymnax.environments.environment import Environment
    except ImportError:
        return False
    return (isinstance(env, Environment) and type(env).step is Environment.step
            and hasattr(env, "is_truncated"))


def _presampled_step(env, key_step, state, action, env_params, reset):
    """gymnax's auto-resetting step with the reset `(obs, state)` drawn beforehand.

    Equal to `Environment.step` given the same keys: gymnax splits the step
    key into `(key_step, key_reset)` and computes `reset_env(key_reset)` at
    every step, kept only where the episode ended.
    """
    obs_st, state_st, reward, terminated, _ = env.step_env(key_step, state, action, env_params)
    truncated = env.is_truncated(state_st, env_params)
    done = jnp.logical_or(terminated, truncated)
    obs_re, state_re = reset
    pick = lambda re, st: lax.select(done, re, st)
    return (jax.tree.map(pick, obs_re, obs_st), jax.tree.map(pick, state_re, state_st), reward,
            terminated, truncated, obs_st)


def rollout(
    env: Any,
    env_params: Any,
    act: Callable[[PyTree, Any, jax.Array], jax.Array],
    params: PyTree,
    key: jax.Array,
    num_steps: int,
    start: tuple[jax.Array, Any] | None = None,
    *,
    noise: Callable[[jax.Array], PyTree] | None = None,
    unroll: int = 1,
) -> tuple[Trajectory, tuple[jax.Array, Any]]:
    """Runs a policy for `num_steps` steps in `lax.scan`, resetting at episode ends.

    The environment resets itself when an episode terminates or hits its
    time limit (gymnax auto-reset), so one batch holds as many episodes as fit
    in `num_steps` steps, the last one cut by the batch end, as in DeWolf
    (2018).

    All randomness is drawn before the loop, in one vectorised call per kind:
    on CPU every threefry call inside a scan body is a loop of its own (5
    rounds), about 5 us a step, while the CartPole dynamics cost under 1 us.
    For a gymnax `Environment` whose `step` is gymnax's own, the reset
    states of all steps are drawn beforehand too (gymnax computes one reset
    per step and keeps it where the episode ended; the trajectory is the same
    as with `env.step`, bit for bit). With `noise`, the policy's noise is
    drawn beforehand as well: `act` then receives `noise(key_t)` instead of
    the step key `key_t` (e.g. Gumbel noise for a softmax policy, whose
    sample is `argmax(logits + noise)`).

    Args:
      env: a gymnax-style environment (functional `reset` / `step`).
      env_params: its parameters (e.g. `env.default_params`).
      act: `act(params, key, obs) -> action` for ONE observation (e.g.
        `Policy.sample`); `act(params, noise(key), obs)` with `noise`.
      params: policy parameters.
      key: PRNG key.
      num_steps: T, a static positive int.
      start: `(obs, env_state)` to continue from; by default the batch starts
        from `env.reset`.
      noise: optional `noise(key) -> pytree`, the policy's noise for one step.
      unroll: `lax.scan` unroll factor (a static positive int).

    Returns:
      `(trajectory, (obs, env_state))`: the `Trajectory` and where the batch
      ended (pass it as `start` to continue).

    Example:
      >>> import gymnax
      >>> env, env_params = gymnax.make("CartPole-v1")
      >>> act = lambda params, key, obs: jax.random.bernoulli(key).astype(jnp.int32)  # random
      >>> traj, _ = rollout(env, env_params, act, None, jax.random.PRNGKey(0), 200)
      >>> traj.rewards.shape, traj.obs.shape
      ((200,), (200, 4))
    """
    num_steps = check_positive_int("num_steps", num_steps)
    unroll = check_positive_int("unroll", unroll)
    key_reset, key_run = jax.random.split(key)
    # gymnax starts counters from Python constants (`time=0`): typed after
    # the key, the carry keeps shard_map's varying axes (sessions split over
    # devices) and the values are unchanged.
    typed = lambda tree: _typed_after(tree, jax.random.key_data(key))
    if start is None:
        start = typed(env.reset(key_reset, env_params))
    # The per-step keys split as the loop would: (key_act, key_env) per step.
    step_keys = jax.vmap(jax.random.split)(jax.random.split(key_run, num_steps))
    key_act, key_env = step_keys[:, 0], step_keys[:, 1]
    act_in = key_act if noise is None else jax.vmap(noise)(key_act)
    if _gymnax_auto_reset(env):
        env_keys = jax.vmap(jax.random.split)(key_env)
        resets = typed(jax.vmap(env.reset_env, in_axes=(0, None))(env_keys[:, 1], env_params))
        env_in = (env_keys[:, 0], resets)
        env_step = lambda x, state, action: _presampled_step(env, x[0], state, action, env_params,
                                                             x[1])
    else:
        env_in = key_env
        env_step = lambda k, state, action: _step(env, k, state, action, env_params)

    def body(carry, x):
        obs, state = carry
        a_in, e_in = x
        action = act(params, a_in, obs)
        next_obs, next_state, reward, terminated, truncated, final_obs = env_step(
            e_in, state, action)
        out = Trajectory(obs, action, jnp.asarray(reward, jnp.float32), jnp.asarray(terminated, bool),
                         jnp.asarray(truncated, bool), final_obs)
        return (next_obs, next_state), out

    end, traj = lax.scan(body, start, (act_in, env_in), unroll=unroll)
    return traj, end


def episode_ends(traj: Trajectory, *, cut_at_batch_end: bool = True) -> jax.Array:
    """(T,) bool: an episode ends at t (terminal, time limit, or the batch end)."""
    _check_time_series(terminated=traj.terminated, truncated=traj.truncated)
    ends = traj.terminated | traj.truncated
    if cut_at_batch_end:
        ends = ends.at[-1].set(True)
    return ends


def _check_time_series(**arrays: jax.Array) -> int:
    """The shared length T >= 1 of the (T,) arrays (ValueError naming them otherwise)."""
    shapes = {name: jnp.shape(a) for name, a in arrays.items()}
    first = next(iter(shapes.values()))
    if len(first) != 1 or any(s != first for s in shapes.values()):
        raise ValueError(f"expected arrays of one shared shape (T,), got {shapes}")
    if first[0] < 1:
        raise ValueError(f"{', '.join(shapes)} must hold at least one time step (T >= 1), got T = 0")
    return first[0]


def episode_stats(rewards: jax.Array, ends: jax.Array) -> EpisodeStats:
    """Undiscounted returns of the episodes in one batch.

    Args:
      rewards: (T,) rewards.
      ends: (T,) bool, an episode ends at t; set `ends[-1]` to count the
        episode cut by the batch end (`episode_ends` does).

    Returns:
      An `EpisodeStats`; with no episode end, max and mean are 0.

    Example:
      >>> float(episode_stats(jnp.ones(5), jnp.array([0, 1, 0, 0, 1], bool)).max_return)
      3.0
    """
    _check_time_series(rewards=rewards, ends=ends)
    rewards = as_float("rewards", rewards)
    ends = jnp.asarray(ends, bool)

    def body(running, x):
        r, end = x
        total = running + r
        return jnp.where(end, jnp.zeros_like(total), total), total

    # The carry comes from the input: its dtype (x64) and shard_map axes follow.
    _, totals = lax.scan(body, jnp.zeros_like(rewards[0]), (rewards, ends))
    n = jnp.sum(ends.astype(jnp.int32))
    max_return = jnp.max(jnp.where(ends, totals, -jnp.inf))
    mean_return = jnp.sum(jnp.where(ends, totals, 0.0)) / jnp.maximum(n, 1)
    return EpisodeStats(jnp.where(n > 0, max_return, 0.0), mean_return, n)


def gae(
    rewards: jax.Array,
    values: jax.Array,
    next_values: jax.Array,
    terminated: jax.Array,
    ends: jax.Array,
    gamma: float,
    lam: float,
) -> tuple[jax.Array, jax.Array]:
    """Generalized advantage estimates and lambda-returns.

    `delta_t = r_t + gamma (1 - terminated_t) V(s_{t+1}) - V(s_t)`,
    `A_t = delta_t + gamma lam (1 - end_t) A_{t+1}` (a reverse `lax.scan`),
    and the value targets `R_t = A_t + V(s_t)`. With `lam = 1` the advantage
    is the discounted Monte-Carlo return to the episode end (plus
    `gamma^k V` of the state after a cut) minus `V(s_t)`, the estimator of
    DeWolf (2018); `lam = 0` is the one-step TD error. Integer inputs are
    promoted; the outputs take the promoted dtype of `rewards`, `values` and
    `next_values`.

    Args:
      rewards: (T,) rewards.
      values: (T,) `V(s_t)`.
      next_values: (T,) `V(s_{t+1})`, the state after step t before any reset
        (ignored where `terminated`).
      terminated: (T,) bool, `s_{t+1}` is terminal (value 0).
      ends: (T,) bool, the episode ends at t (terminal, time limit or batch
        end); no advantage flows backwards across an end.
      gamma: discount in [0, 1] (may be traced).
      lam: GAE lambda in [0, 1] (may be traced).

    Returns:
      `(advantages, returns)`, both (T,).

    Example:
      >>> A, R = gae(jnp.ones(3), jnp.zeros(3), jnp.zeros(3),
      ...            jnp.array([0, 0, 1], bool), jnp.array([0, 0, 1], bool), 0.5, 1.0)
      >>> print(A)
      [1.75 1.5  1.  ]

    References:
      Schulman, Moritz, Levine, Jordan & Abbeel (2016), "High-dimensional
      continuous control using generalized advantage estimation".
    """
    _check_time_series(rewards=rewards, values=values, next_values=next_values,
                       terminated=terminated, ends=ends)
    for name, value in (("gamma", gamma), ("lam", lam)):
        check_scalar(name, value, low=0.0, high=1.0)
    rewards, values, next_values = (as_float(name, x) for name, x in (
        ("rewards", rewards), ("values", values), ("next_values", next_values)))
    dtype = jnp.result_type(rewards, values, next_values)
    rewards, values, next_values = (x.astype(dtype) for x in (rewards, values, next_values))
    gamma, lam = jnp.asarray(gamma, dtype), jnp.asarray(lam, dtype)
    not_term = 1 - jnp.asarray(terminated, bool).astype(dtype)
    deltas = rewards + gamma * not_term * next_values - values
    carry_on = gamma * lam * (1 - jnp.asarray(ends, bool).astype(dtype))

    def body(next_adv, x):
        delta, c = x
        adv = delta + c * next_adv
        return adv, adv

    # The carry comes from the input: its dtype (x64) and shard_map axes follow.
    _, adv = lax.scan(body, jnp.zeros_like(deltas[-1]), (deltas, carry_on), reverse=True)
    return adv, adv + values


def score_gradient(scores: PyTree, advantages: jax.Array) -> PyTree:
    """Policy gradient `g = 1/T sum_t score_t A_t` from per-sample scores.

    Args:
      scores: pytree whose leaves have a leading axis T (per-sample
        `d log pi(a_t | s_t) / d theta`, e.g. from `jaxctl.per_sample_grads`).
      advantages: (T,) advantages.

    Returns:
      A pytree shaped like one sample of `scores` (the parameters).

    Example:
      >>> print(score_gradient({"w": jnp.ones((4, 3))}, jnp.arange(4.0))["w"])
      [1.5 1.5 1.5]
    """
    advantages = as_float("advantages", advantages)
    if advantages.ndim != 1 or advantages.shape[0] < 1:
        raise ValueError(f"advantages must have shape (T,) with T >= 1, got {advantages.shape}")
    T = advantages.shape[0]
    scores = tree_as_float("scores", scores)
    leaves = jax.tree.leaves(scores)
    bad = [jnp.shape(x) for x in leaves if jnp.ndim(x) < 1 or jnp.shape(x)[0] != T]
    if not leaves or bad:
        raise ValueError(f"scores must have a leading axis matching advantages' length T={T}, "
                         f"got leaf shapes {[jnp.shape(x) for x in leaves]}")
    return jax.tree.map(
        lambda s: jnp.tensordot(advantages.astype(s.dtype), s, axes=1,
                                precision=lax.Precision.HIGHEST) / T, scores)
