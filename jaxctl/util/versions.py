"""Releases of jaxlib known to compute wrong results in what jaxctl runs.

jaxlib 0.10.2 on CPU: a compiled program can return garbage, varying from
one process to the next with bit-identical compiled code (jax-ml/jax#39103;
0.8.0, 0.9.2, 0.10.0 and 0.10.1 gave the right result here every time). Here
it hit `jaxctl.cg` over a matrix-free Fisher-vector product: in about one
process in three the 10-step solve of the MuJoCo NPG update returned 0 or a
vector of norm 1e15 instead of 0.059, and HalfCheetah's linear policy
diverged to |W| ~ 1e7. pyproject excludes the release; this module warns
where it is installed anyway.
"""

from __future__ import annotations

import warnings

BROKEN_JAXLIB = {"0.10.2": "jax-ml/jax#39103: CPU programs can return wrong, run-to-run varying "
                           "results (seen here in lax.while_loop conjugate-gradient solves)"}


def known_defect(jaxlib_version: str) -> str | None:
    """The known defect of this jaxlib release, or None."""
    return BROKEN_JAXLIB.get(jaxlib_version)


def warn_if_broken(jaxlib_version: str) -> None:
    """A RuntimeWarning naming the release and the defect, if it has one."""
    defect = known_defect(jaxlib_version)
    if defect is not None:
        warnings.warn(f"jaxlib {jaxlib_version} is excluded by jaxctl ({defect}); install "
                      f"'jax!={jaxlib_version}' 'jaxlib!={jaxlib_version}'", RuntimeWarning,
                      stacklevel=3)
