"""Models: the :class:`Model` type, ``from_numpyro`` and built-in models."""
from amortflow.models.base import Model, ObservationError, make_model
from amortflow.models.ddm import drift_diffusion
from amortflow.models.gaussian import gaussian_mean, gaussian_mean_posterior
from amortflow.models.gev import gev
from amortflow.models.glm import bernoulli_glm, glm_summary_spec
from amortflow.models.misspecified import MisspecifiedNormal, misspecified_normal
from amortflow.models.numpyro_bridge import NumpyroModelError, from_numpyro
from amortflow.models.observation import Observation, observe
from amortflow.models.psychometric import psychometric, psychometric_design_sampler
from amortflow.models.spatial import spatial_gp, spatial_gp_grid_posterior

__all__ = [
    "Model", "ObservationError", "make_model", "from_numpyro", "gev", "gaussian_mean",
    "gaussian_mean_posterior", "misspecified_normal", "MisspecifiedNormal", "Observation", "observe", "NumpyroModelError",
    "spatial_gp", "spatial_gp_grid_posterior", "bernoulli_glm", "glm_summary_spec",
    "psychometric", "psychometric_design_sampler", "drift_diffusion",
]
