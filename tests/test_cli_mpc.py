"""Smoke test of `jaxctl mpc --quick`: runs end to end, writes sane results.json and the PNG."""

import json
import math
import os

from jaxctl.apps import cli


def test_jaxctl_mpc_quick(tmp_path, monkeypatch):
    # Only the mpc command is registered here, so this test does not depend on
    # other commands' modules being importable.
    monkeypatch.setattr(cli, "COMMANDS", {"mpc": cli.COMMANDS["mpc"]})
    assert cli.main(["mpc", "--quick", "--out", str(tmp_path)]) == 0
    png = tmp_path / "mpc.png"
    assert png.exists() and os.path.getsize(png) > 10_000
    with open(tmp_path / "results.json") as f:
        payload = json.load(f)
    assert payload["command"] == "mpc" and payload["settings"]["quick"] is True
    tasks = payload["results"]["tasks"]
    assert set(tasks) == {"Pendulum-v1", "HalfCheetah-v5"}
    pend = tasks["Pendulum-v1"]
    # Random torques on Pendulum score about -1200; even the tiny MPC run must do far better.
    assert -1800 < pend["random_return_mean"] < -600
    assert pend["mpc_return_per_iteration"][-1] > pend["random_return_mean"] + 300
    cheetah = tasks["HalfCheetah-v5"]
    for value in (cheetah["random_return_mean"], *cheetah["mpc_return_per_iteration"],
                  *cheetah["horizon_sweep"]["returns"].values(), *cheetah["open_loop_error"]):
        assert math.isfinite(value)
    assert cheetah["transitions"] > 0 and len(cheetah["data_size_study"]["returns"]) == 2
