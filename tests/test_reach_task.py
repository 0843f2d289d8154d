"""The reaching task: targets, closed-loop rollout, loss, metrics.

Oracles: forward kinematics, a plain Python loop for the rollout semantics
(delay, noise), a numpy transcription of the loss, central finite
differences (float64) for gradients through the closed loop.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxctl.envs import arm
from jaxctl.envs import closed_loop, planar_arm
from jaxctl.envs import reach_task as task
from jaxctl.models.mlp import mlp_apply, mlp_init


@pytest.fixture(scope="module")
def sets():
    return task.standard_target_sets()


def test_target_sets_geometry(sets):
    train, rotated, inner = sets["train"], sets["rotated"], sets["inner"]
    for ts, radius in ((train, 0.075), (rotated, 0.075), (inner, 0.05)):
        assert ts.xy.shape == (64, 2) and ts.state.shape == (64, 4)
        hands = jax.jit(jax.vmap(arm.hand_position))(ts.state[:, :2])
        np.testing.assert_allclose(hands, ts.xy, atol=2e-6)
        np.testing.assert_allclose(jnp.linalg.norm(ts.xy - jnp.array([0.0, 0.35]), axis=1), radius, atol=1e-6)
        np.testing.assert_array_equal(ts.state[:, 2:], 0.0)
        # The start posture's elbow branch, and no 2 pi jumps between neighbours
        # (the loss is in joint space, so a wrapped angle would be a far target).
        assert bool(jnp.all(ts.state[:, 1] > 0))
        assert float(jnp.max(jnp.abs(jnp.diff(ts.state[:, :2], axis=0)))) < 0.1
    np.testing.assert_allclose(train.xy[16], [0.0, 0.35 + 0.075], atol=1e-7)  # theta = pi / 2
    np.testing.assert_allclose(rotated.angle - train.angle, math.pi / 64, atol=1e-6)
    # Held-out targets lie between training targets: nearest training target half a spacing away.
    d = jnp.linalg.norm(rotated.xy[:, None] - train.xy[None], axis=-1).min(axis=1)
    np.testing.assert_allclose(d, 2 * 0.075 * math.sin(math.pi / 128), rtol=1e-3)


def numpy_loss(states, torques, target, weights, alpha):
    total = 0.0
    for t in range(torques.shape[0]):
        tgt = target if target.ndim == 1 else target[t]
        total += alpha / 2 * np.sum(torques[t] ** 2)
        total += weights[t] / 2 * np.sum((tgt - states[t + 1]) ** 2)
    return total


def test_reach_loss_matches_numpy_transcription():
    rng = np.random.default_rng(0)
    T = 7
    states = rng.normal(size=(T + 1, 4))
    torques = rng.normal(size=(T, 2))
    target = rng.normal(size=4)
    sched, w_ob = task.out_and_back(jnp.asarray(target), jnp.zeros(4), T)
    cases = [(target, task.final_weights(T)), (target, task.every_step_weights(T)), (np.asarray(sched), w_ob)]
    for tgt, w in cases:
        got = task.reach_loss(jnp.asarray(states), jnp.asarray(torques), jnp.asarray(tgt), w, alpha=0.3)
        np.testing.assert_allclose(got, numpy_loss(states, torques, np.asarray(tgt), np.asarray(w), 0.3), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(w_ob), [0, 0, 1, 0, 0, 0, 1])
    np.testing.assert_array_equal(np.asarray(sched[:3]), np.broadcast_to(target, (3, 4)).astype(sched.dtype))
    np.testing.assert_array_equal(np.asarray(sched[3:]), 0.0)
    with pytest.raises(ValueError, match="weights must have shape"):
        task.reach_loss(jnp.asarray(states), jnp.asarray(torques), jnp.asarray(target), jnp.ones(T + 1))
    with pytest.raises(ValueError, match="switch"):
        task.out_and_back(jnp.zeros(4), jnp.zeros(4), T, switch=T)


def python_loop_rollout(controller, c, x0, targets, T, delay, noise):
    """Reference semantics, written as a plain loop."""
    history = [x0]
    x = x0
    states, inputs, us = [x0], [], []
    for t in range(T):
        seen = history[max(t - delay, 0)]
        inp = closed_loop.network_input(targets[t], seen)
        c, u = controller(c, inp)
        x = arm.step(x, u + noise[t])
        history.append(x)
        states.append(x)
        inputs.append(inp)
        us.append(u)
    return jnp.stack(states), jnp.stack(us), jnp.stack(inputs), c


def rnn_controller(params):
    """A small stateful controller: h' = tanh(W [x, h] + b), u = V h'."""

    def ctrl(h, x):
        h = jnp.tanh(params["w"] @ jnp.concatenate([x, h]) + params["b"])
        return h, params["v"] @ h

    return ctrl


def rnn_params(key, hidden=6, dtype=jnp.float32):
    k1, k2 = jax.random.split(key)
    return {"w": 0.5 * jax.random.normal(k1, (hidden, 8 + hidden), dtype) / math.sqrt(8 + hidden),
            "b": jnp.zeros(hidden, dtype),
            "v": 0.5 * jax.random.normal(k2, (2, hidden), dtype)}


def test_rollout_matches_python_loop_with_delay_noise_and_schedule(sets):
    T, delay = 12, 3
    params = rnn_params(jax.random.PRNGKey(1))
    ctrl = rnn_controller(params)
    sched, _ = task.out_and_back(sets["train"].state[5], task.start_state(), T)
    key = jax.random.PRNGKey(2)
    out = jax.jit(lambda p, k: closed_loop.rollout(
        rnn_controller(p), jnp.zeros(6), task.start_state(), sched, T, delay=delay,
        noise_std=0.05, key=k))(params, key)
    noise = out.applied_torques - out.torques
    loop = jax.jit(lambda c0, x0, sched, noise: python_loop_rollout(ctrl, c0, x0, sched, T, delay, noise))
    states, us, inputs, c = loop(jnp.zeros(6), task.start_state(), sched, noise)
    np.testing.assert_allclose(out.states, states, atol=1e-6)
    np.testing.assert_allclose(out.torques, us, atol=1e-6)
    np.testing.assert_allclose(out.inputs, inputs, atol=1e-6)
    np.testing.assert_allclose(out.controller_state, c, atol=1e-6)
    # The delay itself: the controller saw x_{max(t - 3, 0)}.
    for t in range(T):
        np.testing.assert_array_equal(out.inputs[t, 4:], out.states[max(t - delay, 0)])
    np.testing.assert_array_equal(out.inputs[:6, :4], jnp.broadcast_to(sets["train"].state[5], (6, 4)))
    np.testing.assert_array_equal(out.inputs[6:, :4], jnp.broadcast_to(task.start_state(), (6, 4)))


def test_rollout_noise_statistics_and_keys():
    zero = lambda c, x: (c, jnp.zeros(2))  # noqa: E731
    x0, tgt = task.start_state(), task.start_state()
    run = jax.jit(lambda k, std: closed_loop.rollout(zero, (), x0, tgt, 500, noise_std=std, key=k))
    a = run(jax.random.PRNGKey(3), 0.2)
    b = run(jax.random.PRNGKey(3), 0.2)
    c = run(jax.random.PRNGKey(4), 0.2)
    np.testing.assert_array_equal(a.states, b.states)
    assert not np.allclose(a.states, c.states)
    noise = np.asarray(a.applied_torques - a.torques)
    assert abs(noise.std() - 0.2) < 0.02 and abs(noise.mean()) < 0.03
    quiet = closed_loop.rollout(zero, (), x0, tgt, 5)
    np.testing.assert_array_equal(quiet.states, jnp.broadcast_to(x0, (6, 4)))  # no torque: no motion
    with pytest.raises(ValueError, match="key"):
        closed_loop.rollout(zero, (), x0, tgt, 5, noise_std=0.1)


def test_rollout_bad_arguments():
    zero = lambda c, x: (c, jnp.zeros(2))  # noqa: E731
    x0 = task.start_state()
    with pytest.raises(ValueError, match="target must have shape"):
        closed_loop.rollout(zero, (), x0, jnp.zeros(3), 5)
    with pytest.raises(ValueError, match="T must be"):
        closed_loop.rollout(zero, (), x0, x0, 0)
    with pytest.raises(ValueError, match="delay"):
        closed_loop.rollout(zero, (), x0, x0, 5, delay=-1)
    with pytest.raises(ValueError, match="torque"):
        closed_loop.rollout(lambda c, x: (c, jnp.zeros((1, 2))), (), x0, x0, 5)
    with pytest.raises(ValueError, match="torque must have shape \\(2,\\)"):
        closed_loop.rollout(lambda c, x: (c, jnp.zeros(3)), (), x0, x0, 5)
    with pytest.raises(ValueError, match="plant_state must be|same shape"):
        closed_loop.network_input(jnp.zeros(4), jnp.zeros(3))
    for noise_std in (-0.1, float("nan")):  # concrete noise is checked, not skipped
        with pytest.raises(ValueError, match="noise_std must be"):
            closed_loop.rollout(zero, (), x0, x0, 5, noise_std=noise_std,
                                key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="plant_state0 must have shape"):
        closed_loop.rollout(zero, (), jnp.zeros(0), jnp.zeros(0), 5)
    with pytest.raises(ValueError, match="T must be an integer"):
        closed_loop.rollout(zero, (), x0, x0, 5.0)
    for make in (task.final_weights, task.every_step_weights):  # empty horizons name T
        with pytest.raises(ValueError, match="T must be an integer >= 1"):
            make(0)
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        task.circle_points(0)


def _directional_fd(f, theta, direction, eps):
    plus = jax.tree.map(lambda p, d: p + eps * d, theta, direction)
    minus = jax.tree.map(lambda p, d: p - eps * d, theta, direction)
    return (f(plus) - f(minus)) / (2 * eps)


def test_gradient_through_40_step_closed_loop_matches_finite_differences(sets):
    """MLP controller, 40 steps, 4 targets, final-state loss; float64 central differences."""
    T = 40
    with jax.enable_x64(True):
        params = mlp_init(jax.random.PRNGKey(5), (8, 16, 2), dtype=jnp.float64, output_scale=0.5)
        targets = jnp.asarray(sets["train"].state[::16], jnp.float64)
        x0 = task.start_state(dtype=jnp.float64)
        w = task.final_weights(T, jnp.float64)

        def loss(p):
            def one(tgt):
                ctrl = lambda c, x: (c, mlp_apply(p, x))  # noqa: E731
                out = closed_loop.rollout(ctrl, (), x0, tgt, T)
                return task.reach_loss(out.states, out.torques, tgt, w)
            return jnp.mean(jax.vmap(one)(targets))

        loss_jit = jax.jit(loss)
        value, grad = jax.jit(jax.value_and_grad(loss))(params)
        assert np.isfinite(value) and value > 0
        keys = jax.random.split(jax.random.PRNGKey(6), 3)
        for k in keys:
            leaves, treedef = jax.tree.flatten(params)
            ks = jax.random.split(k, len(leaves))
            direction = jax.tree.unflatten(treedef, [jax.random.normal(kk, l.shape, l.dtype)
                                                     for kk, l in zip(ks, leaves)])
            fd = _directional_fd(loss_jit, params, direction, 1e-6)
            ad = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(direction)))
            np.testing.assert_allclose(ad, fd, rtol=1e-6, atol=1e-10)


def test_gradient_stateful_controller_with_delay_and_noise():
    T = 20
    with jax.enable_x64(True):
        params = rnn_params(jax.random.PRNGKey(7), dtype=jnp.float64)
        tgt = jnp.asarray(task.circle_targets(dtype=jnp.float64).state[9])
        sched, w = task.out_and_back(tgt, task.start_state(dtype=jnp.float64), T)
        key = jax.random.PRNGKey(8)

        def loss(p):
            out = closed_loop.rollout(rnn_controller(p), jnp.zeros(6, jnp.float64),
                                      task.start_state(dtype=jnp.float64), sched, T, delay=2,
                                      noise_std=0.1, key=key)
            return task.reach_loss(out.states, out.torques, sched, w, alpha=1e-2)

        grad = jax.jit(jax.grad(loss))(params)
        direction = jax.tree.map(lambda p: jnp.cos(jnp.arange(p.size, dtype=p.dtype)).reshape(p.shape), params)
        fd = _directional_fd(jax.jit(loss), params, direction, 1e-6)
        ad = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(direction)))
        np.testing.assert_allclose(ad, fd, rtol=1e-6)


def test_vmapped_rollout_over_targets_compiles_once(sets):
    params = mlp_init(jax.random.PRNGKey(9), (8, 16, 2))
    traces = []

    @jax.jit
    def evaluate(p, target_states, target_xy):
        traces.append(1)
        ctrl = lambda c, x: (c, mlp_apply(p, x))  # noqa: E731
        outs = jax.vmap(lambda t: closed_loop.rollout(ctrl, (), task.start_state(), t, task.T_DEWOLF))(target_states)
        metrics = jax.vmap(task.reach_metrics)(outs.states[:, -1], target_xy, target_states)
        return outs, metrics

    outs, metrics = evaluate(params, sets["train"].state, sets["train"].xy)
    outs2, _ = evaluate(jax.tree.map(lambda x: 0.5 * x, params), sets["rotated"].state, sets["rotated"].xy)
    assert len(traces) == 1
    assert outs.states.shape == (64, 41, 4) and outs.torques.shape == (64, 40, 2)
    assert metrics.hand_error_mm.shape == (64,)
    hands = jax.jit(jax.vmap(arm.hand_position))(outs.states[:, -1, :2])
    np.testing.assert_allclose(metrics.hand_error_mm,
                               1000 * np.linalg.norm(np.asarray(hands - sets["train"].xy), axis=1), rtol=1e-5)


def test_reach_metrics_known_offsets(sets):
    ts = sets["train"]
    exact = task.reach_metrics(ts.state[0], ts.xy[0], ts.state[0])
    assert float(exact.hand_error_mm) < 1e-3 and float(exact.joint_speed) == 0.0
    with jax.enable_x64(True):
        xy = jnp.asarray(ts.xy[7], jnp.float64)
        q_off = arm.inverse_kinematics(xy + jnp.array([0.003, -0.004]))  # 5 mm away
        final = jnp.concatenate([q_off, jnp.array([0.3, -0.4])])
        m = task.reach_metrics(final, xy, jnp.concatenate([arm.inverse_kinematics(xy), jnp.zeros(2)]))
        np.testing.assert_allclose(m.hand_error_mm, 5.0, rtol=1e-9)
        np.testing.assert_allclose(m.joint_speed, 0.5, rtol=1e-12)


def test_three_link_closed_loop_runs():
    q_rest = jnp.array([math.pi / 5.5, math.pi / 1.7, math.pi / 6.0])
    three = planar_arm.PlanarArm.rods((0.5, 0.35, 0.2), (2.0, 1.5, 0.5))
    params = mlp_init(jax.random.PRNGKey(10), (12, 8, 3))

    @jax.jit
    def run(p):
        ctrl = lambda c, x: (c, mlp_apply(p, x))  # noqa: E731
        step = lambda s, u: planar_arm.planar_step(s, u, arm=three)  # noqa: E731
        x0 = task.start_state(q_rest)
        return closed_loop.rollout(ctrl, (), x0, x0, 10, step_fn=step)

    out = run(params)
    assert out.states.shape == (11, 6) and bool(jnp.all(jnp.isfinite(out.states)))
