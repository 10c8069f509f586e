"""Derive a :class:`Model` from an ordinary numpyro model.

``from_numpyro(model_fn, *args, obs="y")`` treats ``model_fn(*args, y=None)`` as the generative
model: every latent ``sample`` site becomes a block of the flat unconstrained vector ``theta``
(ordered by numpyro's ``ravel_pytree``, i.e. sorted site names), the site named ``obs`` (by
default the keyword argument of the same name) is the observation. The log density is numpyro's
own potential energy (with ``beta`` scaling the observed site only), so constraints, Jacobians and
dependent supports are handled exactly as numpyro does.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro import handlers
from numpyro.distributions.transforms import biject_to
from numpyro.infer.util import constrain_fn as _np_constrain_fn
from numpyro.infer.util import potential_energy
from numpyro.primitives import Messenger

from amortflow.models.base import Model, make_model


class _DropSite(Messenger):
    """Mask out one named sample site, so it adds nothing (not even NaN) to the log joint."""

    def __init__(self, fn, site):
        self.site = site
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] == "sample" and msg["name"] == self.site:
            msg["fn"] = msg["fn"].mask(False)


def _latent_sites(trace, obs_site):
    return {
        name: site
        for name, site in trace.items()
        if site["type"] == "sample" and not site["is_observed"] and name != obs_site
    }


def from_numpyro(model_fn, *args, obs: str = "y", obs_site: str | None = None, name: str | None = None,
                 obs_kind: str | None = None, **kwargs) -> Model:
    """Build a :class:`Model` from a numpyro model function.

    Args:
      model_fn: numpyro model; called as ``model_fn(*args, **kwargs, **{obs: y})``.
      *args, **kwargs: fixed model arguments (design matrices, sizes, ...).
      obs: keyword argument through which the observation is passed (``None`` to simulate).
      obs_site: name of the observed sample site; defaults to ``obs``.
      name: model name; defaults to the function's name.
      obs_kind: ``"set"``, ``"vector"`` or ``"grid"`` (see :func:`make_model`).
    """
    site_name = obs_site or obs

    def bound(y=None):
        return model_fn(*args, **{**kwargs, obs: y})

    proto = handlers.trace(handlers.seed(bound, jax.random.PRNGKey(0))).get_trace()
    if site_name not in proto:
        raise ValueError(
            f"from_numpyro: the model has no sample site named {site_name!r} "
            f"(sites: {sorted(proto)}); pass obs_site="
        )
    latents = _latent_sites(proto, site_name)
    if not latents:
        raise ValueError("from_numpyro: the model has no latent sample sites")
    obs_shape = tuple(np.shape(proto[site_name]["value"]))
    unc_proto = {
        k: biject_to(s["fn"].support).inv(s["value"]) for k, s in latents.items()
    }
    flat, unravel = ravel_pytree(unc_proto)
    sizes = {k: int(np.size(v)) for k, v in unc_proto.items()}
    param_names = []
    for k in sorted(unc_proto):  # ravel_pytree order: sorted keys
        n = sizes[k]
        param_names += [k] if n == 1 and np.ndim(unc_proto[k]) == 0 else [f"{k}[{i}]" for i in range(n)]

    def sample_prior(key, n):
        def one(k):
            tr = handlers.trace(handlers.seed(bound, k)).get_trace()
            unc = {
                name: biject_to(tr[name]["fn"].support).inv(tr[name]["value"]) for name in latents
            }
            return ravel_pytree(unc)[0]

        return jax.vmap(one)(jax.random.split(key, n))

    y_proto = jnp.asarray(proto[site_name]["value"])

    def constrain(theta):
        # observed value supplied so no site needs a PRNG key; only latent sites are returned
        out = _np_constrain_fn(bound, (), {"y": y_proto}, unravel(theta))
        return {k: out[k] for k in sorted(latents)}

    def simulate(key, theta):
        params = constrain(theta)
        tr = handlers.trace(handlers.seed(handlers.condition(bound, params), key)).get_trace()
        return tr[site_name]["value"]

    def log_prior(theta):
        # numpyro's potential with the observed site masked out: prior + Jacobian terms
        prior_only = _DropSite(bound, site_name)
        return -potential_energy(prior_only, (), {"y": y_proto}, unravel(theta))

    def log_likelihood(theta, y):
        params = constrain(theta)
        tr = handlers.trace(handlers.substitute(bound, params)).get_trace(y=y)
        site = tr[site_name]
        return jnp.sum(site["fn"].log_prob(site["value"]))

    return make_model(
        name=name or getattr(model_fn, "__name__", "numpyro_model"),
        param_names=tuple(param_names),
        obs_shape=obs_shape,
        obs_kind=obs_kind,
        sample_prior=sample_prior,
        simulate=simulate,
        log_prior=log_prior,
        log_likelihood=log_likelihood,
        constrain=constrain,
        info={"source": "numpyro", "obs": obs, "obs_site": site_name, "dim": int(flat.size)},
    )
