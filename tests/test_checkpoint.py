"""`jaxctl.util.checkpoint`: bit-exact round trips of the package's states, and
loud failures on every kind of bad file (missing, truncated, altered, foreign,
of another structure / shape / dtype), with the old file intact after an
interrupted write."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxctl.models.dynamics import dynamics_init, normalization_stats, Transitions
from jaxctl.optim.hf import hessian_free
from jaxctl.optim.npg import npg
from jaxctl.util import checkpoint as ck


def _params():
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    return {"w": jax.random.normal(k1, (3, 2)), "b": jax.random.normal(k2, (2,))}


def _assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert type(x) is type(y) or (isinstance(x, jax.Array) and isinstance(y, jax.Array))
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        assert np.asarray(x).dtype == np.asarray(y).dtype


def _hf_state():
    hf = hessian_free(lambda p, batch: batch @ p["w"] + p["b"],
                      lambda out, batch: jnp.mean(out ** 2))
    return jax.tree.map(lambda a: a + 3, hf.init(_params()))  # non-trivial values, same dtypes


def _npg_state():
    tx = optax.chain(npg(0.01), optax.scale(-1.0))
    return tx.init(_params())


def _dynamics_model():
    key = jax.random.PRNGKey(1)
    data = Transitions(jax.random.normal(key, (20, 3)), jax.random.normal(key, (20, 1)),
                       jax.random.normal(jax.random.PRNGKey(2), (20, 3)))
    return dynamics_init(key, normalization_stats(data), (8,))


@pytest.mark.parametrize("make", [_hf_state, _npg_state, _dynamics_model],
                         ids=["HFState", "NPGState", "DynamicsModel"])
def test_round_trip_is_bit_exact(tmp_path, make):
    state = make()
    path = str(tmp_path / "state.npz")
    ck.save_checkpoint(path, state, {"iteration": 3})
    template = jax.tree.map(jnp.zeros_like, state)
    restored = ck.restore_checkpoint(path, template)
    _assert_same(restored, state)
    assert ck.checkpoint_metadata(path) == {"iteration": 3}


def test_mixed_leaves_come_back_as_the_template_kind(tmp_path):
    tree = {"key": jax.random.key(3), "raw_key": jax.random.PRNGKey(4),
            "np": np.arange(4, dtype=np.int16), "count": 7, "lr": 0.5, "none": None,
            "x64": np.float64(1) / 3}
    path = str(tmp_path / "mixed.npz")
    ck.save_checkpoint(path, tree)
    template = {"key": jax.random.key(0), "raw_key": jax.random.PRNGKey(0),
                "np": np.zeros(4, np.int16), "count": 0, "lr": 0.0, "none": None,
                "x64": np.float64(0)}
    out = ck.restore_checkpoint(path, template)
    assert out["count"] == 7 and isinstance(out["count"], int) and out["lr"] == 0.5
    assert out["none"] is None and out["x64"] == np.float64(1) / 3
    np.testing.assert_array_equal(jax.random.key_data(out["key"]), jax.random.key_data(tree["key"]))
    np.testing.assert_array_equal(out["raw_key"], tree["raw_key"])
    assert out["np"].dtype == np.int16


def test_missing_truncated_altered_and_foreign_files(tmp_path):
    template = _params()
    with pytest.raises(ck.CheckpointError, match="no checkpoint"):
        ck.restore_checkpoint(str(tmp_path / "none.npz"), template)
    path = str(tmp_path / "ck.npz")
    ck.save_checkpoint(path, template)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(ck.CheckpointError, match="corrupt"):
        ck.restore_checkpoint(path, template)
    # one flipped bit inside the first leaf's data: the zip CRC or the SHA-256 catches it
    ck.save_checkpoint(path, template)
    data = bytearray(open(path, "rb").read())
    offset = data.index(np.asarray(template["b"]).tobytes())
    data[offset] ^= 1
    open(path, "wb").write(bytes(data))
    with pytest.raises(ck.CheckpointError, match="corrupt"):
        ck.restore_checkpoint(path, template)
    # a valid npz with consistent CRCs but altered values: only the SHA-256 sees it
    ck.save_checkpoint(path, template)
    with np.load(path) as f:
        entries = {k: f[k] for k in f.files}
    entries["leaf00000"] = entries["leaf00000"] + np.float32(1e-3)
    np.savez(path, **entries)
    with pytest.raises(ck.CheckpointError, match="SHA-256"):
        ck.restore_checkpoint(path, template)
    np.savez(path, a=np.zeros(3))
    with pytest.raises(ck.CheckpointError, match="not a jaxctl checkpoint"):
        ck.restore_checkpoint(path, template)


def test_template_mismatches_name_the_leaf(tmp_path):
    path = str(tmp_path / "ck.npz")
    ck.save_checkpoint(path, _params())
    with pytest.raises(ck.CheckpointError, match=r"missing \[\"\['c'\]\"\]"):
        ck.restore_checkpoint(path, {**_params(), "c": jnp.zeros(1)})
    f = str(jnp.zeros(()).dtype)  # float32, or float64 under jax_enable_x64
    with pytest.raises(ck.CheckpointError, match=rf"\['b'\] is {f}\[2\].*{f}\[3\]"):
        ck.restore_checkpoint(path, {**_params(), "b": jnp.zeros(3)})
    with pytest.raises(ck.CheckpointError, match=rf"\['w'\] is {f}.*int8"):
        ck.restore_checkpoint(path, {**_params(), "w": jnp.zeros((3, 2), jnp.int8)})


def test_interrupted_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = str(tmp_path / "ck.npz")
    old = _params()
    ck.save_checkpoint(path, old)
    before = open(path, "rb").read()

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(path, jax.tree.map(lambda a: a + 1, old))
    monkeypatch.undo()
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["ck.npz"]  # no temporary file left behind
    with pytest.raises(TypeError):
        ck.save_checkpoint(path, old, {"bad": object()})
    assert open(path, "rb").read() == before
