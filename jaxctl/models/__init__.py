"""Layer 3, models: MLPs, policies and values, the layered RNN with a plant in its loop, dynamics models."""
from jaxctl.models import dynamics, dynamics_training, mlp, policies, rnn  # noqa: F401
