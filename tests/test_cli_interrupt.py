"""Ctrl-C (SIGINT) at any moment of `jaxctl reach`: exit code 130, one line,
no traceback or crash, the last good checkpoint intact (a real subprocess,
signalled during XLA compilation and during training)."""

import os
import signal
import subprocess
import sys
import time

import pytest

import jaxctl.experiments.reach_train as train
from jaxctl.apps.reach import CHECKPOINT_NAME
from jaxctl.experiments.reach_model import ReachSettings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--hidden", "8", "--steps", "10", "--targets", "8", "--cg-maxiter", "10",
         "--eval-every", "0", "--checkpoint-every", "2"]
SETTINGS = ReachSettings(hidden=8, steps=10, targets=8, cg_maxiter=10)


def _start(out, iterations):
    return subprocess.Popen(
        [sys.executable, "-m", "jaxctl.apps.cli", "reach", "--quick", "--out", str(out), *FLAGS,
         "--iterations", str(iterations)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _interrupt(proc):
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    last = err.strip().splitlines()[-1]
    return last, err


@pytest.mark.parametrize("delay", [0.0, 0.5])
def test_ctrl_c_during_compilation(tmp_path, delay):
    out = tmp_path / "run"
    proc = _start(out, 1000)
    _wait_for(out, proc)  # the folder exists: the trainer is being built and compiled
    time.sleep(delay)
    last, err = _interrupt(proc)
    assert "compiled in" not in err, "the signal came too late to test compilation"
    assert last.startswith("interrupted")
    assert not os.path.exists(out / CHECKPOINT_NAME)


def test_ctrl_c_during_training_keeps_a_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = _start(out, 100_000)
    _wait_for(out / CHECKPOINT_NAME, proc)
    last, _ = _interrupt(proc)
    assert last.startswith("interrupted: checkpoint of iteration")
    saved = int(last.split("iteration ")[1].split()[0])
    tr = train.get_trainer(SETTINGS)
    state = train.load_reach_checkpoint(str(out / CHECKPOINT_NAME), SETTINGS, tr.initial_state())
    assert state.iteration == saved >= 2 and len(state.history["loss"]) == saved
    assert [f for f in os.listdir(out) if f.startswith(".tmp")] == []
