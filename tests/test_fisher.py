"""Fisher assembly, clipped inverse and natural gradients against independent oracles."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxctl import (
    clipped_inverse,
    fisher_matrix,
    fisher_operator,
    fisher_vector_product,
    mlp_apply,
    mlp_init,
    natural_gradient,
    normalized_step,
    per_sample_grads,
    ravel_per_sample,
)
from jaxctl.core.lanczos import largest_eigenvalue

# ---------------------------------------------------------------- policies


def categorical_log_prob(params, s, a):
    return jax.nn.log_softmax(mlp_apply(params, s))[a]


def categorical_kl(p_params, q_params, s):
    lp = jax.nn.log_softmax(mlp_apply(p_params, s))
    lq = jax.nn.log_softmax(mlp_apply(q_params, s))
    return jnp.sum(jnp.exp(lp) * (lp - lq))


def gaussian_log_prob(params, s, a):
    mean = mlp_apply(params["mean"], s)
    log_std = params["log_std"]
    z = (a - mean) / jnp.exp(log_std)
    return jnp.sum(-0.5 * z**2 - log_std - 0.5 * jnp.log(2 * jnp.pi))


def gaussian_kl(p_params, q_params, s):
    mp, mq = mlp_apply(p_params["mean"], s), mlp_apply(q_params["mean"], s)
    lp, lq = p_params["log_std"], q_params["log_std"]
    return jnp.sum(lq - lp + (jnp.exp(2 * lp) + (mp - mq) ** 2) / (2 * jnp.exp(2 * lq)) - 0.5)


def sample_categorical(params, s, key):
    return jax.random.categorical(key, mlp_apply(params, s))


def sample_gaussian(params, s, key):
    mean = mlp_apply(params["mean"], s)
    return mean + jnp.exp(params["log_std"]) * jax.random.normal(key, mean.shape)


def exact_fisher(kl, params, states):
    """Hessian of the mean KL(pi_theta || pi_theta') in theta' at theta' = theta."""
    flat, unravel = ravel_pytree(params)
    mean_kl = lambda q: jnp.mean(jax.vmap(lambda s: kl(params, unravel(q), s))(states))
    return jax.hessian(mean_kl)(flat)


@functools.partial(jax.jit, static_argnums=(0, 1, 4))
def sampled_fisher(log_prob, sampler, params, states, per_state, key):
    keys = jax.random.split(key, states.shape[0] * per_state)
    S = jnp.repeat(states, per_state, axis=0)
    A = jax.vmap(lambda s, k: sampler(params, s, k))(S, keys)
    G, _ = ravel_per_sample(per_sample_grads(log_prob, params, S, A))
    return fisher_matrix(G)


POLICIES = {
    "categorical": (
        lambda k: mlp_init(k, (3, 6, 4)), categorical_log_prob, categorical_kl, sample_categorical,
    ),
    "gaussian": (
        lambda k: {"mean": mlp_init(k, (3, 6, 2)), "log_std": jnp.array([-0.3, 0.2])},
        gaussian_log_prob, gaussian_kl, sample_gaussian,
    ),
}


@pytest.mark.parametrize("kind", sorted(POLICIES))
def test_sampled_fisher_converges_to_kl_hessian(kind):
    init, log_prob, kl, sampler = POLICIES[kind]
    params = init(jax.random.PRNGKey(1))
    states = jax.random.normal(jax.random.PRNGKey(2), (5, 3))
    F_exact = exact_fisher(kl, params, states)
    errors = []
    for per_state, seed in ((250, 3), (16_000, 4)):
        F = sampled_fisher(log_prob, sampler, params, states, per_state, jax.random.PRNGKey(seed))
        errors.append(float(jnp.linalg.norm(F - F_exact) / jnp.linalg.norm(F_exact)))
    # Monte-Carlo error ~ 1/sqrt(N): 64x the samples should shrink it ~8x.
    assert errors[1] < 0.06, errors
    assert errors[1] < errors[0] / 3, errors


# ----------------------------------------------------------- clipped inverse


def psd_with_rounding_noise(seed, n, rank):
    """PSD matrix of given rank plus tiny negative and positive 'rounding' eigenvalues."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    eigs = np.zeros(n)
    eigs[:rank] = np.geomspace(10.0, 1e-3, rank)
    eigs[rank:] = rng.uniform(-1e-7, 1e-7, n - rank)  # DeWolf's (2018) tiny negatives
    return (Q * eigs) @ Q.T


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clipped_inverse_matches_numpy_pinv_with_same_cutoff(seed):
    F = psd_with_rounding_noise(seed, 12, 7)
    got = np.asarray(clipped_inverse(jnp.asarray(F), rtol=1e-6), np.float64)
    expected = np.linalg.pinv(F, rcond=1e-6, hermitian=True)
    assert np.all(np.isfinite(got))
    assert np.linalg.eigvalsh(0.5 * (got + got.T)).min() > -1e-3  # PSD up to float32 rounding
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-3 * np.abs(expected).max())


def test_clipped_inverse_of_nonfinite_or_zero_matrix_is_zero():
    np.testing.assert_array_equal(clipped_inverse(jnp.full((3, 3), jnp.nan)), 0.0)
    np.testing.assert_array_equal(clipped_inverse(jnp.zeros((3, 3))), 0.0)


def test_fisher_matrix_weights_and_products_match_dense():
    rng = np.random.default_rng(0)
    G = jnp.asarray(rng.standard_normal((9, 5)), jnp.float32)
    w = jnp.asarray(rng.uniform(0.1, 2.0, 9), jnp.float32)
    v = jnp.asarray(rng.standard_normal(5), jnp.float32)
    Gn = np.asarray(G, np.float64)
    np.testing.assert_allclose(fisher_matrix(G, w), Gn.T @ np.diag(np.asarray(w)) @ Gn / 9, rtol=1e-5)
    np.testing.assert_allclose(fisher_vector_product(G, v, damping=0.3),
                               (Gn.T @ Gn / 9 + 0.3 * np.eye(5)) @ np.asarray(v), rtol=1e-5)


def test_matrix_free_operator_matches_score_matrix_product():
    init, log_prob, _, sampler = POLICIES["gaussian"]
    params = init(jax.random.PRNGKey(5))
    states = jax.random.normal(jax.random.PRNGKey(6), (40, 3))
    keys = jax.random.split(jax.random.PRNGKey(7), 40)
    actions = jax.vmap(lambda s, k: sampler(params, s, k))(states, keys)
    G, unravel = ravel_per_sample(per_sample_grads(log_prob, params, states, actions))
    v_flat = jax.random.normal(jax.random.PRNGKey(8), (G.shape[1],))
    fvp = jax.jit(lambda v: fisher_operator(log_prob, params, states, actions, damping=0.01)(v))
    got = ravel_pytree(fvp(unravel(v_flat)))[0]
    np.testing.assert_allclose(got, fisher_vector_product(G, v_flat, damping=0.01), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------- natural gradient


def reference_natural_gradient(G, g, rtol, damping=0.0):
    """float64 numpy: eigenvalue-clipped pseudo-inverse (or damped inverse) of G^T G / T.

    Built from the float64 SVD of G (eigenvalues s^2 / T, eigenvectors V);
    the complement of G's row space has eigenvalue 0.
    """
    G = np.asarray(G, np.float64)
    g = np.asarray(g, np.float64)
    _, s, Vt = np.linalg.svd(G, full_matrices=False)
    e = s**2 / G.shape[0]
    e = np.where(e > rtol * e.max(), e, 0.0)
    c = np.where(e + damping > 0, 1.0 / np.where(e + damping > 0, e + damping, 1.0), 0.0)
    inside = Vt.T @ (c * (Vt @ g))
    outside = g - Vt.T @ (Vt @ g)
    return inside + (outside / damping if damping > 0 else 0.0)


def cosine(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return a @ b / (np.linalg.norm(a) * np.linalg.norm(b))


@pytest.mark.parametrize("shape", [(30, 50), (80, 20)], ids=["T<P", "T>P"])
@pytest.mark.parametrize("damping", [0.0, 0.05])
def test_all_methods_agree_with_dense_reference(shape, damping):
    T, P = shape
    rng = np.random.default_rng(T)
    G = jnp.asarray(rng.standard_normal((T, P)), jnp.float32)
    g = G.T @ jnp.asarray(rng.standard_normal(T), jnp.float32) / T
    expected = reference_natural_gradient(G, g, 1e-6, damping)
    for method in ("eigh", "gram", "svd", "qr", "cg", "auto") + (("chol",) if damping else ()):
        got = natural_gradient(G, g, damping=damping, method=method, maxiter=300, tol=1e-7)
        np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-3 * np.abs(expected).max(),
                                   err_msg=method)


def test_relative_damping_uses_largest_eigenvalue():
    rng = np.random.default_rng(3)
    G = jnp.asarray(rng.standard_normal((25, 10)), jnp.float32)
    g = jnp.asarray(rng.standard_normal(10), jnp.float32)
    top = np.linalg.eigvalsh(np.asarray(G, np.float64).T @ np.asarray(G, np.float64) / 25).max()
    expected = reference_natural_gradient(G, g, 1e-6, 0.1 * top)
    for method in ("eigh", "gram", "svd", "qr", "chol"):
        np.testing.assert_allclose(natural_gradient(G, g, rel_damping=0.1, method=method),
                                   expected, rtol=1e-3, atol=1e-4, err_msg=method)
    with pytest.raises(ValueError, match="rel_damping"):
        natural_gradient(G, g, rel_damping=0.1, method="cg")


def continuous_score_matrix(seed, T, P):
    """Scores whose Fisher eigenvalues fall evenly (in log) from 1 through the 1e-6 cut to 1e-9."""
    rng = np.random.default_rng(seed)
    k = min(T, P)
    U, _ = np.linalg.qr(rng.standard_normal((T, k)))
    V, _ = np.linalg.qr(rng.standard_normal((P, k)))
    return (U * np.sqrt(np.geomspace(1.0, 1e-9, k) * T)) @ V.T


@pytest.mark.parametrize("shape", [(120, 300), (300, 120)], ids=["T<P", "T>P"])
def test_float32_accurate_methods_match_float64_direction_across_the_cut(shape):
    """`"qr"` (the default) and `"svd"` resolve eigenvalues down to the 1e-6 cut in float32.

    `"gram"` and `"eigh"` square the condition number; the test checks that
    this spectrum, like real policy scores', is hard enough to show it (their
    cosine falls below 0.999).
    """
    T, P = shape
    G64 = continuous_score_matrix(0, T, P)
    A = np.random.default_rng(1).standard_normal(T)
    G = jnp.asarray(G64, jnp.float32)
    g = G.T @ jnp.asarray(A, jnp.float32) / T
    expected = reference_natural_gradient(G, g, 1e-6)
    for method in ("auto", "qr", "svd"):
        assert cosine(natural_gradient(G, g, method=method), expected) >= 0.999, method
    assert min(cosine(natural_gradient(G, g, method=m), expected) for m in ("gram", "eigh")) < 0.999


def test_float32_default_on_real_policy_scores():
    """The benchmark policy: MLP 4-32-32-2 tanh Gaussian (P = 1,284), T = 200."""
    params = {"mean": mlp_init(jax.random.PRNGKey(0), (4, 32, 32, 2)), "log_std": jnp.zeros(2)}
    states = jax.random.normal(jax.random.PRNGKey(1), (200, 4))
    keys = jax.random.split(jax.random.PRNGKey(2), 200)
    actions = jax.vmap(lambda s, k: sample_gaussian(params, s, k))(states, keys)
    scores = jax.jit(lambda p, s, a: ravel_per_sample(per_sample_grads(gaussian_log_prob, p, s, a))[0])
    G = scores(params, states, actions)
    advantages = jax.random.normal(jax.random.PRNGKey(3), (200,))
    g = G.T @ advantages / 200
    expected = reference_natural_gradient(G, g, 1e-6)
    assert cosine(jax.jit(natural_gradient)(G, g), expected) >= 0.999


@pytest.mark.parametrize("shape", [(120, 300), (300, 120)], ids=["T<P", "T>P"])
def test_cholesky_route_solves_the_damped_problem_across_the_cut(shape):
    """`"chol"` (Woodbury when T < P) against the float64 damped solve, relative damping 1e-3."""
    T, P = shape
    G = jnp.asarray(continuous_score_matrix(2, T, P), jnp.float32)
    g = G.T @ jnp.asarray(np.random.default_rng(3).standard_normal(T), jnp.float32) / T
    G64 = np.asarray(G, np.float64)
    lam = 1e-3 * np.linalg.eigvalsh(G64.T @ G64 / T).max()
    expected = np.linalg.solve(G64.T @ G64 / T + lam * np.eye(P), np.asarray(g, np.float64))
    got = jax.jit(lambda G, g: natural_gradient(G, g, rel_damping=1e-3, method="chol"))(G, g)
    assert cosine(got, expected) >= 0.9999
    np.testing.assert_allclose(got, expected, atol=1e-3 * np.abs(expected).max())


def test_cholesky_route_needs_a_positive_damping():
    G, g = jnp.eye(3), jnp.ones(3)
    with pytest.raises(ValueError, match="method='chol' needs damping > 0"):
        natural_gradient(G, g, method="chol")
    # A traced damping of 0 at run time: the documented zero direction, never NaN.
    x = jax.jit(lambda d: natural_gradient(G, g, damping=d, method="chol"))(0.0)
    np.testing.assert_array_equal(x, 0.0)


def test_lanczos_largest_eigenvalue_against_eigvalsh():
    rng = np.random.default_rng(4)
    B = rng.standard_normal((60, 90))
    A = jnp.asarray(B @ B.T, jnp.float32)
    top = np.linalg.eigvalsh(B @ B.T).max()
    got = jax.jit(lambda A: largest_eigenvalue(lambda v: A @ v, A[0]))(A)
    np.testing.assert_allclose(got, top, rtol=16 * np.finfo(np.float32).eps * 60)
    # Ritz values approach from below; a 3-step space already comes close, never above.
    rough = float(largest_eigenvalue(lambda v: A @ v, A[0], steps=3))
    assert rough <= top * (1 + 1e-6) and rough > 0.5 * top


def test_nonfinite_scores_give_zero_direction_and_zero_step():
    G = jnp.ones((4, 3)).at[1, 2].set(jnp.nan)
    g = jnp.ones(3)
    for method in ("eigh", "gram", "svd", "qr", "cg"):
        x = natural_gradient(G, g, method=method)
        np.testing.assert_array_equal(x, 0.0)
        step, size = normalized_step(g, x, 0.01)
        np.testing.assert_array_equal(step, 0.0)
        assert float(size) == 0.0


def test_nonfinite_scores_give_zero_direction_with_cholesky_too():
    G = jnp.ones((4, 3)).at[1, 2].set(jnp.nan)
    np.testing.assert_array_equal(natural_gradient(G, jnp.ones(3), damping=0.1, method="chol"), 0.0)


def test_natural_gradient_bad_inputs():
    G = jnp.ones((4, 3))
    with pytest.raises(ValueError, match="G must be"):
        natural_gradient(jnp.ones(3), jnp.ones(3))
    with pytest.raises(ValueError, match=r"g must have shape \(3,\)"):
        natural_gradient(G, jnp.ones(4))
    with pytest.raises(ValueError, match="method"):
        natural_gradient(G, jnp.ones(3), method="lu")
    with pytest.raises(ValueError, match="damping"):
        natural_gradient(G, jnp.ones(3), damping=-1.0)
    with pytest.raises(ValueError, match="weights"):
        fisher_matrix(G, jnp.ones(5))
    with pytest.raises(ValueError, match="square"):
        clipped_inverse(jnp.ones((2, 3)))


# --------------------------------------------------------- normalized step


def test_normalized_step_satisfies_kl_constraint():
    rng = np.random.default_rng(9)
    G = jnp.asarray(rng.standard_normal((40, 15)), jnp.float32)
    g = G.T @ jnp.asarray(rng.standard_normal(40), jnp.float32) / 40
    for delta in (1e-3, 0.05):
        for method in ("qr", "eigh"):
            nat = natural_gradient(G, g, method=method)
            step, size = normalized_step(g, nat, delta)
            F = np.asarray(fisher_matrix(G), np.float64)
            s = np.asarray(step, np.float64)
            np.testing.assert_allclose(s @ F @ s, delta, rtol=1e-3)
            np.testing.assert_allclose(size, np.sqrt(delta / float(g @ nat)), rtol=1e-5)


def test_normalized_step_on_pytrees_and_rank_deficient_fisher():
    # T < P: g in the row space of G, so step^T F step == delta still holds.
    rng = np.random.default_rng(10)
    G = jnp.asarray(rng.standard_normal((6, 20)), jnp.float32)
    g = G.T @ jnp.asarray(rng.standard_normal(6), jnp.float32) / 6
    nat = natural_gradient(G, g)
    tree_step, _ = normalized_step({"a": g[:5], "b": g[5:]}, {"a": nat[:5], "b": nat[5:]}, 0.02)
    s = np.concatenate([tree_step["a"], tree_step["b"]]).astype(np.float64)
    np.testing.assert_allclose(s @ np.asarray(fisher_matrix(G), np.float64) @ s, 0.02, rtol=2e-3)


@pytest.mark.parametrize("nat", [jnp.zeros(3), jnp.array([jnp.nan, 1.0, 1.0]),
                                 jnp.array([-1.0, -1.0, -1.0]), jnp.array([jnp.inf, 0.0, 0.0])],
                         ids=["zero", "nan", "negative", "inf"])
def test_normalized_step_rejects_bad_curvature_with_zero_step(nat):
    step, size = normalized_step(jnp.ones(3), nat, 0.01)
    np.testing.assert_array_equal(step, 0.0)
    assert float(size) == 0.0


def test_normalized_step_under_jit_with_traced_delta_and_bad_static_delta():
    step, size = jax.jit(normalized_step)(jnp.array([2.0]), jnp.array([1.0]), 0.5)
    np.testing.assert_allclose(size, 0.5)
    step, size = jax.jit(normalized_step)(jnp.array([2.0]), jnp.array([1.0]), -0.5)
    assert float(size) == 0.0 and float(step[0]) == 0.0
    with pytest.raises(ValueError, match="delta"):
        normalized_step(jnp.ones(2), jnp.ones(2), 0.0)
    with pytest.raises(ValueError, match="nat_g"):
        normalized_step(jnp.ones(2), jnp.ones(3), 0.1)


# ------------------------------------------------- edges fail loudly (issue 9)

METHODS = ("eigh", "gram", "svd", "qr", "cg")
EPS32 = float(np.finfo(np.float32).eps)
NEGATIVE = [np.float32(-1), np.float64(-1), jnp.float32(-1), -1, float("nan")]


@pytest.mark.parametrize("value", NEGATIVE, ids=["np32", "np64", "jax", "int", "nan"])
def test_negative_damping_of_any_scalar_type_is_rejected(value):
    G = jnp.ones((4, 3))
    for method in METHODS:
        with pytest.raises(ValueError, match="damping"):
            natural_gradient(G, jnp.ones(3), damping=value, method=method)
        with pytest.raises(ValueError, match="rel_damping"):
            natural_gradient(G, jnp.ones(3), rel_damping=value, method=method)
    with pytest.raises(ValueError, match="rtol"):
        natural_gradient(G, jnp.ones(3), rtol=value)
    with pytest.raises(ValueError, match="damping"):
        fisher_vector_product(G, jnp.ones(3), damping=value)
    with pytest.raises(ValueError, match="damping"):
        fisher_operator(lambda w, x: x @ w, jnp.zeros(3), G, damping=value)


def test_numpy_scalar_hyperparameters_are_accepted_and_traced_ones_pass():
    rng = np.random.default_rng(4)
    G = jnp.asarray(rng.standard_normal((20, 6)), jnp.float32)
    g = G.T @ jnp.asarray(rng.standard_normal(20), jnp.float32) / 20
    expected = reference_natural_gradient(G, g, 1e-6, 0.05)
    # cond(F + 0.05 I) is ~ 50 here: 1000 eps covers it with room for the float32 solve.
    tol = dict(rtol=1000 * EPS32, atol=1000 * EPS32 * float(np.abs(expected).max()))
    np.testing.assert_allclose(natural_gradient(G, g, damping=np.float32(0.05)), expected, **tol)
    np.testing.assert_allclose(natural_gradient(G, g, rel_damping=np.float64(0.0), method="cg",
                                                damping=0.05, maxiter=50, tol=1e-7), expected, **tol)
    # rtol and the dampings traced under jit (a TracerBoolConversionError before).
    traced = jax.jit(lambda r, d: natural_gradient(G, g, rtol=r, damping=d))(1e-6, 0.05)
    np.testing.assert_allclose(traced, expected, **tol)
    np.testing.assert_allclose(jax.jit(clipped_inverse)(jnp.diag(jnp.array([2.0, 1e-9])), 1e-6),
                               np.diag([0.5, 0.0]))
    # A traced non-zero rel_damping cannot be honoured by CG: a zero direction, not a wrong one.
    x = jax.jit(lambda r: natural_gradient(G, g, rel_damping=r, method="cg"))(0.1)
    np.testing.assert_array_equal(x, 0.0)


def test_integer_inputs_are_promoted_to_float():
    G = jnp.array([[1, 0], [0, 2], [1, 1]])
    g = jnp.array([1, 1])
    for method in METHODS:  # promotion first: the very same float computation
        np.testing.assert_array_equal(
            natural_gradient(G, g, method=method, maxiter=10),
            natural_gradient(G.astype(float), g.astype(float), method=method,
                             maxiter=10), err_msg=method)
    np.testing.assert_allclose(fisher_vector_product(G, g), [1.0, 2.0], rtol=4 * EPS32)
    np.testing.assert_allclose(fisher_matrix(G)[1, 1], 5 / 3, rtol=4 * EPS32)
    # The normalized step in integers truncated to [0]; sqrt(0.5 / 2) * 1 = 0.5.
    step, size = normalized_step(jnp.array([2]), jnp.array([1]), 0.5)
    np.testing.assert_allclose(step, [0.5])
    np.testing.assert_allclose(size, 0.5)
    fvp = fisher_operator(lambda w, x: x @ w, jnp.zeros(2, jnp.int32), jnp.eye(2))
    np.testing.assert_allclose(fvp(jnp.array([1, 2])), [0.5, 1.0], rtol=4 * EPS32)


def test_normalized_step_accepts_numpy_and_jax_scalar_delta():
    for delta in (np.float32(0.5), jnp.float32(0.5), np.float64(0.5)):
        _, size = normalized_step(jnp.array([2.0]), jnp.array([1.0]), delta)
        np.testing.assert_allclose(size, 0.5)
    for delta in (np.float32(-0.5), jnp.float32(0.0), np.inf):
        with pytest.raises(ValueError, match="delta"):
            normalized_step(jnp.array([2.0]), jnp.array([1.0]), delta)


def test_fisher_operator_rejects_vector_log_prob():
    with pytest.raises(ValueError, match="log_prob must return a scalar"):
        fisher_operator(lambda w, x: x * w, jnp.zeros(2), jnp.eye(2))(jnp.ones(2))


def test_empty_inputs_raise_naming_the_argument():
    with pytest.raises(ValueError, match="G must have T >= 1"):
        natural_gradient(jnp.zeros((0, 2)), jnp.zeros(2))
    with pytest.raises(ValueError, match="G must have T >= 1 rows and P >= 1"):
        natural_gradient(jnp.zeros((3, 0)), jnp.zeros(0))
    with pytest.raises(ValueError, match="F must be a square"):
        clipped_inverse(jnp.zeros((0, 0)))
    with pytest.raises(ValueError, match="samples must hold at least one sample"):
        fisher_operator(lambda w, x: x @ w, jnp.zeros(2), jnp.zeros((0, 2)))
