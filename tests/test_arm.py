"""The 2-link arm, the autodiff n-link arm and the gymnax environment.

Oracles: the equations of DeWolf (2016) transcribed literally in numpy, physics
invariants (energy, power balance), forward kinematics for inverse
kinematics, the inverse function theorem, the task loss for the env rewards.
"""

import importlib.util
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxctl.envs import arm
from jaxctl.envs import closed_loop, planar_arm
from jaxctl.envs import reach_task as task

K1 = (1.98 / 3 + 1.32) * 0.31**2 + 1.32 * 0.27**2 / 3
K2 = 1.32 * 0.31 * 0.27
K3 = 1.32 * 0.27**2 / 3
K4 = 1.32 * 0.31 * 0.27 / 2


def dewolf_mass_matrix(q):
    c = np.cos(q[1])
    return np.array([[K1 + K2 * c, K3 + K4 * c], [K3 + K4 * c, K3]])


def dewolf_step(state, u, dt):
    """The arm2 step of DeWolf (2016), transcribed from REFERENCE.md (numpy float64)."""
    q, dq = np.array(state[:2], float), np.array(state[2:], float)
    c2, s2 = np.cos(q[1]), np.sin(q[1])
    m11, m12, m22 = K1 + K2 * c2, K3 + K4 * c2, K3
    m21 = m12
    h1 = -K2 * s2 * dq[0] * dq[1] - 0.5 * K2 * s2 * dq[1] ** 2
    h2 = 0.5 * K2 * s2 * dq[0] ** 2
    ddq1 = (h2 * m11 - h1 * m21 - m11 * u[1] + m21 * u[0]) / (m12**2 - m11 * m22)
    ddq0 = (-h2 + u[1] - m22 * ddq1) / m21
    dq = dq + dt * np.array([ddq0, ddq1])
    q = q + dt * dq
    return np.concatenate([q, dq])


def random_states(key, n, dtype, speed=3.0):
    kq, kd = jax.random.split(key)
    q = jax.random.uniform(kq, (n, 2), dtype, -math.pi, math.pi)
    dq = speed * jax.random.normal(kd, (n, 2), dtype)
    return jnp.concatenate([q, dq], axis=1)


# --------------------------------------------------------------- dynamics


def test_mass_matrix_matches_dewolf_and_is_spd():
    qs = np.asarray(random_states(jax.random.PRNGKey(0), 256, jnp.float32))[:, :2]
    ms = np.asarray(jax.jit(jax.vmap(arm.mass_matrix))(jnp.asarray(qs)))
    for q, m in zip(qs[:8], ms[:8]):
        np.testing.assert_allclose(m, dewolf_mass_matrix(q.astype(float)), rtol=1e-5)
    np.testing.assert_array_equal(ms, np.transpose(ms, (0, 2, 1)))
    eig = np.linalg.eigvalsh(ms.astype(float))
    # lambda_min >= det / trace >= m2 l1^2 l2^2 (m1/9 + m2/12) / (K1 + K2 + K3).
    det_min = 1.32 * 0.31**2 * 0.27**2 * (1.98 / 9 + 1.32 / 12)
    assert eig.min() >= 0.999 * det_min / (K1 + K2 + K3)


def test_step_matches_dewolf_equations_float64():
    with jax.enable_x64(True):
        states = np.asarray(random_states(jax.random.PRNGKey(1), 64, jnp.float64))
        us = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (64, 2), jnp.float64))
        # DeWolf's (2016) elimination divides by M12 = K3 + K4 cos q1: keep away from its zero.
        keep = np.abs(K3 + K4 * np.cos(states[:, 1])) > 0.01
        assert keep.sum() > 40
        ours = np.asarray(jax.jit(jax.vmap(lambda s, u: arm.step(s, u, 0.01, squash_state=False)))(
            jnp.asarray(states), jnp.asarray(us)))
        for s, u, o in zip(states[keep], us[keep], ours[keep]):
            np.testing.assert_allclose(o, dewolf_step(s, u, 0.01), rtol=1e-10, atol=1e-12)


def test_step_float32_close_to_float64():
    states = random_states(jax.random.PRNGKey(3), 32, jnp.float32)
    us = jax.random.normal(jax.random.PRNGKey(4), (32, 2), jnp.float32)
    out32 = np.asarray(jax.jit(jax.vmap(arm.step))(states, us))
    with jax.enable_x64(True):
        out64 = np.asarray(jax.jit(jax.vmap(arm.step))(jnp.asarray(states, jnp.float64),
                                              jnp.asarray(us, jnp.float64)))
    np.testing.assert_allclose(out32, out64, rtol=1e-5, atol=1e-5)


def test_power_balance_exact_in_continuous_time():
    """dE/dt along (dq, ddq) equals the torque power u . dq (float64, exact)."""
    with jax.enable_x64(True):
        states = random_states(jax.random.PRNGKey(5), 128, jnp.float64)
        us = 2.0 * jax.random.normal(jax.random.PRNGKey(6), (128, 2), jnp.float64)

        def power_gap(s, u):
            ddq = arm.accelerations(s, u)
            _, de_dt = jax.jvp(arm.kinetic_energy, (s,), (jnp.concatenate([s[2:], ddq]),))
            return de_dt, u @ s[2:]

        de_dt, power = jax.jit(jax.vmap(power_gap))(states, us)
        np.testing.assert_allclose(np.asarray(de_dt), np.asarray(power), rtol=1e-10, atol=1e-10)


def _energy_drift(dt, horizon=1.0, torque=None):
    steps = int(round(horizon / dt))
    s0 = jnp.array([0.3, 1.2, 2.0, -3.0], jnp.float64)

    def body(s, _):
        s = arm.step(s, jnp.zeros(2, jnp.float64), dt, squash_state=False)
        return s, arm.kinetic_energy(s)

    @jax.jit
    def drift(s0):
        _, es = jax.lax.scan(body, s0, None, length=steps)
        e0 = arm.kinetic_energy(s0)
        return jnp.max(jnp.abs(es - e0)) / e0

    return float(drift(s0))


def test_zero_torque_energy_drift_shrinks_with_dt():
    with jax.enable_x64(True):
        drifts = [_energy_drift(dt) for dt in (1e-2, 1e-3, 1e-4)]
    # Semi-implicit Euler is first order: the drift shrinks about 10x per
    # 10x smaller step (>= 5x asserted), and is small at dt = 1e-4.
    assert drifts[0] > 5 * drifts[1] > 25 * drifts[2], drifts
    assert drifts[2] < 1e-3, drifts


def test_discrete_energy_rate_converges_to_torque_power():
    with jax.enable_x64(True):
        s = jnp.array([0.5, 1.0, 1.0, -0.5], jnp.float64)
        u = jnp.array([0.7, -0.3], jnp.float64)
        power = float(u @ s[2:])
        errs = []
        rate_fn = jax.jit(lambda s, u, dt: (arm.kinetic_energy(arm.step(s, u, dt, squash_state=False))
                                             - arm.kinetic_energy(s)) / dt)
        for dt in (1e-2, 1e-3, 1e-4):
            errs.append(abs(float(rate_fn(s, u, dt)) - power))
    assert errs[0] > 5 * errs[1] > 25 * errs[2], errs
    assert errs[2] < 1e-3 * abs(power) + 1e-6


def test_step_is_jittable_and_vmappable():
    states = random_states(jax.random.PRNGKey(7), 16, jnp.float32, speed=0.5)
    us = jnp.zeros((16, 2), states.dtype)
    out = jax.jit(jax.vmap(arm.step))(states, us)
    assert out.shape == (16, 4) and out.dtype == jnp.float32
    one = arm.step(states[3], us[3])
    eps = float(jnp.finfo(jnp.float32).eps)
    np.testing.assert_allclose(out[3], one, rtol=8 * eps, atol=8 * eps)


# ------------------------------------------------------------ squashing


def test_squash_identity_inside_bounded_outside():
    x = jnp.linspace(-30.0, 30.0, 6001)
    s = arm.squash(x)
    inside = jnp.abs(x) <= 2 * math.pi
    np.testing.assert_array_equal(np.asarray(s[inside]), np.asarray(x[inside]))
    assert float(jnp.max(jnp.abs(s))) <= 2 * math.pi + 1 + 1e-6  # tanh saturates at 1 in float32
    # Monotone, up to float32 rounding of tanh deep in saturation (a few ulp).
    assert bool(jnp.all(jnp.diff(s) >= -4 * jnp.finfo(jnp.float32).eps * 8))
    grads = jax.vmap(jax.grad(arm.squash))(x)
    assert bool(jnp.all(jnp.isfinite(grads))) and bool(jnp.all((grads >= 0) & (grads <= 1)))
    # C1 at the boundary: slope 1 on both sides.
    b = 2 * math.pi
    np.testing.assert_allclose(jax.grad(arm.squash)(b + 1e-3), 1.0, atol=1e-5)
    np.testing.assert_allclose(jax.grad(arm.squash)(-b - 1e-3), 1.0, atol=1e-5)
    np.testing.assert_allclose(arm.squash(jnp.float32(40.0)), b + 1.0, atol=1e-6)


def test_huge_torque_stays_finite_and_bounded():
    s = task.start_state()

    def body(s, _):
        return arm.step(s, jnp.array([1e4, -1e4])), None

    s, _ = jax.lax.scan(body, s, None, length=100)
    assert bool(jnp.all(jnp.isfinite(s)))
    assert float(jnp.max(jnp.abs(s))) <= 2 * math.pi + 1 + 1e-6  # tanh saturates at 1 in float32


# ------------------------------------------------------------ kinematics


def test_inverse_kinematics_branch_matches_the_start_posture():
    q0 = jnp.array(arm.Q0)
    np.testing.assert_allclose(arm.hand_position(q0), [0.0, 0.35], atol=1e-6)
    np.testing.assert_allclose(arm.inverse_kinematics(arm.hand_position(q0)), q0, atol=2e-6)
    with jax.enable_x64(True):
        q0 = jnp.array(arm.Q0, jnp.float64)
        np.testing.assert_allclose(arm.inverse_kinematics(jnp.array([0.0, 0.35], jnp.float64)),
                                   q0, atol=1e-10)
        mirror = arm.inverse_kinematics(jnp.array([0.0, 0.35], jnp.float64), elbow=-1)
        assert float(mirror[1]) < 0
        np.testing.assert_allclose(arm.hand_position(mirror), [0.0, 0.35], atol=1e-12)


@pytest.mark.parametrize("elbow", [1, -1])
def test_inverse_kinematics_roundtrip(elbow):
    key_r, key_a = jax.random.split(jax.random.PRNGKey(8))
    r = jax.random.uniform(key_r, (200,), minval=0.04 + 0.01, maxval=0.58 - 0.01)
    a = jax.random.uniform(key_a, (200,), minval=-math.pi, maxval=math.pi)
    xy = jnp.stack([r * jnp.cos(a), r * jnp.sin(a)], axis=1)
    q = jax.jit(jax.vmap(lambda p: arm.inverse_kinematics(p, elbow=elbow)))(xy)
    assert bool(jnp.all(elbow * q[:, 1] >= 0))
    np.testing.assert_allclose(jax.jit(jax.vmap(arm.hand_position))(q), xy, atol=2e-6)


def test_inverse_kinematics_jacobian_is_inverse_of_forward():
    with jax.enable_x64(True):
        xy = jnp.array([0.05, 0.4], jnp.float64)
        q = arm.inverse_kinematics(xy)
        j_ik = jax.jit(jax.jacfwd(arm.inverse_kinematics))(xy)
        j_fk = jax.jit(jax.jacfwd(arm.hand_position))(q)
        np.testing.assert_allclose(j_ik @ j_fk, np.eye(2), atol=1e-10)


def test_inverse_kinematics_out_of_reach_gives_nearest_point():
    for xy, dist in (([0.6, 0.8], 0.58), ([0.01, 0.02], 0.04)):
        xy = jnp.array(xy)
        q = arm.inverse_kinematics(xy)
        hand = arm.hand_position(q)
        expected = dist * xy / jnp.linalg.norm(xy)
        np.testing.assert_allclose(hand, expected, atol=1e-6)
        assert bool(jnp.all(jnp.isfinite(jax.jit(jax.jacfwd(arm.inverse_kinematics))(xy))))


# ------------------------------------------------------------ bad inputs


def test_bad_shapes_raise_clear_value_errors():
    with pytest.raises(ValueError, match="state must have shape \\(4,\\)"):
        arm.step(jnp.zeros(3), jnp.zeros(2))
    with pytest.raises(ValueError, match="state must have shape \\(4,\\)"):
        arm.step(jnp.zeros((5, 4)), jnp.zeros(2))  # batched: vmap instead
    with pytest.raises(ValueError, match="torque must have shape \\(2,\\)"):
        arm.step(jnp.zeros(4), jnp.zeros(3))
    with pytest.raises(ValueError, match="torque must have shape \\(2,\\)"):
        jax.jit(arm.step)(jnp.zeros(4), jnp.zeros((1, 2)))  # at trace time
    with pytest.raises(ValueError, match="q must have shape"):
        arm.mass_matrix(jnp.zeros(4))
    with pytest.raises(ValueError, match="xy must have shape"):
        arm.inverse_kinematics(jnp.zeros(3))
    with pytest.raises(ValueError, match="elbow"):
        arm.inverse_kinematics(jnp.zeros(2), elbow=0)
    with pytest.raises(ValueError, match="state must have shape \\(6,\\)"):
        planar_arm.planar_step(jnp.zeros(4), jnp.zeros(3), arm=planar_arm.ARM3_PLANAR)
    with pytest.raises(ValueError, match="torque must have shape \\(3,\\)"):
        planar_arm.planar_step(jnp.zeros(6), jnp.zeros(2), arm=planar_arm.ARM3_PLANAR)



@pytest.mark.parametrize("dt", [0.0, -0.01, float("nan"), float("inf"), np.float32(-1)])
def test_step_rejects_a_non_positive_or_non_finite_dt(dt):
    s0 = task.start_state()
    with pytest.raises(ValueError, match="dt must be"):
        arm.step(s0, jnp.zeros(2), dt)
    with pytest.raises(ValueError, match="dt must be"):
        planar_arm.planar_step(jnp.zeros(4), jnp.zeros(2), dt)


@pytest.mark.parametrize("field, value", [("l1", 0.0), ("l2", float("nan")), ("m1", -1.0),
                                          ("m2", float("inf"))])
def test_step_rejects_degenerate_link_constants(field, value):
    params = arm.ARM2._replace(**{field: value})
    with pytest.raises(ValueError, match=f"params.{field} must be"):
        arm.step(task.start_state(), jnp.zeros(2), params=params)
    with pytest.raises(ValueError, match=f"params.{field} must be"):
        arm.mass_matrix(jnp.zeros(2), params)
    if field in ("l1", "l2"):
        with pytest.raises(ValueError, match=f"params.{field} must be"):
            arm.inverse_kinematics(jnp.array([0.0, 0.35]), params)


def test_traced_dt_and_link_constants_pass_and_match_concrete_ones():
    s0, u = task.start_state(), jnp.array([0.3, -0.2])
    traced = jax.jit(lambda dt, p: arm.step(s0, u, dt, params=p))(0.01, arm.ARM2)
    np.testing.assert_allclose(traced, arm.step(s0, u), rtol=8 * float(jnp.finfo(s0.dtype).eps))


def test_planar_arm_rejects_degenerate_links():
    with pytest.raises(ValueError, match="non-empty"):
        planar_arm.PlanarArm.rods((), ())
    with pytest.raises(ValueError, match=r"arm.lengths\[1\] must be"):
        planar_arm.PlanarArm.rods((0.3, 0.0), (1.0, 1.0))
    bad = planar_arm.ARM3_PLANAR._replace(com=(0.5, 1.5, 0.5))
    with pytest.raises(ValueError, match=r"arm.com\[1\] must be"):
        planar_arm.planar_step(jnp.zeros(6), jnp.zeros(3), arm=bad)
    empty = planar_arm.PlanarArm((), (), (), ())
    with pytest.raises(ValueError, match="at least one link"):
        planar_arm.planar_step(jnp.zeros(0), jnp.zeros(0), arm=empty)


def test_integer_state_and_torque_are_promoted():
    out = arm.step(jnp.array([1, 2, 0, 0]), jnp.array([1, 0]))
    ref = arm.step(jnp.array([1.0, 2.0, 0.0, 0.0]), jnp.array([1.0, 0.0]))
    assert jnp.issubdtype(out.dtype, jnp.floating)
    np.testing.assert_array_equal(out, ref)


# ------------------------------------------------ n-link Lagrangian arm


def test_planar_two_link_matches_closed_form():
    with jax.enable_x64(True):
        states = random_states(jax.random.PRNGKey(9), 32, jnp.float64)
        us = jax.random.normal(jax.random.PRNGKey(10), (32, 2), jnp.float64)
        @jax.jit
        def both(states, us):
            return (jax.vmap(lambda s: planar_arm.planar_mass_matrix(s[:2], planar_arm.ARM2_PLANAR))(states),
                    jax.vmap(lambda s, u: planar_arm.planar_accelerations(s, u, planar_arm.ARM2_PLANAR))(states, us),
                    jax.vmap(arm.accelerations)(states, us),
                    jax.vmap(lambda s, u: planar_arm.planar_step(s, u))(states, us),
                    jax.vmap(arm.step)(states, us))

        m_auto, a_auto, a_closed, step_auto, step_closed = both(states, us)
        m_dewolf = np.stack([dewolf_mass_matrix(np.asarray(s[:2])) for s in states])
        np.testing.assert_allclose(m_auto, m_dewolf, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(a_auto, a_closed, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(step_auto, step_closed, rtol=1e-10, atol=1e-12)


def test_planar_three_link_physics():
    three = planar_arm.PlanarArm.rods((0.3, 0.25, 0.15), (2.0, 1.5, 0.5))
    with jax.enable_x64(True):
        key_q, key_d, key_u = jax.random.split(jax.random.PRNGKey(11), 3)
        q = jax.random.uniform(key_q, (16, 3), jnp.float64, -3, 3)
        dq = jax.random.normal(key_d, (16, 3), jnp.float64)
        u = jax.random.normal(key_u, (16, 3), jnp.float64)
        states = jnp.concatenate([q, dq], axis=1)
        def gap(s, u_):
            ddq = planar_arm.planar_accelerations(s, u_, three)
            _, de = jax.jvp(lambda s_: planar_arm.planar_kinetic_energy(s_, three), (s,),
                            (jnp.concatenate([s[3:], ddq]),))
            return de - u_ @ s[3:]

        @jax.jit
        def run(q, states, u):
            return jax.vmap(lambda q_: planar_arm.planar_mass_matrix(q_, three))(q), jax.vmap(gap)(states, u)

        ms, gaps = run(q, states, u)
        np.testing.assert_allclose(ms, jnp.swapaxes(ms, 1, 2), atol=1e-15)
        assert float(jnp.min(jnp.linalg.eigvalsh(ms))) > 0
        np.testing.assert_allclose(gaps, 0.0, atol=1e-10)
    # A single uniform rod about its end: I = m l^2 / 3, ddq = u / I.
    rod = planar_arm.PlanarArm.rods((0.5,), (3.0,))
    acc = jax.jit(lambda s, u: planar_arm.planar_accelerations(s, u, rod))
    np.testing.assert_allclose(acc(jnp.array([0.2, 1.0]), jnp.array([1.0])),
                               [1.0 / (3.0 * 0.25 / 3)], rtol=1e-5)


def test_planar_inverse_kinematics_three_link_task():
    q_rest = jnp.array([math.pi / 5.5, math.pi / 1.7, math.pi / 6.0])
    targets = jax.jit(lambda q: task.planar_circle_targets(planar_arm.ARM3_PLANAR, q, n=16,
                                                           weights=(1.0, 1.0, 1.3)))(q_rest)
    hand = jax.jit(jax.vmap(lambda q: planar_arm.planar_hand_position(q, planar_arm.ARM3_PLANAR)))(targets.state[:, :3])
    np.testing.assert_allclose(hand, targets.xy, atol=1e-4)
    np.testing.assert_allclose(jnp.linalg.norm(targets.xy - jnp.array([0.0, 0.5]), axis=1), 0.2, atol=1e-6)


# ---------------------------------------------------- gymnax environment


@pytest.fixture(scope="module")
def env():
    pytest.importorskip("gymnax")
    from jaxctl.envs.arm_env import ArmReach

    return ArmReach()


def test_env_jit_vmap_and_episode_return_is_minus_loss(env):
    params = env.default_params
    keys = jax.random.split(jax.random.PRNGKey(12), 8)
    obs, states = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))(keys, params)
    assert obs.shape == (8, 8)
    np.testing.assert_allclose(obs[:, 4:], jnp.broadcast_to(task.start_state(), (8, 4)), atol=0)
    T = params.max_steps_in_episode
    actions = 0.3 * jax.random.normal(jax.random.PRNGKey(13), (T, 8, 2))

    def body(carry, xs):
        st = carry
        key, a = xs
        o, st, r, term, trunc, info = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
            jax.random.split(key, 8), st, a, params)
        return st, (r, term, trunc, st.time)

    step_keys = jax.random.split(jax.random.PRNGKey(14), T)
    _, (rewards, term, trunc, times) = jax.jit(lambda s: jax.lax.scan(body, s, (step_keys, actions)))(states)
    assert not bool(jnp.any(term))
    np.testing.assert_array_equal(np.asarray(trunc[:-1]), False)
    np.testing.assert_array_equal(np.asarray(trunc[-1]), True)
    np.testing.assert_array_equal(np.asarray(times[-1]), 0)  # auto-reset after the last step

    # Oracle: the same open-loop torques through rollout + reach_loss.
    def loss_of(target, acts):
        ctrl = lambda c, _: (c + 1, acts[c])  # noqa: E731
        out = closed_loop.rollout(ctrl, 0, task.start_state(), target, T)
        return task.reach_loss(out.states, out.torques, target, task.final_weights(T))

    losses = jax.jit(jax.vmap(loss_of))(states.target_state, jnp.swapaxes(actions, 0, 1))
    np.testing.assert_allclose(-rewards.sum(axis=0), losses, rtol=1e-5)


def test_env_transition_gradients(env):
    params = env.default_params
    genv = env.with_transition_gradients()
    _, s = genv.reset(jax.random.PRNGKey(0), params)

    def reward_of(u):
        return genv.step_env(jax.random.PRNGKey(1), s, u, params)[2]

    g = jax.jit(jax.grad(reward_of))(jnp.array([0.5, -0.5]))
    np.testing.assert_allclose(g, -params.alpha * jnp.array([0.5, -0.5]), rtol=1e-5)


# ------------------------------------- the baseline simulates the same arm


def test_hessianfree_baseline_arm_matches_jaxctl():
    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "hessianfree_arm_baseline.py"
    spec = importlib.util.spec_from_file_location("hf_baseline", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # numpy-only at import time
    with jax.enable_x64(True):
        states = random_states(jax.random.PRNGKey(15), 32, jnp.float64, speed=8.0) * 2.5
        us = 5 * jax.random.normal(jax.random.PRNGKey(16), (32, 2), jnp.float64)
        ours = np.asarray(jax.jit(jax.vmap(arm.step))(states, us))
    np.testing.assert_allclose(mod.arm_step_np(np.asarray(states), np.asarray(us)), ours,
                               rtol=1e-12, atol=1e-12)
    xy, tstate = mod.targets_np()
    ref = task.circle_targets()
    np.testing.assert_allclose(xy, ref.xy, atol=1e-7)
    np.testing.assert_allclose(tstate, ref.state, atol=2e-6)
