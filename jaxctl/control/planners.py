"""Sampling-based model-predictive control: random shooting, CEM and MPPI.

Notation: `n` state size, `m` action size, `H` planning horizon, `K` number
of sampled candidate action sequences. A model is a pure callable
`dynamics(state (n,), action (m,)) -> next_state (n,)`, a task is a pure
callable `reward(state (n,), action (m,), next_state (n,)) -> ()`. The return
of an action sequence `U = (u_0, ..., u_{H-1})` from `x_0` is

    R(U) = sum_t reward(x_t, u_t, x_{t+1}),   x_{t+1} = dynamics(x_t, u_t).

Every planner is a pure function
`planner(dynamics, reward, state, key, *, num_samples, horizon, action_low,
action_high, init_actions=None, ...) -> PlanResult`: candidates are batched
with `jax.vmap` (optionally in chunks with `lax.map(batch_size=)`), rollouts
run in `lax.scan`, and a candidate whose predicted rollout or return is not
finite scores `-inf`, so it is never selected. The returned `states`,
`rewards` and `total_reward` are recomputed from the returned `actions`, so
the fields always agree.

Rollouts, `simulate` and `shift_actions` live in `jaxctl.control.simulate`.

Jitting: either close over everything static,
`jax.jit(partial(random_shooting, dynamics, reward, num_samples=1000,
horizon=10, action_low=lo, action_high=hi))`, or use
`jaxctl.control.planning.jit_planner`, which passes `dynamics` / `reward` as
pytrees so a retrained model reuses the compiled planner, and plans for N
states in one call.

References:
  Nagabandi, Kahn, Fearing, Levine (2018), "Neural network dynamics for
  model-based deep reinforcement learning with model-free fine-tuning",
  ICRA, https://arxiv.org/abs/1708.02596 (random shooting MPC).
  Rubinstein (1999), "The cross-entropy method for combinatorial and
  continuous optimization"; Chua et al. (2018), https://arxiv.org/abs/1805.12114 (CEM for MPC).
  Williams, Aldrich, Theodorou (2017), "Model predictive path integral
  control: from theory to parallel computing", JGCD,
  https://doi.org/10.2514/1.G001921 (MPPI).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh

import jaxctl.control.candidates as _cand
import jaxctl.control.simulate as _sim
from jaxctl.control.simulate import Dynamics, Reward
from jaxctl.util import checks
from jaxctl.util.mesh import check_divisible


class PlanResult(NamedTuple):
    """The plan returned by a planner; all fields describe the same action sequence.

    Attributes:
      actions: `(H, m)` the planned action sequence; execute `actions[0]`.
      states: `(H + 1, n)` the states `dynamics` predicts for `actions` from
        the start state (`states[0]` is the start state).
      rewards: `(H,)` the predicted per-step rewards along `states`.
      total_reward: `()` `sum(rewards)`, or `-inf` if the rollout is not finite.
      num_finite: `()` int32, candidates of the last sampling round whose
        predicted rollout was finite (0 means nothing usable was found).
    """

    actions: jax.Array
    states: jax.Array
    rewards: jax.Array
    total_reward: jax.Array
    num_finite: jax.Array


def _result(dynamics, reward, state, actions, num_finite):
    states, rewards = _sim.rollout(dynamics, reward, state, actions)
    total = jnp.sum(rewards)
    ok = jnp.isfinite(total) & jnp.all(jnp.isfinite(states))
    return PlanResult(actions, states, rewards, jnp.where(ok, total, -jnp.inf),
                      num_finite.astype(jnp.int32))


# ---------------------------------------------------------------------------
# Planners.


def random_shooting(dynamics: Dynamics, reward: Reward, state: jax.Array, key: jax.Array, *,
                    num_samples: int, horizon: int, action_low: jax.Array,
                    action_high: jax.Array, init_actions: jax.Array | None = None,
                    chunk_size: int | None = None, mesh: Mesh | None = None,
                    axis: str = "data") -> PlanResult:
    """Random-shooting MPC: the best of K uniformly sampled action sequences.

    `U_k ~ Uniform([low, high]^{H x m})`, `k = 1..K`; returns
    `argmax_k R(U_k)` (non-finite rollouts score `-inf`). With `init_actions`
    (the shifted previous plan) that sequence replaces candidate 0, so the
    plan never gets worse than the warm start under the model.

    Args:
      dynamics: `dynamics(state (n,), action (m,)) -> (n,)`, pure.
      reward: `reward(state (n,), action (m,), next_state (n,)) -> ()`, pure.
      state: `(n,)` current state.
      key: PRNG key.
      num_samples: K >= 1, number of candidate sequences (static).
      horizon: H >= 1, planning horizon (static).
      action_low: `(m,)` lower action bounds.
      action_high: `(m,)` upper action bounds (>= `action_low`).
      init_actions: optional `(H, m)` warm start, evaluated as a candidate.
      chunk_size: evaluate candidates in chunks of this many (memory bound
        for large K); `None` evaluates all K at once.
      mesh, axis: optional `jax.sharding.Mesh` and axis name: the K
        candidates (a multiple of the devices along `axis`) are split over
        the devices, each scores its own, and the selection uses the K
        replicated scores; the plan equals the one-device plan (the
        candidates are drawn from the same `key`).

    Returns:
      `PlanResult` with `actions (H, m)`, `states (H + 1, n)`, `rewards (H,)`,
      `total_reward ()`, `num_finite ()`.

    Example:
      >>> plan = jax.jit(functools.partial(
      ...     random_shooting, lambda x, u: x + u, lambda x, u, y: -y @ y,
      ...     num_samples=256, horizon=5, action_low=-jnp.ones(1), action_high=jnp.ones(1)))
      >>> res = plan(jnp.array([2.0]), jax.random.PRNGKey(0))
      >>> res.actions.shape, res.states.shape
      ((5, 1), (6, 1))

    References:
      Nagabandi et al. (2018), https://arxiv.org/abs/1708.02596, Sec. IV-B.
    """
    state, low, high, init_actions, K, H, chunk = _cand.validate(
        dynamics, reward, state, num_samples, horizon, action_low, action_high,
        init_actions, chunk_size)
    m = low.shape[0]
    _check_mesh(K, mesh, axis)
    candidates = jax.random.uniform(key, (K, H, m), state.dtype, low, high)
    if init_actions is not None:
        candidates = candidates.at[0].set(init_actions)
    scores = _cand.scores(dynamics, reward, state, candidates, chunk, mesh, axis)
    best = _cand.take_rows(candidates, jnp.argmax(scores), mesh, axis)
    return _result(dynamics, reward, state, best, _cand.count_finite(scores))


def _check_mesh(K, mesh, axis):
    if mesh is not None:
        check_divisible("num_samples", K, mesh, axis)


def _initial_mean(low, high, H, init_actions):
    if init_actions is None:
        return jnp.broadcast_to((low + high) / 2, (H,) + low.shape)
    return init_actions


def cem(dynamics: Dynamics, reward: Reward, state: jax.Array, key: jax.Array, *,
        num_samples: int, horizon: int, action_low: jax.Array, action_high: jax.Array,
        init_actions: jax.Array | None = None, num_iterations: int = 5,
        num_elites: int | None = None, init_std: float = 0.5, smoothing: float = 0.0,
        min_std: float = 1e-3, chunk_size: int | None = None, mesh: Mesh | None = None,
        axis: str = "data") -> PlanResult:
    """Cross-entropy-method MPC: refit a Gaussian to the elite sequences.

    For `i = 1..I`: `Z_k = mu + sigma * eps_k`, `eps_k ~ N(0, 1)`, scored as
    `U_k = clip(Z_k, low, high)`; the draws `Z_k` of the `E` best by `R(U_k)`
    (finite ones only) give `mu <- a mu + (1 - a) mean(elites)`,
    `sigma <- a sigma + (1 - a) std(elites)` with smoothing `a`. Refitting
    the unclipped draws lets `mu` reach a bound (a mean of clipped draws
    stays inside it, short of an optimum on the bound); the plan is
    `clip(mu)`. `mu` starts at `init_actions` (the shifted previous
    plan) or the middle of the bounds, `sigma` at `init_std * (high - low) / 2`.
    Returns the final mean, not the best sequence sampled: the mean
    averages out the model's errors that a single best sample exploits
    (mbrl-lib measured that it "increases performance significantly").

    Args:
      dynamics, reward, state, key, num_samples, horizon, action_low,
        action_high, init_actions, chunk_size, mesh, axis: as in
        `random_shooting` (the elites are assembled from the devices
        holding them).
      num_iterations: I >= 1 refits (static).
      num_elites: E, 1 <= E <= K (static); default `max(1, K // 10)`.
      init_std: initial standard deviation as a fraction of the half range.
      smoothing: a in [0, 1), weight of the old distribution in each refit.
      min_std: floor on sigma as a fraction of the half range (keeps
        sampling alive after the elites collapse).

    Returns:
      `PlanResult`; `num_finite` counts finite candidates of the last iteration.

    Example:
      >>> plan = jax.jit(functools.partial(
      ...     cem, lambda x, u: x + u, lambda x, u, y: -y @ y, num_samples=64,
      ...     horizon=5, action_low=-jnp.ones(1), action_high=jnp.ones(1)))
      >>> float(plan(jnp.array([0.5]), jax.random.PRNGKey(0)).actions[0, 0]) < 0
      True

    References:
      Rubinstein (1999); Botev et al. (2013), "The cross-entropy method for
      optimization"; Chua et al. (2018), https://arxiv.org/abs/1805.12114.
    """
    state, low, high, init_actions, K, H, chunk = _cand.validate(
        dynamics, reward, state, num_samples, horizon, action_low, action_high,
        init_actions, chunk_size)
    num_iterations = checks.check_positive_int("num_iterations", num_iterations)
    E = (max(1, K // 10) if num_elites is None
         else checks.check_positive_int("num_elites", num_elites))
    if E > K:
        raise ValueError(f"num_elites must be <= num_samples = {K}, got {E}")
    _check_mesh(K, mesh, axis)
    checks.check_scalar("smoothing", smoothing, low=0.0, high=1.0, high_open=True)
    checks.check_finite_positive("init_std", init_std)
    checks.check_scalar("min_std", min_std, low=0.0, high=float("inf"), high_open=True)
    half = (high - low) / 2
    floor = min_std * half
    mean = _initial_mean(low, high, H, init_actions)
    std = jnp.broadcast_to(init_std * half, mean.shape)
    dtype = state.dtype

    def iteration(carry, k):
        mean, std, _ = carry
        eps = jax.random.normal(k, (K,) + mean.shape, dtype)
        latent = mean + std * eps
        scores = _cand.scores(dynamics, reward, state, jnp.clip(latent, low, high), chunk, mesh, axis)
        elite_r, idx = lax.top_k(scores, E)
        elites = _cand.take_rows(latent, idx, mesh, axis)
        # Only finite elites count; if none is finite the distribution stays put.
        w = jnp.isfinite(elite_r).astype(dtype)
        n_ok = jnp.sum(w)
        w = w / jnp.maximum(n_ok, 1.0)
        e_mean = jnp.einsum("e,ehm->hm", w, elites)
        e_std = jnp.sqrt(jnp.einsum("e,ehm->hm", w, (elites - e_mean) ** 2))
        e_mean = jnp.where(n_ok > 0, e_mean, mean)
        e_std = jnp.where(n_ok > 0, e_std, std)
        new_mean = smoothing * mean + (1 - smoothing) * e_mean
        new_std = jnp.maximum(smoothing * std + (1 - smoothing) * e_std, floor)
        return (new_mean, new_std, _cand.count_finite(scores)), None

    keys = jax.random.split(key, num_iterations)
    zero = _sim.carry_zero(state, mean, dtype=dtype)
    init = (mean + zero, std + zero, zero.astype(jnp.int32))
    (mean, _, n_finite), _ = lax.scan(iteration, init, keys)
    return _result(dynamics, reward, state, jnp.clip(mean, low, high), n_finite)


def mppi(dynamics: Dynamics, reward: Reward, state: jax.Array, key: jax.Array, *,
         num_samples: int, horizon: int, action_low: jax.Array, action_high: jax.Array,
         init_actions: jax.Array | None = None, num_iterations: int = 5,
         noise_std: float = 0.5, temperature: float = 0.1,
         chunk_size: int | None = None, mesh: Mesh | None = None,
         axis: str = "data") -> PlanResult:
    """Model-predictive path-integral control: a reward-weighted average of perturbed plans.

    For `i = 1..I`: `U_k = clip(mu + sigma * eps_k, low, high)`,
    `w_k = exp((R(U_k) - max_j R(U_j)) / (lambda s)) / Z` (non-finite
    rollouts get weight 0), `mu <- sum_k w_k U_k`, with
    `sigma = noise_std * (high - low) / 2`, `s` the standard deviation of the
    finite sampled returns and the temperature `lambda` relative to it, so
    the weights do not depend on the units of the reward. `mu` starts at `init_actions` (the shifted
    previous plan) or the middle of the bounds. Returns `mu` and its rollout.

    Args:
      dynamics, reward, state, key, num_samples, horizon, action_low,
        action_high, init_actions, chunk_size, mesh, axis: as in
        `random_shooting` (the weighted sum is local sums plus an all-reduce).
      num_iterations: I >= 1 updates of the mean per call (static).
      noise_std: exploration standard deviation as a fraction of the half range.
      temperature: lambda > 0, in standard deviations of the sampled
        returns: small values approach "pick the best", large values average
        all candidates (0.1 weights a candidate one deviation below the best
        by e^-10).

    Returns:
      `PlanResult` of the final mean; `num_finite` counts finite candidates
      of the last iteration.

    Example (vmapped over two start states):
      >>> f = functools.partial(mppi, lambda x, u: x + u, lambda x, u, y: -y @ y,
      ...                       num_samples=64, horizon=5, action_low=-jnp.ones(1),
      ...                       action_high=jnp.ones(1))
      >>> res = jax.jit(jax.vmap(f))(jnp.array([[0.5], [-0.5]]),
      ...                            jax.random.split(jax.random.PRNGKey(0), 2))
      >>> res.actions.shape, bool(res.actions[0, 0, 0] < 0 < res.actions[1, 0, 0])
      ((2, 5, 1), True)

    References:
      Williams, Aldrich, Theodorou (2017), https://doi.org/10.2514/1.G001921;
      Williams et al. (2016), "Aggressive driving with model predictive path
      integral control", ICRA.
    """
    state, low, high, init_actions, K, H, chunk = _cand.validate(
        dynamics, reward, state, num_samples, horizon, action_low, action_high,
        init_actions, chunk_size)
    num_iterations = checks.check_positive_int("num_iterations", num_iterations)
    checks.check_positive("temperature", temperature)
    checks.check_scalar("noise_std", noise_std, low=0.0, high=float("inf"), high_open=True)
    _check_mesh(K, mesh, axis)
    sigma = noise_std * (high - low) / 2
    mean = _initial_mean(low, high, H, init_actions)
    dtype = state.dtype

    def iteration(carry, k):
        mean, _ = carry
        eps = jax.random.normal(k, (K,) + mean.shape, dtype)
        cand = jnp.clip(mean + sigma * eps, low, high)
        scores = _cand.scores(dynamics, reward, state, cand, chunk, mesh, axis)
        n_finite = _cand.count_finite(scores)
        # Shift by the best finite score BEFORE dividing by the temperature: the
        # differences are <= 0, so a tiny temperature gives -inf (weight 0), never
        # inf - inf. -inf scores get weight 0; with no finite score keep the old
        # mean instead of the 0/0 of a softmax over all -inf.
        shifted = jnp.where(n_finite > 0, scores - jnp.max(scores), 0.0)
        w = jax.nn.softmax(shifted / (jnp.asarray(temperature, dtype) * _cand.finite_std(scores)))
        new_mean = _cand.weighted_sum(w, cand, mesh, axis)
        return (jnp.where(n_finite > 0, new_mean, mean), n_finite), None

    keys = jax.random.split(key, num_iterations)
    zero = _sim.carry_zero(state, mean, dtype=dtype)
    (mean, n_finite), _ = lax.scan(iteration, (mean + zero, zero.astype(jnp.int32)), keys)
    return _result(dynamics, reward, state, mean, n_finite)


PLANNERS: dict[str, Callable[..., PlanResult]] = {
    "random_shooting": random_shooting,
    "cem": cem,
    "mppi": mppi,
}
