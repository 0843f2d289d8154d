"""Two processes x two CPU devices (`jax.distributed` on localhost, gloo collectives)
give the results of one process with four devices (tests/distributed_worker.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "distributed_worker.py")
EPS32 = float(jnp.finfo(jnp.float32).eps)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def results(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow  # three jax processes: ~40 s of CPU, over the fast suite's budget
def test_two_processes_equal_one_process():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    port = str(free_port())
    start = lambda *args: subprocess.Popen([sys.executable, WORKER, *args], env=env, text=True,
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs = [start(port, "0"), start(port, "1")]
    multi = [results(p) for p in procs]
    single = results(start("single"))
    assert [r["processes"] for r in multi] == [2, 2] and single["processes"] == 1
    assert all(r["devices"] == 4 for r in multi + [single])
    for r in multi:
        # Same programs, the collectives crossing processes: float32 roundings of the
        # reductions only (CG on a Fisher damped by 0.1, condition number ~10).
        for name in ("cg", "tsqr"):
            a, b = np.asarray(r[name]), np.asarray(single[name])
            assert np.max(np.abs(a - b)) <= 1000 * EPS32 * np.max(np.abs(b)), name
        # The CEM plan selects the same elites.
        np.testing.assert_allclose(r["cem"], single["cem"], rtol=0, atol=16 * EPS32)


def test_launcher_flag_errors(capsys, monkeypatch):
    from jaxctl.apps.launch import main
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    for argv, message in ((["--process-id", "0", "reach"], "go together"),
                          (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2",
                            "reach"], "must be <"),
                          ([], "give the jaxctl command")):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
