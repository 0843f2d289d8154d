"""`jaxctl bench --quick` end to end: runs, checks itself, writes its results."""

import json
import os

import pytest

from jaxctl.apps.cli import build_parser, main


def test_bench_quick_writes_results(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["bench", "--quick", "--repeats", "1", "--loop-samples", "4",
                 "--wide-T", "64", "--out", str(out)]) == 0
    with open(out / "results.json") as f:
        payload = json.load(f)
    results = payload["results"]
    assert payload["command"] == "bench" and payload["settings"]["quick"] is True
    assert payload["environment"]["jax"]
    (per_sample,) = results["per_sample_grads"]
    assert per_sample["P"] == 1284 and per_sample["max_abs_error_vs_grad_loop"] < 1e-4
    (step,) = results["npg_step"]
    assert step["cosine_vs_float64"]["svd"] >= 0.999 and step["cosine_vs_float64"]["qr"] >= 0.999
    assert step["cosine_vs_float64"]["chol"] >= 0.999  # against the damped float64 solve
    assert all(ms > 0 for ms in step["ms"].values())
    (wide,) = results["matrix_free"]
    assert wide["relative_residual"] < 1.0 and wide["xla_temp_mb"] > 0
    assert os.path.exists(out / "bench.md")
    assert "Full normalized NPG step" in capsys.readouterr().out


def test_help_documents_every_command():
    parser = build_parser()
    text = parser.format_help()
    assert "bench" in text
    sub = parser._subparsers._group_actions[0].choices["bench"].format_help()
    for flag in ("--out", "--quick", "--single-thread", "--sizes", "--repeats"):
        assert flag in sub


def test_bench_suite_all_quick_checks_and_rates_every_kernel(tmp_path):
    out = tmp_path / "suite"
    assert main(["bench", "--suite", "all", "--quick", "--repeats", "1", "--out", str(out)]) == 0
    with open(out / "results.json") as f:
        results = json.load(f)["results"]
    groups = {r["kernel"] for r in results["kernels"]}
    assert groups == {"per-sample gradients", "NPG step (qr)", "FVP + CG", "Gauss-Newton product (arm)",
                      "HF iteration (arm)", "planning step (random shooting)", "spiking network"}
    assert len(results["matmul_gflops"]) == 2 and min(results["matmul_gflops"]) > 0
    for r in results["kernels"]:
        assert r["ms"] > 0 and r["compile_s"] > 0 and r["model_gflop"] > 0, r
        rate = r["gflops"] / max(results["matmul_gflops"])
        assert r["fraction_of_matmul_rate"] == pytest.approx(rate, rel=1e-9) and rate > 0, r
        assert r["checks"], r  # each kernel's oracle ran and reported
    step = next(r for r in results["kernels"] if r["kernel"] == "NPG step (qr)")
    assert abs(step["checks"]["step_norm_over_delta"] - 1) < 1e-2
    assert "fraction of matmul" in (out / "bench.md").read_text()
