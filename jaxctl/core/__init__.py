"""Layer 1, the curvature core: per-sample Jacobians, Fisher matrices and solves, Gauss-Newton products, CG."""
from jaxctl.core import cg, fisher, gauss_newton, jacobians, martens_cg  # noqa: F401
