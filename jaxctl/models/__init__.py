"""Layer 3, models: MLPs, policies (MLP, linear, random-Fourier-feature) and values, running observation statistics, the layered RNN with a plant in its loop, dynamics models."""
from jaxctl.models import dynamics, dynamics_training, features, mlp, policies, rnn  # noqa: F401
