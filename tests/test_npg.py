"""The optax-compatible NPG transformation `jaxctl.npg.npg`.

Oracles: the Fisher and its (damped) inverse built in float64 numpy from the
score matrix, `numpy.linalg.pinv` / `solve`; a loop over problems for vmap;
`chex.assert_max_traces` for recompilation.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from jaxctl.core.fisher import fisher_operator
from jaxctl.core.jacobians import per_sample_grads, ravel_per_sample
from jaxctl.models.policies import categorical_policy
from jaxctl.optim.npg import NPGState, npg
from jaxctl.control.rl import score_gradient

T = 48
DELTA = 0.01


PI = categorical_policy(4, 3, (8,))


@functools.partial(jax.jit, static_argnums=1)
def _problem_arrays(seed, T):
    pi = PI
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    params = pi.init(k[0])
    # Move away from the near-uniform initial policy so the Fisher is generic.
    params = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(k[3], x.shape), params)
    obs = jax.random.normal(k[1], (T, 4))
    actions = jax.vmap(pi.sample, (None, 0, 0))(params, jax.random.split(k[2], T), obs)
    adv = jax.random.normal(jax.random.fold_in(k[3], 1), (T,))
    scores = per_sample_grads(pi.log_prob, params, obs, actions)
    grads = jax.tree.map(jnp.negative, score_gradient(scores, adv))
    return params, obs, actions, adv, scores, grads


def make_problem(seed, T=T):
    return (PI, *_problem_arrays(seed, T))


@pytest.fixture(scope="module")
def problem():
    pi, params, obs, actions, adv, scores, grads = make_problem(0)
    G, _ = ravel_per_sample(scores)
    Gn = np.asarray(G, np.float64)
    F = Gn.T @ Gn / T
    g = -np.asarray(ravel_pytree(grads)[0], np.float64)
    return dict(pi=pi, params=params, obs=obs, actions=actions, scores=scores, grads=grads, F=F, g=g)


def flat(tree):
    return np.asarray(ravel_pytree(tree)[0], np.float64)


def test_undamped_step_has_fisher_norm_delta_and_pinv_direction(problem):
    opt = npg(DELTA)
    state = opt.init(problem["params"])
    updates, state = jax.jit(opt.update)(problem["grads"], state, problem["params"],
                                         scores=problem["scores"])
    step = flat(updates)  # added to params: ascent on the return
    F, g = problem["F"], problem["g"]
    np.testing.assert_allclose(step @ F @ step, DELTA, rtol=1e-3)
    direction = np.linalg.pinv(F, rcond=1e-6, hermitian=True) @ g
    expected = np.sqrt(DELTA / (g @ direction)) * direction
    np.testing.assert_allclose(step, expected, rtol=2e-2, atol=2e-3 * np.abs(expected).max())
    assert step @ g > 0  # ascent on the surrogate
    assert state.count.dtype == jnp.int32 and int(state.count) == 1
    np.testing.assert_allclose(float(state.step_size), np.sqrt(DELTA / (g @ direction)), rtol=2e-2)


def test_relative_damping_step_has_damped_norm_delta(problem):
    F, g = problem["F"], problem["g"]
    opt = npg(DELTA, rel_damping=0.1)
    updates, _ = jax.jit(opt.update)(problem["grads"], opt.init(problem["params"]),
                                     scores=problem["scores"])
    step = flat(updates)
    M = F + 0.1 * np.linalg.eigvalsh(F).max() * np.eye(len(F))
    np.testing.assert_allclose(step @ M @ step, DELTA, rtol=1e-3)
    direction = np.linalg.solve(M, g)
    np.testing.assert_allclose(step, np.sqrt(DELTA / (g @ direction)) * direction, rtol=1e-3,
                               atol=1e-4 * np.abs(step).max())


@pytest.mark.parametrize("operator", ["scores", "fvp"])
def test_cg_mode_matches_damped_solve(problem, operator):
    F, g = problem["F"], problem["g"]
    damping = 1e-2
    opt = npg(DELTA, fisher="cg", damping=damping, cg_maxiter=len(g))
    extra = dict(scores=problem["scores"])
    if operator == "scores":
        updates, state = jax.jit(opt.update)(problem["grads"], opt.init(problem["params"]), **extra)
    else:
        @jax.jit
        def update(grads, params, obs, actions):
            fvp = fisher_operator(problem["pi"].log_prob, params, obs, actions)
            return opt.update(grads, opt.init(params), fvp=fvp)

        updates, state = update(problem["grads"], problem["params"], problem["obs"],
                                problem["actions"])
    step = flat(updates)
    M = F + damping * np.eye(len(F))
    direction = np.linalg.solve(M, g)
    np.testing.assert_allclose(step, np.sqrt(DELTA / (g @ direction)) * direction, rtol=2e-3,
                               atol=2e-4 * np.abs(step).max())
    np.testing.assert_allclose(step @ M @ step, DELTA, rtol=1e-3)
    assert 0 < int(state.solver_steps) <= len(g)


def test_composes_with_optax_chain_and_extra_args(problem):
    base = npg(DELTA, rel_damping=0.1)
    # clip_by_global_norm with a huge bound is the identity; the chain must forward scores
    # to npg and ignore npg's unknown extra args elsewhere.
    chained = optax.chain(optax.clip_by_global_norm(1e9), base, optax.scale(2.0))
    u1, _ = jax.jit(base.update)(problem["grads"], base.init(problem["params"]),
                                 scores=problem["scores"])
    u2, _ = jax.jit(chained.update)(problem["grads"], chained.init(problem["params"]),
                                    problem["params"], scores=problem["scores"], value=1.0)
    np.testing.assert_allclose(flat(u2), 2.0 * flat(u1), rtol=1e-5, atol=1e-7)
    new = optax.apply_updates(problem["params"], u1)
    np.testing.assert_allclose(flat(new) - flat(problem["params"]), flat(u1), atol=1e-6)


def test_vmap_over_problems_equals_loop():
    problems = [make_problem(s, T=24) for s in (1, 2, 3)]  # one compile (same shapes)
    opt = npg(DELTA, rel_damping=0.05)
    stack = lambda i: jax.tree.map(lambda *xs: jnp.stack(xs), *[p[i] for p in problems])
    params, scores, grads = stack(1), stack(5), stack(6)

    def one(g, s, p):
        return opt.update(g, opt.init(p), p, scores=s)

    batched, states = jax.jit(jax.vmap(one))(grads, scores, params)
    one_jit = jax.jit(one)
    for i, p in enumerate(problems):
        single, st = one_jit(p[6], p[5], p[1])
        np.testing.assert_allclose(flat(jax.tree.map(lambda x: x[i], batched)), flat(single),
                                   rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(states.step_size[i], st.step_size, rtol=1e-4)


def compiled_once(opt):
    """`opt.update` under jit; a second trace fails the test."""

    @jax.jit
    @chex.assert_max_traces(n=1)
    def update(grads, state, params, scores):
        return opt.update(grads, state, params, scores=scores)

    return update


def test_second_update_does_not_retrace(problem):
    opt = npg(DELTA, rel_damping=0.1)
    update = compiled_once(opt)
    state = opt.init(problem["params"])
    updates, state = update(problem["grads"], state, problem["params"], problem["scores"])
    grads2 = jax.tree.map(lambda x: 0.5 * x, problem["grads"])
    updates, state = update(grads2, state, problem["params"], problem["scores"])
    assert int(state.count) == 2
    assert isinstance(state, NPGState)
    assert state.count.dtype == jnp.int32 and state.step_size.dtype == jnp.float32


def test_zero_gradient_and_nan_scores_give_zero_step(problem):
    opt = npg(DELTA)
    update = jax.jit(lambda g, s: opt.update(g, opt.init(problem["params"]), scores=s))
    zero = jax.tree.map(jnp.zeros_like, problem["grads"])
    updates, state = update(zero, problem["scores"])
    assert np.all(flat(updates) == 0) and float(state.step_size) == 0
    bad = jax.tree.map(lambda s: s.at[0].set(jnp.nan), problem["scores"])
    updates, _ = update(problem["grads"], bad)
    assert np.all(flat(updates) == 0)


@pytest.mark.parametrize("delta", [0.0, -0.1, float("nan"), float("inf"), np.float32(-0.1),
                                   jnp.float32(0.0), "0.1"])
def test_bad_delta_raises(delta):
    with pytest.raises(ValueError, match="delta"):
        npg(delta)


def test_bad_configuration_raises():
    with pytest.raises(ValueError, match="fisher"):
        npg(0.01, fisher="kfac")
    with pytest.raises(ValueError, match="rel_damping"):
        npg(0.01, fisher="cg", rel_damping=0.1)
    with pytest.raises(ValueError, match="damping"):
        npg(0.01, damping=-1.0)
    for name in ("damping", "rel_damping", "rtol", "cg_tol"):
        with pytest.raises(ValueError, match=name):
            npg(0.01, **{name: np.float32(-1)})
    with pytest.raises(ValueError, match="cg_maxiter"):
        npg(0.01, fisher="cg", cg_maxiter=0)
    with pytest.raises(ValueError, match="method"):
        npg(0.01, method="lu")


def test_bad_scores_raise(problem):
    opt = npg(DELTA)
    state = opt.init(problem["params"])
    with pytest.raises(ValueError, match="scores"):
        opt.update(problem["grads"], state)
    wrong = jax.tree.map(lambda s: s[:, :1], problem["scores"])  # wrong parameter shapes
    with pytest.raises(ValueError, match="scores"):
        opt.update(problem["grads"], state, scores=wrong)
    with pytest.raises(ValueError, match="fvp"):
        opt.update(problem["grads"], state, fvp=lambda v: v)


def test_mismatched_score_and_advantage_lengths_raise(problem):
    with pytest.raises(ValueError, match="advantages"):
        score_gradient(problem["scores"], jnp.ones(T + 1))
    with pytest.raises(ValueError, match="advantages"):
        score_gradient(problem["scores"], jnp.ones((T, 1)))


# ------------------------------------------------- edges fail loudly (issue 9)

EPS32 = float(np.finfo(np.float32).eps)


def fisher_norm(problem, updates):
    step = flat(updates)
    return step @ problem["F"] @ step


def test_numpy_and_jax_scalar_hyperparameters_are_accepted(problem):
    base = npg(DELTA, rel_damping=0.1)
    ref, _ = base.update(problem["grads"], base.init(problem["params"]), scores=problem["scores"])
    for delta, rel in ((np.float32(DELTA), np.float64(0.1)), (jnp.float32(DELTA), jnp.float32(0.1))):
        opt = npg(delta, rel_damping=rel, cg_maxiter=np.int64(5))
        got, _ = opt.update(problem["grads"], opt.init(problem["params"]), scores=problem["scores"])
        np.testing.assert_allclose(flat(got), flat(ref), rtol=100 * EPS32,
                                   atol=100 * EPS32 * np.abs(flat(ref)).max())


def test_integer_gradients_and_scores_are_promoted(problem):
    # Integers made the update exactly zero (the natural direction cast back to int).
    opt = npg(0.5)
    G = jnp.array([[1, 0], [0, 2], [1, 1]])
    grads = jnp.array([-1, -1])
    updates, state = opt.update(grads, opt.init(jnp.zeros(2)), scores=G)
    expected, _ = opt.update(grads.astype(float), opt.init(jnp.zeros(2)),  # the default float
                             scores=G.astype(float))
    assert jnp.issubdtype(updates.dtype, jnp.floating)
    np.testing.assert_array_equal(updates, expected)
    Gf = np.asarray(G, np.float64)
    step = np.asarray(updates, np.float64)
    np.testing.assert_allclose(step @ (Gf.T @ Gf / 3) @ step, 0.5, rtol=100 * EPS32)
    assert float(state.step_size) > 0


def test_inject_hyperparams_delta_changes_the_step_without_recompiling(problem):
    opt = optax.inject_hyperparams(npg)(delta=DELTA, rel_damping=0.1)
    update = compiled_once(opt)
    state = opt.init(problem["params"])
    u1, state = update(problem["grads"], state, problem["params"], problem["scores"])
    state.hyperparams["delta"] = jnp.asarray(4 * DELTA, state.hyperparams["delta"].dtype)
    u2, state = update(problem["grads"], state, problem["params"], problem["scores"])
    # The same direction, sqrt(4) = 2 times longer: step^T M step follows delta.
    np.testing.assert_allclose(flat(u2), 2 * flat(u1), rtol=10 * EPS32,
                               atol=10 * EPS32 * np.abs(flat(u2)).max())
    direct, _ = npg(4 * DELTA, rel_damping=0.1).update(
        problem["grads"], npg(DELTA).init(problem["params"]), scores=problem["scores"])
    np.testing.assert_allclose(flat(u2), flat(direct), rtol=100 * EPS32,
                               atol=100 * EPS32 * np.abs(flat(u2)).max())
    # A traced non-positive delta gives a zero step, never NaN.
    state.hyperparams["delta"] = jnp.zeros_like(state.hyperparams["delta"])
    u3, state = update(problem["grads"], state, problem["params"], problem["scores"])
    np.testing.assert_array_equal(flat(u3), 0.0)


def test_inject_hyperparams_with_cg_and_a_delta_schedule(problem):
    schedule = optax.linear_schedule(DELTA, 4 * DELTA, transition_steps=1)
    for opt in (optax.inject_hyperparams(npg)(delta=schedule, fisher="cg", damping=1e-2),
                npg(schedule, fisher="cg", damping=1e-2)):
        update = jax.jit(lambda g, s, p: opt.update(g, s, p, scores=problem["scores"]))
        state = opt.init(problem["params"])
        norms = []
        for _ in range(2):
            updates, state = update(problem["grads"], state, problem["params"])
            step = flat(updates)
            M = problem["F"] + 1e-2 * np.eye(len(step))
            norms.append(step @ M @ step)
        # The CG solve is truncated (10 steps), so step^T M step is near, not at, delta.
        np.testing.assert_allclose(norms[1] / norms[0], 4.0, rtol=1e3 * EPS32)
    # rel_damping cannot reach CG: a traced non-zero value rejects the step.
    opt = optax.inject_hyperparams(npg)(delta=DELTA, fisher="cg", rel_damping=0.0)
    state = opt.init(problem["params"])
    state.hyperparams["rel_damping"] = jnp.asarray(0.1, state.hyperparams["rel_damping"].dtype)
    updates, _ = jax.jit(lambda g, s, p: opt.update(g, s, p, scores=problem["scores"]))(
        problem["grads"], state, problem["params"])
    np.testing.assert_array_equal(flat(updates), 0.0)


def test_empty_inputs_raise_naming_the_argument(problem):
    opt = npg(DELTA)
    state = opt.init(problem["params"])
    with pytest.raises(ValueError, match="updates must hold at least one parameter"):
        opt.update(jnp.zeros(0), state, scores=jnp.zeros((3, 0)))
    empty = jax.tree.map(lambda s: s[:0], problem["scores"])
    with pytest.raises(ValueError, match="scores must hold at least one sample"):
        opt.update(problem["grads"], state, scores=empty)  # an IndexError before
    with pytest.raises(ValueError, match="scores must hold at least one sample"):
        opt.update(jnp.ones(2), state, scores=jnp.zeros((0, 2)))


def test_a_wrong_but_finite_cg_solve_cannot_take_a_long_step():
    # A non-symmetric "Fisher" stands in for a miscomputed product (as jaxlib 0.10.2 gave):
    # CG's x then has x^T M x far above g^T x, and normalizing by g^T x alone would step far
    # past the trust region. The guard normalizes by the larger of the two.
    A = jnp.array([[1.0, 30.0], [-30.0, 1.0]])
    grads = jnp.array([-1.0, -0.5])  # descent convention: the ascent direction is -grads
    opt = npg(DELTA, fisher="cg", cg_maxiter=2)
    updates, state = jax.jit(lambda g: opt.update(g, opt.init(g), fvp=lambda v: A @ v))(grads)
    step = -np.asarray(updates, np.float64)
    An = np.asarray(A, np.float64)
    assert 0 < step @ An @ step <= DELTA * (1 + 1e-5)
    x = step / float(state.step_size)  # the CG solution of M x = grads
    unguarded = np.sqrt(DELTA / (np.asarray(grads, np.float64) @ x)) * x
    assert unguarded @ An @ unguarded > 1.5 * DELTA  # what the guard prevents here
