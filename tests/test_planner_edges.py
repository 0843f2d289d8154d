"""Planners at their edges: overflowing returns, tiny temperatures, NaN warm starts,
`jit_planner` bounds, and scan carries under `jax.shard_map` and explicit meshes.

Oracles: the best candidate found by brute force over the same samples, the
finite alternative a correct planner must prefer, and the unsharded call.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxctl.control import candidates, planners, planning
from jaxctl.control.simulate import carry_zero, rollout, shift_actions, simulate

LOW, HIGH = -jnp.ones(1), jnp.ones(1)
PLANNER_NAMES = ("random_shooting", "cem", "mppi")


def integrator(x, u):
    return x + u


def quadratic(x, u, y):
    return -(y @ y)


def _plan(name, dynamics, reward, state, key, **kwargs):
    kwargs = dict(dict(num_samples=16, horizon=3, action_low=LOW, action_high=HIGH), **kwargs)
    return jax.jit(functools.partial(planners.PLANNERS[name], dynamics, reward, **kwargs))(
        state, key)


def test_overflowing_return_is_never_selected_by_random_shooting():
    # Each reward is finite (<= 3e38) but three of them overflow float32: the
    # all-positive candidates sum to +inf and must score -inf, not win.
    def reward(x, u, y):
        return jnp.asarray(3e38, x.dtype) * jnp.sign(u[0])

    res = _plan("random_shooting", integrator, reward, jnp.zeros(1), jax.random.PRNGKey(0),
                num_samples=64)
    scores = candidates.scores(integrator, reward, jnp.zeros(1),
                               jax.random.uniform(jax.random.PRNGKey(0), (64, 3, 1), minval=LOW,
                                                  maxval=HIGH), None)
    assert not np.any(np.isposinf(np.asarray(scores)))
    assert np.isfinite(res.total_reward) and res.total_reward == np.max(scores)
    assert np.all(np.isfinite(res.actions))


@pytest.mark.parametrize("reward_scale", [1.0, 3e38])
def test_mppi_with_tiny_temperature_returns_the_best_candidate(reward_scale):
    # lambda -> 0 is "pick the best": the differences to the best score are
    # divided by lambda, never the scores themselves (which overflow to -inf).
    def reward(x, u, y):
        return jnp.asarray(reward_scale, x.dtype) * -jnp.abs(y[0] - 0.5) / 3

    key = jax.random.PRNGKey(1)
    res = _plan("mppi", integrator, reward, jnp.zeros(1), key, temperature=1e-30,
                num_samples=32, num_iterations=1)
    assert np.all(np.isfinite(res.actions))
    # Oracle: the best of the same candidates (mppi draws N(0, 1) around the middle).
    eps = jax.random.normal(jax.random.split(key, 1)[0], (32, 3, 1))
    cand = jnp.clip(0.5 * eps, LOW, HIGH)
    scores = candidates.scores(integrator, reward, jnp.zeros(1), cand, None)
    best = cand[int(jnp.argmax(scores))]
    np.testing.assert_allclose(res.actions, best, atol=4 * float(jnp.finfo(best.dtype).eps))


@pytest.mark.parametrize("name", PLANNER_NAMES)
def test_nan_warm_start_gives_a_finite_plan(name):
    init = jnp.full((3, 1), jnp.nan).at[0, 0].set(0.25)
    res = _plan(name, integrator, quadratic, jnp.array([0.5]), jax.random.PRNGKey(2),
                init_actions=init)
    assert np.all(np.isfinite(res.actions)) and np.isfinite(res.total_reward)
    assert int(res.num_finite) > 0


def test_non_finite_warm_start_entries_restart_from_the_middle():
    state = jnp.zeros(1)
    init = jnp.array([[jnp.nan], [5.0], [-0.5]])
    checked = candidates.validate(integrator, quadratic, state, 4, 3, LOW, HIGH, init, None)[3]
    np.testing.assert_array_equal(checked, [[0.0], [1.0], [-0.5]])


@pytest.mark.parametrize("low, high", [
    ([jnp.nan], [1.0]), ([-1.0], [jnp.inf]), ([1.0], [-1.0]), ([], []),
])
def test_jit_planner_checks_concrete_bounds(low, high):
    plan = planning.jit_planner("mppi", num_samples=4, horizon=2)
    with pytest.raises(ValueError, match="action_low"):
        plan(integrator, quadratic, jnp.zeros(1), jax.random.PRNGKey(0),
             action_low=np.asarray(low), action_high=np.asarray(high))


def test_jit_planner_accepts_bounds_as_lists():
    plan = planning.jit_planner("random_shooting", num_samples=8, horizon=2)
    key = jax.random.PRNGKey(3)
    from_lists = plan(integrator, quadratic, jnp.ones(1), key, action_low=[-1.0],
                      action_high=[1.0])
    from_arrays = plan(integrator, quadratic, jnp.ones(1), key, action_low=LOW,
                       action_high=HIGH)
    np.testing.assert_array_equal(from_lists.actions, from_arrays.actions)


def test_empty_actions_name_the_argument():
    for fn in (lambda a: simulate(integrator, jnp.zeros(1), a),
               lambda a: rollout(integrator, quadratic, jnp.zeros(1), a),
               shift_actions):
        with pytest.raises(ValueError, match="actions must have shape"):
            fn(jnp.zeros((0, 1)))
    with pytest.raises(ValueError, match="state must have shape"):
        planners.random_shooting(integrator, quadratic, jnp.zeros(0), jax.random.PRNGKey(0),
                                 num_samples=2, horizon=2, action_low=LOW, action_high=HIGH)


def test_integer_state_is_promoted():
    xs = simulate(integrator, jnp.array([1]), jnp.full((2, 1), 0.5))
    np.testing.assert_array_equal(xs[:, 0], [1.0, 1.5, 2.0])


# ---------------------------------------------------------------------------
# Scan carries typed after the inputs: shard_map (check_vma) and explicit meshes.

MESH = jax.make_mesh((1,), ("d",))
# `jax.set_mesh` is the public context manager from jax 0.7; `use_mesh` was its earlier name.
_use_mesh = getattr(jax, "set_mesh", None) or jax.sharding.use_mesh


def _sharded(x):
    return jax.device_put(x, NamedSharding(MESH, P("d")))


def test_carry_zero_follows_the_inputs():
    z = carry_zero(jnp.ones(2, jnp.int32), jnp.ones(3, jnp.float32))
    assert z.shape == () and z.dtype == jnp.float32 and z == 0


def _two_plans(name):
    """A planner with its configuration bound, two start states and two keys."""
    plan = functools.partial(planners.PLANNERS[name], integrator, quadratic, num_samples=8,
                             horizon=3, action_low=LOW, action_high=HIGH)
    return plan, jnp.array([[0.5], [-0.3]]), jax.random.split(jax.random.PRNGKey(4), 2)


@pytest.mark.parametrize("name", PLANNER_NAMES)
def test_planners_inside_shard_map_match_the_unsharded_call(name):
    plan, states, keys = _two_plans(name)
    sharded = jax.jit(jax.shard_map(jax.vmap(plan), mesh=MESH, in_specs=(P("d"), P("d")),
                                    out_specs=P("d")))
    got = sharded(_sharded(states), _sharded(keys))
    want = jax.jit(jax.vmap(plan))(states, keys)
    np.testing.assert_array_equal(got.actions, want.actions)
    np.testing.assert_array_equal(got.total_reward, want.total_reward)


def test_simulate_inside_shard_map_with_sharded_actions_only():
    # The state is replicated, the actions vary over the mesh axis: the carry
    # must take the varying type from the actions.
    actions = jnp.ones((2, 3, 1))
    fn = jax.shard_map(jax.vmap(lambda a, x: simulate(integrator, x, a), in_axes=(0, None)),
                       mesh=MESH, in_specs=(P("d"), P()), out_specs=P("d"))
    xs = jax.jit(fn)(_sharded(actions), jnp.zeros(1))
    np.testing.assert_array_equal(xs[0, :, 0], [0.0, 1.0, 2.0, 3.0])


@pytest.mark.parametrize("name", PLANNER_NAMES)
def test_planners_on_an_explicit_mesh(name):
    plan, states, keys = _two_plans(name)
    mesh = jax.make_mesh((1,), ("d",), axis_types=(jax.sharding.AxisType.Explicit,))
    with _use_mesh(mesh):
        got = jax.jit(jax.vmap(plan))(jax.device_put(states, P("d")), jax.device_put(keys, P("d")))
    want = jax.jit(jax.vmap(plan))(states, keys)
    np.testing.assert_array_equal(got.actions, want.actions)


def test_a_float64_model_with_float32_states_plans_in_float64():
    with jax.enable_x64(True):
        a = jnp.float64(0.9)
        model = lambda x, u: a * x + u  # noqa: E731  (returns float64 for float32 x)
        xs = simulate(model, jnp.ones(1, jnp.float32), jnp.ones((2, 1), jnp.float32))
        assert xs.dtype == jnp.float64
        np.testing.assert_allclose(xs[:, 0], [1.0, 1.9, 2.71], rtol=1e-12)
        res = _plan("cem", model, quadratic, jnp.ones(1, jnp.float32), jax.random.PRNGKey(0),
                    action_low=LOW.astype(jnp.float32), action_high=HIGH.astype(jnp.float32))
        assert res.actions.dtype == jnp.float64 and np.isfinite(res.total_reward)
