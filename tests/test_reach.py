"""Tests of the reach experiment (`jaxctl.experiments.reach_model`,
`reach_train`) and of `jaxctl reach`: HF training through the closed loop,
checkpoints, resume, and the command end to end.

Tiny sizes (8 units, T = 10, 8 targets); every test shares the compiled
functions through `reach_train.get_trainer` (cached per settings).
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxctl.apps.cli as cli
import jaxctl.apps.reach as reach_app
import jaxctl.envs.closed_loop as closed_loop
import jaxctl.envs.reach_task as rt
import jaxctl.experiments.reach_model as reach
import jaxctl.experiments.reach_train as train
from jaxctl.core.gauss_newton import gauss_newton_model
from jaxctl.util.checkpoint import CheckpointError

TINY = reach.ReachSettings(hidden=8, steps=10, targets=8, cg_maxiter=20, alpha=1e-6)
F32 = jnp.float32  # the network's dtype (also under jax_enable_x64)
# Two float32 loops of 10 steps through the same arithmetic in another order:
# a few hundred ulps of agreement.
TOL = 200 * float(jnp.finfo(F32).eps)
TINY_FLAGS = ["--hidden", "8", "--steps", "10", "--targets", "8", "--cg-maxiter", "20", "--alpha", "1e-6"]


@pytest.fixture(scope="module")
def trainer():
    return train.get_trainer(TINY)


@pytest.fixture(scope="module")
def trained(trainer):
    """(initial state, state after 16 iterations in one go)."""
    s0 = trainer.initial_state()
    return s0, trainer.run(s0, 16, eval_every=4)


def _same_tree(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_closed_loop_matches_the_envs_rollout(trainer):
    """The RNN-with-plant rollout equals `closed_loop.rollout` driven by the
    same network step by step (an independent loop), with the torque fold."""
    s = TINY
    params = trainer.initial_state().params
    target = trainer.exp.targets["train"].state[3]
    schedule = jnp.broadcast_to(target, (s.steps, 4))
    states, y, inputs = jax.jit(lambda p: reach.closed_loop(p, s, schedule, None))(params)

    w, b, rec = params["w"], params["b"], params["rec"]

    def ctrl(c, inp):
        r1, r2 = c
        h1 = jnp.tanh(inp @ w["0->1"] + b["1"] + r1)
        h2 = jnp.tanh(inp @ w["0->2"] + h1 @ w["1->2"] + b["2"] + r2)
        out = h2 @ w["2->3"] + b["3"]
        return (h1 @ rec["1"], h2 @ rec["2"]), reach.fold_torque(out)

    ref = jax.jit(lambda: closed_loop.rollout(ctrl, (params["h0"]["1"], params["h0"]["2"]),
                                              rt.start_state(dtype=F32), target, s.steps))()
    np.testing.assert_allclose(states, ref.states[1:], rtol=TOL, atol=TOL)
    np.testing.assert_allclose(reach.fold_torque(y), ref.torques, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(inputs, ref.inputs, rtol=TOL, atol=TOL)


def test_delay_and_noise_match_the_envs_rollout():
    s = TINY._replace(delay=2, torque_noise=0.5)
    params = reach.init_params(jax.random.PRNGKey(1), s)
    target = rt.circle_targets(8).state[1].astype(F32)
    noise = 0.5 * jax.random.normal(jax.random.PRNGKey(2), (s.steps, 2), F32)
    states, y, inputs = jax.jit(lambda p: reach.closed_loop(
        p, s, jnp.broadcast_to(target, (s.steps, 4)), noise))(params)
    w, b, rec = params["w"], params["b"], params["rec"]

    def ctrl(c, inp):
        h1 = jnp.tanh(inp @ w["0->1"] + b["1"] + c[0])
        h2 = jnp.tanh(inp @ w["0->2"] + h1 @ w["1->2"] + b["2"] + c[1])
        return (h1 @ rec["1"], h2 @ rec["2"]), reach.fold_torque(h2 @ w["2->3"] + b["3"])

    # closed_loop.rollout draws noise_std * N(0, 1) from its key: reproduce it.
    ref = jax.jit(lambda: closed_loop.rollout(ctrl, (params["h0"]["1"], params["h0"]["2"]),
                                              rt.start_state(dtype=F32), target, s.steps,
                                              delay=2, noise_std=0.5,
                                              key=jax.random.PRNGKey(2)))()
    np.testing.assert_allclose(states, ref.states[1:], rtol=TOL, atol=TOL)
    np.testing.assert_allclose(inputs, ref.inputs, rtol=TOL, atol=TOL)


def test_gradient_is_the_exact_closed_loop_gradient(trainer):
    """HF's gradient (through `gauss_newton_model`) equals central finite
    differences of the closed-loop loss along a random direction (float64-free
    check: a 1e-3 relative tolerance in float32)."""
    exp = trainer.exp
    params = trainer.initial_state().params
    batch = exp.make_batch(trainer.key, 0)

    model = lambda p: reach.closed_loop_batch(p, TINY, batch)
    lossfn = lambda out: reach.batch_loss(out, batch, TINY)

    v = jax.tree.map(lambda a: jax.random.normal(jax.random.PRNGKey(3), a.shape, a.dtype), params)
    eps = 1e-3

    @jax.jit
    def check(params, v):
        gn = gauss_newton_model(model, lossfn, params)
        dot = lambda a, b: sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
        f = lambda t: lossfn(model(jax.tree.map(lambda p, d: p + t * d, params, v)))
        return dot(gn.grad, v), (f(eps) - f(-eps)) / (2 * eps), dot(gn.matvec(v), v)

    slope, fd, vgv = check(params, v)
    assert abs(float(slope) - float(fd)) <= 2e-2 * abs(float(fd)) + 1e-6
    assert float(vgv) >= 0  # G is positive semi-definite on the closed loop



def test_dense_tangent_arm_has_the_arms_derivatives():
    """`dense_tangent_step(arm.step)`: the same values, and `jacfwd` / `jacrev`
    equal to the plain arm's (the dense step Jacobian is formed from it), also
    beyond the squashing bound and under vmap."""
    import jaxctl.envs.arm as arm

    f = closed_loop.dense_tangent_step(arm.step)
    key = jax.random.PRNGKey(11)
    x = jax.random.normal(key, (5, 4), F32) * jnp.array([1.0, 1.0, 3.0, 9.0], F32)
    u = jax.random.normal(jax.random.fold_in(key, 1), (5, 2), F32)

    @jax.jit
    def values_and_jacobians(x, u):
        return [(jax.vmap(g)(x, u), jax.vmap(jax.jacfwd(g, argnums=(0, 1)))(x, u),
                 jax.vmap(jax.jacrev(g, argnums=(0, 1)))(x, u)) for g in (f, arm.step)]

    (value, fwd, rev), (value_ref, fwd_ref, rev_ref) = values_and_jacobians(x, u)
    np.testing.assert_allclose(value, value_ref, rtol=TOL, atol=TOL)
    for got, want in zip(fwd + rev, fwd_ref + fwd_ref):
        np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(rev_ref[0], fwd_ref[0], rtol=TOL, atol=TOL)


def test_gauss_newton_product_matches_dense_jt_h_j(trainer):
    """The reach model's Gauss-Newton product (stacked-weight RNN step, dense
    tangent arm) equals `J^T H_L J v` built densely: `J` by `jax.jacrev` of the
    flattened model, `H_L` by `jax.hessian` of the loss on the outputs."""
    from jax.flatten_util import ravel_pytree

    short = TINY._replace(steps=4)  # 4 steps keep the dense Jacobian small
    batch = {"target": trainer.exp.make_batch(trainer.key, 0)["target"][:1, :4]}
    params = trainer.initial_state().params
    flat, unravel = ravel_pytree(params)
    model = lambda p: reach.closed_loop_batch(p, short, batch)
    lossfn = lambda out: reach.batch_loss(out, batch, short)
    out_flat = lambda w: ravel_pytree(model(unravel(w)))[0]
    _, unravel_out = ravel_pytree(model(params))
    v = jax.random.normal(jax.random.PRNGKey(5), flat.shape, flat.dtype)

    @jax.jit
    def both(w, v):
        jac = jax.jacrev(out_flat)(w)
        hess = jax.hessian(lambda z: lossfn(unravel_out(z)))(out_flat(w))
        dense = jac.T @ (hess @ (jac @ v))
        gv = ravel_pytree(gauss_newton_model(model, lossfn, unravel(w)).matvec(unravel(v)))[0]
        return gv, dense

    gv, dense = both(flat, v)
    scale = float(jnp.max(jnp.abs(dense)))
    np.testing.assert_allclose(gv, dense, rtol=0, atol=TOL * scale)


def test_training_reduces_loss_and_hand_error(trainer, trained):
    s0, s16 = trained
    before = trainer.evaluate(s0.params)
    after = trainer.evaluate(s16.params)
    assert float(after["loss"]) < 0.5 * float(before["loss"])
    assert np.mean(after["hand_error_mm"]) < 0.85 * np.mean(before["hand_error_mm"])
    assert s16.iteration == 16 and len(s16.history["loss"]) == 16
    assert s16.history["eval_iteration"] == [4, 8, 12, 16]
    assert all(np.isfinite(s16.history["new_loss"]))
    assert all(b <= a for a, b in zip(s16.history["loss"], s16.history["new_loss"]))


def test_resume_is_bitwise_identical(trainer, trained, tmp_path):
    _, s16 = trained
    s8 = trainer.run(trainer.initial_state(), 8, eval_every=4)
    path = str(tmp_path / "ck.npz")
    train.save_reach_checkpoint(path, s8, TINY)
    loaded = train.load_reach_checkpoint(path, TINY, trainer.initial_state())
    _same_tree(loaded.params, s8.params)
    assert loaded.iteration == 8
    resumed = trainer.run(loaded, 16, eval_every=4)
    _same_tree(resumed.params, s16.params)
    _same_tree(resumed.hf_state, s16.hf_state)
    assert resumed.history["new_loss"] == s16.history["new_loss"]
    assert resumed.history["eval_mean_mm"] == s16.history["eval_mean_mm"]


def test_resume_fixed_inputs_mid_window(tmp_path):
    """Regime (b) with hold 2: resuming at iteration 3 (mid-window) needs the
    recorded inputs from the checkpoint."""
    s = TINY._replace(regime="fixed-inputs", hold=2, torque_noise=0.1)
    tr = train.get_trainer(s)
    full = tr.run(tr.initial_state(), 4, eval_every=0)
    part = tr.run(tr.initial_state(), 3, eval_every=0)
    path = str(tmp_path / "ck.npz")
    train.save_reach_checkpoint(path, part, s)
    resumed = tr.run(train.load_reach_checkpoint(path, s, tr.initial_state()), 4, eval_every=0)
    _same_tree(resumed.params, full.params)
    # Every step lowers the loss on its own batch (the batches differ: the noise is redrawn).
    loss, new_loss = np.asarray(full.history["loss"]), np.asarray(full.history["new_loss"])
    assert np.all(new_loss <= loss) and np.any(new_loss < loss), (loss, new_loss)


def test_missing_and_corrupt_checkpoints(trainer, trained, tmp_path):
    template = trainer.initial_state()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train.load_reach_checkpoint(str(tmp_path / "none.npz"), TINY, template)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        train.load_reach_checkpoint(str(garbage), TINY, template)
    # a valid file whose contents were altered: the checksum catches it
    path = str(tmp_path / "ck.npz")
    train.save_reach_checkpoint(path, trained[1], TINY)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["leaf00000"] = arrays["leaf00000"] + np.float32(1e-3)
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match="SHA-256"):
        train.load_reach_checkpoint(path, TINY, template)
    # truncated file
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        train.load_reach_checkpoint(path, TINY, template)


def test_settings_mismatch_is_an_error(trainer, trained, tmp_path):
    path = str(tmp_path / "ck.npz")
    train.save_reach_checkpoint(path, trained[1], TINY)
    other = TINY._replace(damping=1e-2)
    with pytest.raises(CheckpointError, match="damping"):
        train.load_reach_checkpoint(path, other, trainer.initial_state())


def test_non_finite_state_never_reaches_the_checkpoint(trainer, trained, tmp_path):
    path = str(tmp_path / "ck.npz")
    good = trained[1]
    train.save_reach_checkpoint(path, good, TINY)
    before = open(path, "rb").read()
    bad_params = jax.tree.map(lambda a: a.at[(0,) * a.ndim].set(jnp.nan), good.params)
    with pytest.raises(ValueError, match="non-finite"):
        train.save_reach_checkpoint(path, good._replace(params=bad_params), TINY)
    hist = {k: list(v) for k, v in good.history.items()}
    hist["new_loss"][-1] = float("inf")
    with pytest.raises(ValueError, match="loss"):
        train.save_reach_checkpoint(path, good._replace(history=hist), TINY)
    assert open(path, "rb").read() == before
    # and HF itself rejects a step whose loss is not finite: a NaN in the
    # weights gives a NaN loss, the parameters are returned unchanged
    p, st, stats = trainer._step(bad_params, trainer.exp.hf.init(good.params), jnp.int32(0), None)
    assert not bool(stats.accepted)
    _same_tree(p, bad_params)


def test_bad_flags_raise_value_errors():
    with pytest.raises(ValueError, match="--hidden"):
        reach.ReachSettings(hidden=0).validate()
    with pytest.raises(ValueError, match="--regime"):
        reach.ReachSettings(regime="open").validate()
    with pytest.raises(ValueError, match="--delay"):
        reach.ReachSettings(steps=10, delay=10).validate()


def test_cli_end_to_end_with_interrupt_and_resume(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "run")
    flags = ["reach", "--quick", "--out", out, *TINY_FLAGS, "--iterations", "5",
             "--eval-every", "2", "--checkpoint-every", "2"]
    # Ctrl-C after the third iteration: checkpoint saved, clean exit
    real_update = reach_app.Progress.update

    def interrupt(self, count, **metrics):
        real_update(self, count, **metrics)
        if count == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(reach_app.Progress, "update", interrupt)
    with pytest.raises(SystemExit) as exc:
        cli.main(flags)
    assert exc.value.code == 130
    assert "checkpoint of iteration 3" in capsys.readouterr().err
    monkeypatch.setattr(reach_app.Progress, "update", real_update)
    before = open(os.path.join(out, "checkpoint.npz"), "rb").read()
    # a fresh run into the same folder refuses to overwrite it; resuming with
    # other settings is refused: one line each, exit 2, the checkpoint untouched
    for argv, words in ((flags, "pass --resume"),
                        ([*flags[:4], "--hidden", "9", *flags[6:], "--resume"], "hidden")):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and words in err and len(err.splitlines()) == 1, err
    assert open(os.path.join(out, "checkpoint.npz"), "rb").read() == before
    assert cli.main([*flags, "--resume"]) == 0
    with open(os.path.join(out, "results.json")) as f:
        res = json.load(f)["results"]
    assert res["iterations"] == 5
    assert os.path.getsize(os.path.join(out, "reaches.png")) > 10_000
    assert os.path.getsize(os.path.join(out, "learning_curve.png")) > 10_000
    assert 0 <= res["train"]["mean_mm"] <= res["train"]["max_mm"] < 200
    assert res["loss_final"] < res["loss_initial"]
    assert res["train_seconds"] > 0 and res["compile_seconds"] >= 0
    # identical to an uninterrupted run of 5 iterations
    tr = train.get_trainer(TINY)
    ref = tr.run(tr.initial_state(), 5, eval_every=2)
    assert res["history"]["new_loss"] == ref.history["new_loss"]


@pytest.mark.slow
def test_default_settings_reach_sub_millimetre(tmp_path):
    """32 units, T = 40, alpha = 1e-6: mean < 0.1 mm, max < 0.5 mm (with
    DeWolf's (2016) alpha = 1e-4 the loss's own optimum is ~2-5 mm from the targets)."""
    out = str(tmp_path / "run")
    assert cli.main(["reach", "--out", out, "--alpha", "1e-6"]) == 0
    with open(os.path.join(out, "results.json")) as f:
        res = json.load(f)["results"]
    assert res["train"]["mean_mm"] < 0.1 and res["train"]["max_mm"] < 0.5
