"""Smoke test of `jaxctl spiking --quick --task digits` and its flag checks."""

import json
import os

import pytest

from jaxctl.apps import cli


@pytest.fixture
def only_spiking(monkeypatch):
    # only this command is registered, so the test does not depend on the others' modules
    monkeypatch.setattr(cli, "COMMANDS", {"spiking": cli.COMMANDS["spiking"]})


def test_jaxctl_spiking_quick_digits(tmp_path, only_spiking):
    assert cli.main(["spiking", "--quick", "--task", "digits", "--out", str(tmp_path)]) == 0
    with open(tmp_path / "results.json") as f:
        payload = json.load(f)
    assert payload["settings"]["quick"] is True and payload["settings"]["tau"] == 0.01
    res = payload["results"]
    assert "cartpole" not in res
    for key in ("rate_accuracy", "spiking_accuracy", "spiking_accuracy_window"):
        assert 0.0 <= res[key]["mean"] <= 1.0 and len(res[key]["per_seed"]) == 2
    assert res["rate_accuracy"]["mean"] > 0.8  # chance is 0.1
    assert set(res["sweeps"]) == {"presentation_untuned", "presentation", "tau", "scale",
                                  "regularised"}
    for name in ("presentation_untuned", "presentation", "tau", "scale"):
        assert all(0.0 <= r["accuracy"]["mean"] <= 1.0 for r in res["sweeps"][name])
    # the untuned network is silent at 30 steps, exactly as its rates predict
    untuned = res["sweeps"]["presentation_untuned"][0]
    assert untuned["setting"]["n_steps"] == 30 and untuned["spikes_per_image"] == 0
    assert untuned["predicted_spikes_per_image_seed0"] == 0
    for name in ("spiking_raster.png", "spiking_output.png", "spiking_accuracy.png"):
        assert os.path.getsize(tmp_path / name) > 10_000


@pytest.mark.parametrize("flags, name", [
    (["--steps", "0"], "--steps"), (["--scale", "0"], "--scale"), (["--tau", "-0.1"], "--tau"),
    (["--seeds", "1"], "--seeds"), (["--task", "mnist"], "--task"),
    (["--taus", "0.01", "x"], "--taus"),
])
def test_bad_flag_is_one_line_exit_2(tmp_path, capsys, only_spiking, flags, name):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        cli.main(["spiking", "--quick", "--out", str(out), *flags])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and name in err, err
    assert not out.exists()


def test_tau_none_is_a_value(only_spiking):
    import jaxctl.apps.spiking as app

    parser = cli.build_parser()
    args = parser.parse_args(["spiking", "--quick", "--tau", "none", "--steps", "20"])
    app.prepare(args)
    study = app.study_settings(args)
    assert study.spiking.tau is None and study.spiking.n_steps == 20 and study.seeds == 2
