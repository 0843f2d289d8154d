"""One model, many paths (`jaxctl.experiments.path_following`, `jaxctl mpc --follow-paths`).

Oracles: translation equivariance of the translation-free model, the
closure form of `waypoint_reward`, and point-to-segment distances in numpy
(rejected flags are rows of tests/test_cli_flags.py).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxctl.apps import cli
from jaxctl.envs.mbrl_tasks import waypoint_reward
from jaxctl.experiments.mbrl import Buffer
from jaxctl.experiments.path_following import (PathSettings, add_relative, path_reward, paths,
                                               relative_dynamics)
import jaxctl.models.dynamics as dyn

pytest.importorskip("mujoco")


def test_add_relative_and_translation_equivariance():
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(6, 4)).astype(np.float32)
    act = rng.normal(size=(5, 1)).astype(np.float32)
    buf = Buffer(8, 4, 1)
    add_relative(buf, obs, act)
    np.testing.assert_array_equal(buf.states[:5, :2], 0.0)
    np.testing.assert_allclose(buf.next_states[:5, :2], obs[1:, :2] - obs[:5, :2], rtol=1e-6)
    np.testing.assert_array_equal(buf.states[:5, 2:], obs[:5, 2:])
    stats = dyn.normalization_stats(buf.data(), buf.count)
    model = dyn.dynamics_init(jax.random.PRNGKey(0), stats, (16,))
    f = relative_dynamics(model)
    s, a, shift = jnp.asarray(obs[0]), jnp.asarray(act[0]), jnp.array([3.0, -7.0, 0.0, 0.0])
    # Moving the swimmer moves its prediction by as much and changes nothing else.
    np.testing.assert_allclose(f(s + shift, a), f(s, a) + shift, atol=1e-5)
    raw = dyn.dynamics_predict(model, s.at[:2].set(0.0), a)
    np.testing.assert_allclose(f(s, a), raw.at[:2].add(s[:2]), atol=1e-6)


def test_path_reward_is_waypoint_reward_minus_the_heading_error():
    cfg = PathSettings(progress_weight=25.0, distance_weight=0.5, heading_weight=2.0)
    wp = paths(3.0)["left"]  # (0, 0) -> (1.5, 0) -> (1.5, 1.5)
    closure = waypoint_reward(jnp.asarray(wp), progress_weight=25.0, distance_weight=0.5)
    a = jnp.zeros(2)
    # Nearest to the first segment (direction 0) with yaw 0.3; then to the second (pi / 2)
    # with yaw -3 (wrapped: |-3 - pi/2| = 4.57 -> 2 pi - 4.57).
    for s, s2, off in [(jnp.array([1.0, 0.2, 0.0]), jnp.array([1.2, 0.1, 0.3]), 0.3),
                       (jnp.array([1.4, 0.5, 0.0]), jnp.array([1.6, 0.9, -3.0]),
                        2 * np.pi - (3.0 + np.pi / 2))]:
        np.testing.assert_allclose(path_reward(wp, cfg)(s, a, s2),
                                   closure(s, a, s2) - 2.0 * off, rtol=1e-5)
    assert {k: v.shape for k, v in paths(2.0).items()} == {k: (3, 2) for k in paths(2.0)}
    with pytest.raises(ValueError, match="length"):
        paths(np.float32(0.0))


def _distance(wp, p):
    """Point-to-polyline distance, written out in numpy."""
    best = np.inf
    for a, b in zip(wp[:-1], wp[1:]):
        t = np.clip(np.dot(p - a, b - a) / np.dot(b - a, b - a), 0.0, 1.0)
        best = min(best, np.linalg.norm(p - (a + t * (b - a))))
    return best


def test_follow_paths_command(tmp_path):
    out = tmp_path / "run"
    cli.main(["mpc", "--quick", "--follow-paths", "--out", str(out)])
    res = json.loads((out / "results.json").read_text())["results"]
    run = res["paths"][0]
    assert set(run["paths"]) == {"straight", "left", "right"}
    for name, p in run["paths"].items():
        xy, wp = np.asarray(p["positions"]), np.asarray(run["waypoints"][name])
        assert xy.shape == (21, 2)  # --quick: 20 steps
        mean = np.mean([_distance(wp, q) for q in xy])
        assert abs(mean - p["mean_distance"]) < 1e-5
    assert (out / "paths.png").stat().st_size > 0
