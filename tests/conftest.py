import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import pytest

import amortflow as af
from amortflow.nets import DeepSetSpec, FlowSpec


@pytest.fixture(scope="session")
def gaussian_model():
    return af.models.gaussian_mean(dim=2, num_obs=10)


@pytest.fixture(scope="session")
def gaussian_estimator(gaussian_model):
    """NPE trained online on the conjugate Gaussian model (shared by several test modules)."""
    return af.fit_posterior(
        jax.random.PRNGKey(0),
        gaussian_model,
        num_simulations=None,
        summary=DeepSetSpec(phi_hidden=(32, 32), rho_hidden=(32,), out_dim=8, pooling=("mean",)),
        flow=FlowSpec(num_layers=4, hidden=(64, 64)),
        train_config=af.TrainConfig(num_steps=2000, batch_size=512, learning_rate=2e-3),
        progress=False,
    )
