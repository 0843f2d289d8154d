"""The model-FLOP counter of the benchmark suite against hand counts."""

import jax
import jax.numpy as jnp
import pytest

from jaxctl.apps.flops import model_flops

A = jnp.ones((8, 8))


def test_loops_count_their_bodies_times_their_trips():
    mm = 2 * 8 ** 3
    assert model_flops(lambda a: jax.lax.scan(lambda x, _: (x @ a, None), a, None, length=7)[0], A) == 7 * mm
    assert model_flops(lambda a: jax.lax.fori_loop(0, 5, lambda i, x: x @ a, a), A, while_trips=5) == 5 * mm

    def two_loops(a):
        x = jax.lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, c[1] @ a), (0, a))[1]
        return jax.lax.while_loop(lambda c: c[0] < 2, lambda c: (c[0] + 1, c[1] @ c[1] @ a), (0, x))[1]

    assert model_flops(two_loops, A, while_trips=(3, 2)) == 3 * mm + 2 * 2 * mm


def test_batched_products_gradients_and_convolutions():
    assert model_flops(lambda a, b: jnp.einsum("bij,bjk->bik", a, b),
                       jnp.ones((3, 4, 5)), jnp.ones((3, 5, 6))) == 2 * 3 * 4 * 5 * 6
    # the gradient of tanh(a @ a) summed: the forward product and two transposed ones
    assert model_flops(jax.grad(lambda a: jnp.sum(jnp.tanh(a @ a))), A) == 3 * 2 * 8 ** 3
    x, k = jnp.ones((1, 6, 6, 3)), jnp.ones((3, 3, 3, 4))
    conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert model_flops(conv, x, k) == 2 * 6 * 6 * 4 * 27


@pytest.mark.parametrize("fn, expected", [
    (lambda a: jnp.linalg.qr(a, mode="r"), 2 * 10 * 4 ** 2 - 2 * 4 ** 3 / 3),
    (lambda a: jnp.linalg.qr(a), 2 * (2 * 10 * 4 ** 2 - 2 * 4 ** 3 / 3)),
    (lambda a: jnp.linalg.svd(a, full_matrices=False), 4 * 10 * 4 ** 2 + 22 * 4 ** 3),
])
def test_dense_factorisations_use_the_textbook_counts(fn, expected):
    assert model_flops(fn, jnp.ones((10, 4))) == pytest.approx(expected)
