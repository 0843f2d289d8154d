"""Layered RNN with a plant in the loop: a numpy loop oracle, exact closed-loop gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxctl.models.rnn import rnn_apply, rnn_init, rnn_spec

CONNS = {0: [1, 2], 1: [2], 2: [3]}


def plant(s, u):
    """Nonlinear 2-state plant: position / velocity with a state-dependent input gain."""
    return jnp.stack([s[0] + 0.1 * s[1], 0.95 * s[1] + 0.2 * jnp.tanh(s[0]) * u[0] + 0.1 * u[1]])


def plant_np(s, u):
    return np.array([s[0] + 0.1 * s[1], 0.95 * s[1] + 0.2 * np.tanh(s[0]) * u[0] + 0.1 * u[1]])


def numpy_rollout(params, x, s0):
    """The forward pass of `hessianfree.RNNet` (DeWolf 2016), written out as a plain loop
    (layers 1, 2 recurrent, tanh)."""
    p = jax.tree.map(np.asarray, params)
    h1_prev = h2_prev = None
    s, us, states = np.asarray(s0), [], []
    for t in range(x.shape[0]):
        a0 = np.concatenate([x[t], s])
        r1 = p["h0"]["1"] if t == 0 else h1_prev @ p["rec"]["1"]
        r2 = p["h0"]["2"] if t == 0 else h2_prev @ p["rec"]["2"]
        h1 = np.tanh(a0 @ p["w"]["0->1"] + p["b"]["1"] + r1)
        h2 = np.tanh(a0 @ p["w"]["0->2"] + h1 @ p["w"]["1->2"] + p["b"]["2"] + r2)
        u = h2 @ p["w"]["2->3"] + p["b"]["3"]
        s = plant_np(s, u)
        us.append(u)
        states.append(s)
        h1_prev, h2_prev = h1, h2
    return np.array(us), np.array(states)


@pytest.fixture(scope="module")
def net():
    spec = rnn_spec([3, 6, 5, 2], conns=CONNS, recurrent=[1, 2], plant=plant)
    params = rnn_init(jax.random.PRNGKey(0), spec, recurrent_scale=0.9)
    params["h0"] = {k: 0.1 * jnp.arange(v.size, dtype=v.dtype) / v.size
                    for k, v in params["h0"].items()}
    params["b"] = {k: 0.05 * jnp.ones_like(v) for k, v in params["b"].items()}
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 7, 1))
    s0 = jax.random.normal(jax.random.PRNGKey(2), (4, 2))
    return spec, params, x, s0


def test_rollout_matches_numpy_loop_and_vmap(net):
    spec, params, x, s0 = net
    out = jax.jit(jax.vmap(lambda xi, si: rnn_apply(spec, params, xi, si, return_hidden=True)))(x, s0)
    assert out.outputs.shape == (4, 7, 2) and out.plant_states.shape == (4, 7, 2)
    assert [h.shape for h in out.hidden] == [(4, 7, 6), (4, 7, 5)]
    for i in range(4):
        us, states = numpy_rollout(params, np.asarray(x[i]), np.asarray(s0[i]))
        np.testing.assert_allclose(out.outputs[i], us, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out.plant_states[i], states, rtol=1e-5, atol=1e-5)


def _final_loss(spec, x, s0):
    def loss(params):
        states = jax.vmap(lambda xi, si: rnn_apply(spec, params, xi, si).plant_states)(x, s0)
        return 0.5 * jnp.mean(jnp.sum((states[:, -1] - jnp.array([1.0, 0.0])) ** 2, -1))
    return loss


def test_closed_loop_gradient_matches_finite_differences(net):
    """Exact through plant and feedback; holding the fed-back state constant is not."""
    spec, params, x, s0 = net
    with jax.enable_x64(True):
        p64, x64, s64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), (params, x, s0))
        flat, unravel = ravel_pytree(p64)
        loss = _final_loss(spec, x64, s64)
        # the hessianfree library's closed loop: the state fed back is a constant input
        cached = rnn_spec(spec.sizes, conns=CONNS, recurrent=[1, 2], plant=plant,
                          observe=lambda s: jax.lax.stop_gradient(s))
        loss_cached = _final_loss(cached, x64, s64)
        dirs = jax.random.normal(jax.random.PRNGKey(3), (3, flat.size), jnp.float64)

        @jax.jit
        def directional(flat, d):
            eps = 1e-6
            fd = (loss(unravel(flat + eps * d)) - loss(unravel(flat - eps * d))) / (2 * eps)
            g = ravel_pytree(jax.grad(loss)(unravel(flat)))[0] @ d
            g_cached = ravel_pytree(jax.grad(loss_cached)(unravel(flat)))[0] @ d
            return fd, g, g_cached

        for d in dirs:
            fd, g, g_cached = directional(flat, d)
            np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-9)
            assert abs(g_cached - fd) > 1e-3 * abs(fd)


def test_without_plant_and_without_inputs():
    spec = rnn_spec([1, 10, 1], "logistic")
    assert spec.activations == ("linear", "logistic", "linear") and spec.recurrent == (1,)
    params = rnn_init(jax.random.PRNGKey(4), spec)
    out = rnn_apply(spec, params, jnp.ones((5, 1)))
    assert out.outputs.shape == (5, 1) and out.plant_states is None and out.hidden is None
    # The network may see only the plant state (the hessianfree `plant` demo).
    spec_p = rnn_spec([2, 4, 2], plant=plant)
    out = rnn_apply(spec_p, rnn_init(jax.random.PRNGKey(5), spec_p), None, jnp.zeros(2), length=3)
    assert out.plant_states.shape == (3, 2)


def test_pytree_plant_state_and_custom_observe():
    def plant_tree(s, u):
        return {"q": s["q"] + 0.1 * s["dq"], "dq": s["dq"] + 0.1 * u}

    spec = rnn_spec([4, 8, 2], plant=plant_tree)
    params = rnn_init(jax.random.PRNGKey(6), spec)
    s0 = {"q": jnp.ones(2), "dq": jnp.zeros(2)}
    out = rnn_apply(spec, params, None, s0, length=4)
    assert out.plant_states["q"].shape == (4, 2)
    spec_q = rnn_spec([2, 8, 2], plant=plant_tree, observe=lambda s: s["q"])
    assert rnn_apply(spec_q, rnn_init(jax.random.PRNGKey(6), spec_q), None, s0,
                     length=4).outputs.shape == (4, 2)


def test_arm_plant_fits():
    arm = pytest.importorskip("jaxctl.envs.arm")
    spec = rnn_spec([8, 16, 16, 2], conns={0: [1, 2], 1: [2], 2: [3]}, recurrent=[1, 2],
                    plant=lambda s, u: arm.step(s, u))
    params = rnn_init(jax.random.PRNGKey(7), spec, scale=0.1)
    s0 = jnp.array([*arm.Q0, 0.0, 0.0], jnp.float32)
    target = jnp.tile(jnp.array([0.9, 1.7, 0.0, 0.0]), (10, 1))

    def loss(p):
        out = rnn_apply(spec, p, target, s0)
        return jnp.sum((out.plant_states[-1] - target[-1]) ** 2) + 1e-4 * jnp.sum(out.outputs**2)

    g = jax.jit(jax.grad(loss))(params)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(g))
    assert float(jnp.abs(g["w"]["2->3"]).max()) > 0


@pytest.mark.parametrize("kwargs, match", [
    (dict(sizes=[2, 3], conns={1: [0]}), "lower to a higher"),
    (dict(sizes=[2, 3, 1], conns={0: [1]}), "without input"),
    (dict(sizes=[2, 3, 1], recurrent=[0]), "recurrent"),
    (dict(sizes=[2, 3, 1], activations="cube"), "activations"),
    (dict(sizes=[2, 3, 1], activations=["tanh", "tanh"]), "one nonlinearity per layer"),
    (dict(sizes=[2, 3, 1], observe=lambda s: s), "observe needs a plant"),
    (dict(sizes=[2, 3.7, 1]), "sizes must be an integer"),
    (dict(sizes=[2.0, 3, 1]), "sizes must be an integer"),
    (dict(sizes=[2, 0, 1]), "sizes must be an integer >= 1"),
    (dict(sizes=[2, 3, 1], recurrent=[1.5]), "recurrent must be an integer"),
])
def test_spec_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rnn_spec(**kwargs)


def test_apply_validation(net):
    spec, params, x, s0 = net
    with pytest.raises(ValueError, match="layer 0 has 3 units"):
        rnn_apply(spec, params, jnp.ones((7, 2)), s0[0])
    with pytest.raises(ValueError, match="plant_state"):
        rnn_apply(spec, params, x[0])
    with pytest.raises(ValueError, match=r"params\['w'\]\['0->1'\]"):
        bad = {**params, "w": {**params["w"], "0->1": jnp.ones((2, 6))}}
        rnn_apply(spec, bad, x[0], s0[0])
    with pytest.raises(ValueError, match=r"\(T, n_x\)"):
        rnn_apply(spec, params, x, s0[0])
    with pytest.raises(ValueError, match="T >= 1"):
        rnn_apply(spec, params, jnp.zeros((0, 1)), s0[0])
    spec_p = rnn_spec([2, 4, 2], plant=plant)
    with pytest.raises(ValueError, match="length"):
        rnn_apply(spec_p, rnn_init(jax.random.PRNGKey(0), spec_p), None, jnp.zeros(2), length=0)


def test_integer_plant_state_is_promoted_not_truncated(net):
    # An integer s_0 must not make the plant state integer at every step.
    spec, params, x, _ = net
    out = rnn_apply(spec, params, x[0], jnp.array([1, -1]))
    ref = rnn_apply(spec, params, x[0], jnp.array([1.0, -1.0]))
    assert jnp.issubdtype(out.plant_states.dtype, jnp.floating)
    np.testing.assert_array_equal(out.plant_states, ref.plant_states)
    us, states = numpy_rollout(params, np.asarray(x[0]), np.array([1.0, -1.0]))
    eps = float(jnp.finfo(params["b"]["3"].dtype).eps)  # the network computes in float32
    np.testing.assert_allclose(out.plant_states, states, rtol=1e3 * eps, atol=1e3 * eps)


def test_rnn_apply_inside_shard_map(net):
    # Plant states sharded over a 1-device mesh axis, parameters replicated: the
    # recurrent and plant carries must start with the varying type of the step's output.
    from jax.sharding import NamedSharding, PartitionSpec as P

    spec, params, x, s0 = net
    mesh = jax.make_mesh((1,), ("d",))
    put = lambda a: jax.device_put(a, NamedSharding(mesh, P("d")))
    run = jax.vmap(lambda xi, si: rnn_apply(spec, params, xi, si).plant_states)
    sharded = jax.jit(jax.shard_map(run, mesh=mesh, in_specs=(P("d"), P("d")), out_specs=P("d")))
    np.testing.assert_array_equal(sharded(put(x), put(s0)), jax.jit(run)(x, s0))
