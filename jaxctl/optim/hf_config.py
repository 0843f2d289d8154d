"""The settings of `hessian_free`, in three groups, each handed to its piece.

`CGConfig` goes to the inner solve (`jaxctl.core.martens_cg.martens_cg` and its
warm start and preconditioner), `DampingConfig` to the Levenberg-Marquardt
rule and the structural damping of the curvature, `LineSearchConfig` to CG
backtracking and the Armijo search. The defaults are those of Martens (2010)
and Martens & Sutskever (2011), and of the `hessianfree` library of DeWolf
(2016). Each group is validated once, when the optimizer is built.
"""

from __future__ import annotations

from typing import NamedTuple

from jaxctl.util import checks


class CGConfig(NamedTuple):
    """The inner CG solve of one Hessian-free step (Martens 2010, section 4).

    Attributes:
      maxiter: CG budget per step (static int >= 1; `hessianfree`'s `CG_iter`).
      tol: Martens' relative-progress tolerance per step of gap (>= 0; Martens
        2010 used 5e-4, `hessianfree` 5e-6); see `martens_cg`.
      min_gap, gap_fraction: the progress window `k = max(min_gap,
        floor(gap_fraction i))` (int >= 1, >= 0).
      warm_start_factor: CG starts from this times the previous CG solution
        (in [0, 1]; Martens 2010, section 4.5: 0.95).
      store_first, store_ratio: the geometric schedule of iterates kept for
        backtracking (int >= 1, > 1; `martens_schedule`).
      preconditioner: `None` or `"martens"`: `M = (diag(mean_i g_i^2) +
        lambda)^xi` from per-example gradients (every batch leaf must carry
        examples on its leading axis, and `model` / `loss` must accept a
        batch of one).
      preconditioner_exponent: `xi` (> 0; Martens 2010: 0.75).
    """

    maxiter: int = 250
    tol: float = 5e-6
    min_gap: int = 10
    gap_fraction: float = 0.1
    warm_start_factor: float = 0.95
    store_first: int = 5
    store_ratio: float = 1.3
    preconditioner: str | None = None
    preconditioner_exponent: float = 0.75


class DampingConfig(NamedTuple):
    """Tikhonov and structural damping (Martens 2010, 4.1; Martens & Sutskever 2011).

    Attributes:
      initial: the first `lambda` (Martens and `hessianfree`: 1; for a
        batch-mean loss of small scale start lower, e.g. 1e-3 -- the rule
        adapts it either way within `bounds`).
      increase, decrease: `lambda *= increase` if `rho < low`, `lambda *=
        decrease` if `rho > high` (> 1 and in (0, 1)).
      low, high: the thresholds on the reduction ratio `rho` (0 <= low <= high).
      bounds: `(min, max)` clamp of `lambda` (0 < min <= max).
      reject_increase: factor on `lambda` when a step is rejected (non-finite
        loss or gradient, or CG broke down before its first step; > 1).
      structural: `mu`, the weight of `lambda mu J_h^T J_h / B` added to the
        curvature (finite, >= 0; 0 disables).
    """

    initial: float = 1.0
    increase: float = 1.5
    decrease: float = 2.0 / 3.0
    low: float = 0.25
    high: float = 0.75
    bounds: tuple[float, float] = (1e-8, 1e8)
    reject_increase: float = 1.5
    structural: float = 0.0


class LineSearchConfig(NamedTuple):
    """CG backtracking, then an Armijo search on the chosen iterate (Martens 2010, 4.6).

    Attributes:
      c: Armijo constant (in (0, 1)).
      shrink: step-length factor `a = 1, shrink, shrink^2, ...` (in (0, 1)).
      max_steps: most shrinks before giving up with `a = 0` (int >= 0).
    """

    c: float = 0.01
    shrink: float = 0.8
    max_steps: int = 60


def _unit_open(name: str, value) -> None:
    checks.check_scalar(name, value, low=0.0, high=1.0, low_open=True, high_open=True)


def check_cg_config(config: CGConfig) -> CGConfig:
    """Validates `config` (a `ValueError` names the field); returns it with ints as `int`."""
    if not isinstance(config, CGConfig):
        raise ValueError(f"cg must be a CGConfig, got {type(config).__name__}")
    checks.check_nonnegative("CGConfig.tol", config.tol)
    checks.check_nonnegative("CGConfig.gap_fraction", config.gap_fraction)
    checks.check_scalar("CGConfig.warm_start_factor", config.warm_start_factor, low=0.0, high=1.0)
    checks.check_scalar("CGConfig.store_ratio", config.store_ratio, low=1.0, low_open=True)
    checks.check_choice("CGConfig.preconditioner", config.preconditioner, (None, "martens"))
    checks.check_finite_positive("CGConfig.preconditioner_exponent",
                                 config.preconditioner_exponent)
    return config._replace(
        maxiter=checks.check_positive_int("CGConfig.maxiter", config.maxiter),
        min_gap=checks.check_positive_int("CGConfig.min_gap", config.min_gap),
        store_first=checks.check_positive_int("CGConfig.store_first", config.store_first))


def check_damping_config(config: DampingConfig) -> DampingConfig:
    """Validates `config` (a `ValueError` names the field) and returns it."""
    if not isinstance(config, DampingConfig):
        raise ValueError(f"damping must be a DampingConfig, got {type(config).__name__}")
    if len(config.bounds) != 2:
        raise ValueError(f"DampingConfig.bounds must be (min, max), got {config.bounds!r}")
    lo, hi = (checks.concrete_scalar(f"DampingConfig.bounds[{i}]",
                                     checks.check_finite_positive(f"DampingConfig.bounds[{i}]", v))
              for i, v in enumerate(config.bounds))
    checks.check_scalar("DampingConfig.bounds[1]", config.bounds[1], low=lo)
    checks.check_scalar("DampingConfig.initial", config.initial, low=lo, high=hi)
    checks.check_scalar("DampingConfig.increase", config.increase, low=1.0, low_open=True,
                        high=float("inf"), high_open=True)
    checks.check_scalar("DampingConfig.reject_increase", config.reject_increase, low=1.0,
                        low_open=True, high=float("inf"), high_open=True)
    _unit_open("DampingConfig.decrease", config.decrease)
    checks.check_nonnegative("DampingConfig.low", config.low)
    checks.check_scalar("DampingConfig.high", config.high,
                        low=checks.concrete_scalar("DampingConfig.low", config.low))
    checks.check_scalar("DampingConfig.structural", config.structural, low=0.0,
                        high=float("inf"), high_open=True)
    return config


def check_line_search_config(config: LineSearchConfig) -> LineSearchConfig:
    """Validates `config` (a `ValueError` names the field); returns it with ints as `int`."""
    if not isinstance(config, LineSearchConfig):
        raise ValueError(f"line_search must be a LineSearchConfig, got {type(config).__name__}")
    _unit_open("LineSearchConfig.c", config.c)
    _unit_open("LineSearchConfig.shrink", config.shrink)
    return config._replace(
        max_steps=checks.check_int("LineSearchConfig.max_steps", config.max_steps, low=0))
