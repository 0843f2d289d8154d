"""Every rejected flag of the `jaxctl` commands: one line naming the flag on
stderr, exit code 2, no traceback, nothing written; and explicit flags
override the `--quick` sizes."""

import os
import subprocess
import sys

import pytest

import jaxctl.apps.mpc as mpc_app
from jaxctl.apps.cli import build_parser, main

BAD = [
    ("reach", ["--iterations", "0"], "--iterations"),
    ("reach", ["--hidden", "0"], "--hidden"),
    ("reach", ["--hidden", "2.5"], "--hidden"),
    ("reach", ["--steps", "1"], "--steps"),
    ("reach", ["--damping", "0"], "--damping"),
    ("reach", ["--torque-noise", "-1"], "--torque-noise"),
    ("reach", ["--alpha", "nan"], "--alpha"),
    ("reach", ["--checkpoint-every", "0"], "--checkpoint-every"),
    ("reach", ["--eval-every", "-1"], "--eval-every"),
    ("reach", ["--steps", "10", "--delay", "10"], "--delay"),
    ("reach", ["--resume"], "--resume"),
    ("npg", ["--value-epochs", "-1"], "--value-epochs"),
    ("npg", ["--pg-lr", "-0.1"], "--pg-lr"),
    ("npg", ["--delta", "0"], "--delta"),
    ("npg", ["--sessions", "0"], "--sessions"),
    ("npg", ["--pendulum-envs", "0"], "--pendulum-envs"),
    ("npg", ["--gamma", "1.5"], "--gamma"),
    ("npg", ["--variants", "npg-damped,sgd"], "--variants"),
    ("npg", ["--variants", ","], "--variants"),
    ("npg", ["--policy-hidden", "0"], "--policy-hidden"),
    ("npg", ["--mbmf-rounds", "2"], "--mbmf-rounds"),
    ("npg", ["--mbmf-rounds", "2", "--task", "hopper"], "--mbmf-rounds"),
    ("npg", ["--mbmf-rounds", "-1", "--task", "swimmer"], "--mbmf-rounds"),
    ("mpc", ["--tasks", ","], "--tasks"),
    ("mpc", ["--tasks", "pendulum,moon"], "--tasks"),
    ("mpc", ["--horizon", "-1"], "--horizon"),
    ("mpc", ["--iterations", "-1"], "--iterations"),
    ("mpc", ["--num-samples", "0"], "--num-samples"),
    ("mpc", ["--pitch-penalty", "5"], "--pitch-penalty"),
    ("mpc", ["--rollouts-per-round", "2", "--tasks", "swimmer", "--pitch-penalty", "5"],
     "--pitch-penalty"),
    ("mpc", ["--rollouts-per-round", "2", "--pitch-penalty", "0"], "--pitch-penalty"),
    ("mpc", ["--follow-paths", "--rollouts-per-round", "2"], "--follow-paths"),
    ("mpc", ["--follow-paths", "--epochs", "3"], "--follow-paths"),
    ("mpc", ["--follow-paths", "--tasks", "swimmer"], "--follow-paths"),
    ("bench", ["--repeats", "0"], "--repeats"),
    ("bench", ["--delta", "-1"], "--delta"),
    ("bench", ["--sizes", "0"], "--sizes"),
    ("bench", ["--wide-T", "0"], "--wide-T"),
]


def _rejected(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("command, flags, name", BAD,
                         ids=[f"{c} {' '.join(f)}" for c, f, _ in BAD])
def test_bad_value_is_one_line_exit_2_nothing_written(tmp_path, capsys, command, flags, name):
    out = tmp_path / "run"
    err = _rejected([command, "--quick", "--out", str(out), *flags], capsys)
    assert name in err
    assert not out.exists()


def test_resume_without_a_checkpoint_or_with_a_corrupt_one(tmp_path, capsys):
    out = tmp_path / "run"
    err = _rejected(["reach", "--quick", "--out", str(out), "--resume"], capsys)
    assert "no checkpoint" in err and not out.exists()
    out.mkdir()
    (out / "checkpoint.npz").write_bytes(b"not a checkpoint")
    err = _rejected(["reach", "--quick", "--out", str(out), "--resume"], capsys)
    assert "corrupt" in err
    assert os.listdir(out) == ["checkpoint.npz"]
    assert (out / "checkpoint.npz").read_bytes() == b"not a checkpoint"


def test_out_naming_a_file(tmp_path, capsys):
    path = tmp_path / "results.txt"
    path.write_text("keep me")
    for command in ("reach", "npg", "mpc", "bench"):
        err = _rejected([command, "--quick", "--out", str(path)], capsys)
        assert "--out" in err and "not a folder" in err
    assert path.read_text() == "keep me"


def test_mpc_flags_override_the_quick_sizes():
    args = build_parser().parse_args(["mpc", "--quick", "--num-samples", "7", "--horizon", "3",
                                      "--iterations", "2"])
    mpc_app.prepare(args)
    assert args.tasks == ["pendulum", "halfcheetah"]
    for task in args.tasks:
        cfg = mpc_app.task_settings(task, args)
        assert (cfg.num_samples, cfg.horizon, cfg.iterations) == (7, 3, 2)
    quick = build_parser().parse_args(["mpc", "--quick"])
    mpc_app.prepare(quick)
    assert mpc_app.task_settings("halfcheetah", quick).num_samples == 100  # the quick default


def test_single_thread_is_refused_once_jax_has_run():
    code = ("import jax, os; from jaxctl.apps.common import request_single_thread; "
            "request_single_thread(); print(os.environ['XLA_FLAGS']); jax.numpy.ones(1) + 1; "
            "request_single_thread()")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert "intra_op_parallelism_threads=1" in run.stdout
    assert run.returncode == 1 and "before jax runs anything" in run.stderr
