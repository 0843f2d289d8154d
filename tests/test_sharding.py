"""The sharding layer: mesh helpers in-process (one device), everything multi-device
in ONE subprocess on 8 fake CPU devices (tests/sharding_checks.py), so the rest
of the suite keeps its single device and jax compiles the checks once."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxctl.core.sharded import sharded_natural_gradient, sharded_scores
from jaxctl.util.mesh import data_mesh, replicate, shard_along, spec_along

HERE = os.path.dirname(os.path.abspath(__file__))
N = 8
EPS32 = float(jnp.finfo(jnp.float32).eps)


def run_checks(*groups: str, devices: int = N) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, os.path.join(HERE, "sharding_checks.py"), *groups],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def multi():
    return run_checks("curvature", "planners", "mpc")


@pytest.fixture(scope="module")
def multi_slow():
    return run_checks("hf", "sessions")


# ---------------------------------------------------------------------------
# One device, in process.


def test_data_mesh_and_placement():
    mesh = data_mesh(1)
    assert dict(mesh.shape) == {"data": 1}
    x = shard_along(jnp.ones((4, 2)), mesh, dim=1)
    assert x.sharding.spec == spec_along(2, "data", 1)
    assert replicate({"a": jnp.ones(3)}, mesh)["a"].sharding.is_fully_replicated


def test_mesh_errors():
    with pytest.raises(ValueError, match="n must be <="):
        data_mesh(len(jax.devices()) + 1)
    with pytest.raises(ValueError, match="dim must be <"):
        spec_along(1, "data", 1)
    with pytest.raises(ValueError, match="mesh axes"):
        shard_along(jnp.ones(4), data_mesh(1), axis="batch")


def test_sharded_natural_gradient_errors():
    mesh, G = data_mesh(1), jnp.ones((3, 4))
    with pytest.raises(ValueError, match="T / N >= P"):
        sharded_natural_gradient(G, jnp.ones(4), mesh=mesh, method="tsqr")
    with pytest.raises(ValueError, match="rel_damping"):
        sharded_natural_gradient(G, jnp.ones(4), mesh=mesh, rel_damping=0.1)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        sharded_natural_gradient(G, jnp.ones(3), mesh=mesh)
    with pytest.raises(ValueError, match="at least one"):
        sharded_scores(lambda w: w.sum(), jnp.ones(2), mesh=mesh)


def test_non_finite_scores_give_zero_direction():
    G = jnp.ones((4, 2)).at[1, 0].set(jnp.nan)
    for method in ("cg", "tsqr"):
        x = sharded_natural_gradient(G, jnp.ones(2), mesh=data_mesh(1), method=method)
        assert np.array_equal(np.asarray(x), np.zeros(2))


# ---------------------------------------------------------------------------
# Eight fake CPU devices, one subprocess.


def test_curvature_equals_one_device(multi):
    c = multi["curvature"]
    assert multi["devices"] == N and c["n"] == N
    # Each device computed and holds T / N rows of G only.
    assert c["scores_sharded"] and c["scores_local_rows"] == c["T"] // N
    # Same sums in another order: a few float32 roundings per entry.
    for name in ("scores_err", "fvp_err", "operator_err"):
        assert c[name] <= 64 * EPS32, (name, c[name])
    # CG on a Fisher damped by 0.1 (condition number ~10): roundings times ~10.
    assert c["ng_cg_err"] <= 1000 * EPS32
    # TSQR vs SVD with rel_damping 1e-3: condition number <= 1001 amplifies eps.
    assert c["ng_tsqr_err"] <= 32 * EPS32 * 1001
    # jaxctl.npg(mesh=...) on sharded scores: the same normalized steps.
    assert c["npg_err"]["dense"] <= 32 * EPS32 * 1001
    assert c["npg_err"]["cg"] <= 1000 * EPS32


def dims(shapes):
    """HLO result shapes without their dtype (f32 or, under x64, f64)."""
    return [s[s.index("["):] for s in shapes]


def test_curvature_hlo_collectives(multi):
    c = multi["curvature"]
    T, P = c["T"], c["P"]
    # CG route: the Fisher-vector products are (P,) all-reduces; nothing is gathered.
    assert f"[{P}]" in dims(c["hlo_cg"]["all-reduce"])
    assert c["hlo_cg"]["all-gather"] == []
    # TSQR: only the N stacked (P, P) factors are gathered, never the (T, P) scores.
    assert dims(c["hlo_tsqr"]["all-gather"]) == [f"[{N * P},{P}]"]
    assert f"[{T},{P}]" not in dims(sum(c["hlo_tsqr"].values(), []))


def test_curvature_memory_per_device_shrinks(multi):
    # Scores of 8192 samples and one product: the per-device bytes of XLA's memory
    # analysis (arguments + outputs + temporaries) fall about as 1/N; between 0.5/N
    # and 1.25/N (the 1-device program keeps a few more temporaries).
    ratio = multi["curvature"]["memory_bytes"] / multi["curvature_memory_1"]
    assert 0.25 / N <= ratio <= 1.25 / N, ratio


@pytest.mark.parametrize("planner", ["random_shooting", "cem", "mppi"])
def test_planners_equal_one_device(multi, planner):
    p = multi["planners"]
    # Same key, same candidates, same scores: the selection picks the same rows
    # (random shooting, CEM); MPPI's weighted sum adds in another order.
    tol = (64 if planner == "mppi" else 4) * EPS32
    for kind in ("auto", "explicit", "vmap"):
        assert p[f"{planner}_{kind}_err"] <= tol, (kind, p[f"{planner}_{kind}_err"])
    for kind in ("auto", "explicit"):
        assert p[f"{planner}_{kind}_reward_err"] <= 64 * EPS32


def test_mpc_episodes_split_over_devices_equal_one_device(multi):
    m = multi["mpc"]
    # each device plans and steps its own episodes: the same arithmetic as on one device
    assert m["rewards_sharded"] and m["rewards_nonzero"]
    assert m["rewards_err"] <= 4 * EPS32 and m["actions_err"] <= 4 * EPS32


def test_mpc_devices_flag_errors(capsys):
    from jaxctl.apps.cli import main
    with pytest.raises(SystemExit) as exc:
        main(["mpc", "--quick", "--devices", "64"])
    assert exc.value.code == 2
    assert "--devices 64: only" in capsys.readouterr().err


def test_cem_collectives_are_small(multi):
    hlo = multi["planners"]["cem_hlo"]
    # The K = 64 scores are gathered and the E = 6 elites (6, H = 6, m = 2) all-reduced;
    # the (K, H, m) candidates never move.
    assert dims(hlo["all-gather"]) == ["[64]"]
    assert dims(hlo["all-reduce"]) == ["[6,6,2]"]


@pytest.mark.slow
def test_hessian_free_reach_equals_one_device(multi_slow):
    h = multi_slow["hf"]
    assert h["loss_err"] <= 64 * EPS32
    # One HF step: the loss after it agrees to the 200 ulps test_reach allows for
    # reordered float32 sums; the parameters to CG's amplification of those
    # roundings by the condition number of the Gauss-Newton matrix damped by 1e-3
    # (~1e3-1e4), so 1e4 ulps.
    assert h["new_loss_err"] <= 200 * EPS32
    assert h["params_err"] <= 1e4 * EPS32
    assert h["params_replicated"]
    # The loss, gradient and Gauss-Newton product themselves: reordered sums only.
    assert h["gn_pieces_err"] <= 16 * EPS32
    # Gradients and Gauss-Newton products: every parameter shape is all-reduced (XLA
    # may transpose a matrix, so dimensions compare as sorted lists), the batch is
    # never gathered.
    reduced = {tuple(sorted(json.loads(d))) for d in dims(h["hlo"]["all-reduce"])}
    for shape in h["param_shapes"]:
        assert tuple(sorted(json.loads(shape))) in reduced, shape
    assert h["hlo"]["all-gather"] == []


def test_reach_devices_flag_errors(capsys):
    from jaxctl.apps.cli import main
    with pytest.raises(SystemExit) as exc:
        main(["reach", "--quick", "--devices", str(len(jax.devices()) + 1)])
    assert exc.value.code == 2
    assert "--devices" in capsys.readouterr().err


@pytest.mark.slow
def test_npg_sessions_equal_one_device(multi_slow):
    r = multi_slow["sessions"]
    # Sessions are independent: each device runs its own, no communication, so
    # the same rollouts give the same returns; the step sizes agree to roundings.
    assert r["return_err"] <= 64 * EPS32
    assert r["step_size_err"] <= 1000 * EPS32
    assert r["policy_sharded"] and r["batch"] == [4] * N
