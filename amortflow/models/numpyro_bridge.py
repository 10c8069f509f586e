"""Derive a :class:`Model` from an ordinary numpyro model.

``from_numpyro(model_fn, *args, obs="y")`` treats ``model_fn(*args, y=None)`` as the generative
model and ``model_fn(*args, y=data)`` as the scoring model:

- **parameters** ``theta``: the latent ``sample`` sites present when the data are given (the
  sites of the scoring model), each unconstrained by numpyro's bijections and raveled in sorted
  site-name order (numpyro's ``ravel_pytree``). Sites that exist only while simulating
  (``y=None``: auxiliary randomness such as latent event times under censoring) are part of the
  simulator, not of ``theta``.
- **observation**: the keyword ``obs`` (one name, or several: their values are flattened and
  concatenated into one vector, split again for scoring). The simulated value is read from the
  sample site of the same name (``obs_site`` to name another).
- **likelihood**: every observed site and ``numpyro.factor`` of the scoring model (so censored
  data scored with ``factor`` count), ``beta`` scaling all of them; **prior**: the latent sites
  with numpyro's Jacobian terms. Constraints and dependent supports are numpyro's own.

- **design** (optional): ``design={"x": x_one_dataset, ...}`` names model keywords that change
  from dataset to dataset (covariates, trials per stimulus). The Model then has
  ``design_shape = {"x": x.shape, ...}``; its simulator and likelihood take the dataset's values
  (``Observation(y, beta, design={"x": ...})``, ``run_workflow(..., design=...)``). The prior
  must not depend on them (checked: the prior is the same for every dataset).

Simulated observations are float32 (booleans and counts included), the dtype every stage uses.

What cannot be taken gets an error naming the site: a discrete latent, an observed keyword the
model does not take, a site never given ``obs=``, a ``numpyro.param`` site, a prior that
depends on the design.
"""
from __future__ import annotations

import inspect
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro import handlers
from numpyro.distributions.transforms import biject_to
from numpyro.infer.util import constrain_fn as _np_constrain_fn
from numpyro.primitives import Messenger

from amortflow.models.base import Model, make_model


class NumpyroModelError(ValueError):
    """A numpyro model that ``from_numpyro`` cannot turn into a :class:`Model` (names the site)."""


class _DropSites(Messenger):
    """Mask the named sample sites (the observed sites and factors of the scoring model): what
    is left is the prior, with the Jacobian factors numpyro adds while unconstraining."""

    def __init__(self, fn, sites):
        self.sites = frozenset(sites)
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] == "sample" and msg["name"] in self.sites:
            msg["fn"] = msg["fn"].mask(False)


def _check_keywords(model_fn, obs_names):
    try:
        params = inspect.signature(model_fn).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    missing = [n for n in obs_names if n not in params]
    if missing:
        raise NumpyroModelError(
            f"from_numpyro: {getattr(model_fn, '__name__', 'the model')} takes no keyword "
            f"{missing[0]!r} (its parameters: {list(params)}); pass obs='<the keyword through which "
            "the model receives its data>'")


def _trace(fn, key, **data):
    return handlers.trace(handlers.seed(fn, key)).get_trace(**data)


def _latents(trace):
    return {n: s for n, s in trace.items() if s["type"] == "sample" and not s["is_observed"]}


def _check_no_params(trace):
    for name, site in trace.items():
        if site["type"] == "param":
            raise NumpyroModelError(
                f"from_numpyro: {name!r} is a numpyro.param site (a value to optimise, not a random "
                "variable); give it a prior with numpyro.sample, or pass its value as a model argument")


def _perturbed(v):
    """A different value of one design leaf, of the same shape and dtype."""
    a = np.asarray(v)
    if a.dtype.kind == "b":
        return ~a
    if a.dtype.kind in "iu":
        return a + 1
    return a * 1.37 + 0.11


def _dist_name(fn) -> str:
    """The user's distribution behind numpyro's wrappers (``plate`` expands, ``to_event``, masks)."""
    from numpyro.distributions import ExpandedDistribution, Independent, MaskedDistribution

    while isinstance(fn, (ExpandedDistribution, Independent, MaskedDistribution)):
        fn = fn.base_dist
    return type(fn).__name__


def _check_latents(latents, sim_trace, obs_names, site_names):
    for name, site in latents.items():
        if getattr(site["fn"], "is_discrete", False) or getattr(site["fn"].support, "is_discrete", False):
            raise NumpyroModelError(
                f"from_numpyro: latent site {name!r} is discrete ({_dist_name(site['fn'])}); "
                "amortflow samples continuous parameters only: marginalise it out (e.g. with a "
                "mixture distribution) or make it observed")
    for obs_name, site in zip(obs_names, site_names):
        if site not in sim_trace:
            raise NumpyroModelError(
                f"from_numpyro: when simulating (``{obs_name}=None``) the model has no sample site "
                f"{site!r} to read the data from (sites: {sorted(sim_trace)}); pass obs_site=")
        if site in latents:
            raise NumpyroModelError(
                f"from_numpyro: site {site!r} stays latent when {obs_name}= is given: the model "
                f"never passes it obs={obs_name}; write numpyro.sample({site!r}, ..., obs={obs_name})")


def _model_line(err: BaseException, model_fn) -> str:
    """``"line N of file.py: <source>"`` of the model's frame where ``err`` was raised."""
    import traceback

    code = getattr(model_fn, "__code__", None)
    for fr in reversed(traceback.extract_tb(err.__traceback__)):
        if code is not None and fr.filename == code.co_filename:
            return f"line {fr.lineno} of {fr.filename}: {fr.line.strip() if fr.line else ''}"
    return "the model"


def _check_prior_draws(bound, model_fn, num: int = 16) -> None:
    """Simulate from the model eagerly with numpyro's argument validation on a few prior draws:
    a distribution handed an invalid parameter (a scale drawn from a Normal prior) is reported
    with the model's line that built it, instead of seed-dependent NaNs later."""
    import numpyro

    with numpyro.validation_enabled():
        for i in range(num):
            try:
                _trace(bound, jax.random.PRNGKey(i))
            except ValueError as e:
                raise NumpyroModelError(
                    f"from_numpyro: {_model_line(e, model_fn)}: {e} (for a draw from the prior); a "
                    "scale or rate parameter needs a prior on its support (e.g. HalfNormal, LogNormal)") from None


def from_numpyro(model_fn, *args, obs: str | tuple[str, ...] = "y", obs_site: str | tuple[str, ...] | None = None,
                 name: str | None = None, obs_kind: str | None = None, design: dict | None = None,
                 **kwargs) -> Model:
    """Build a :class:`Model` from a numpyro model function.

    Args:
      model_fn: numpyro model; called as ``model_fn(*args, **kwargs, **{obs: y})``.
      *args, **kwargs: fixed model arguments (covariates, design, sizes, ...).
      obs: the keyword(s) through which the observation is passed (``None`` to simulate).
      obs_site: the sample site(s) holding the simulated observation; defaults to ``obs``.
      name: model name; defaults to the function's name.
      obs_kind: ``"set"``, ``"vector"`` or ``"grid"`` (see :func:`make_model`).
      design: ``{keyword: value for ONE dataset}``: model keywords that differ per dataset
        (covariates, ...); the values here fix their shapes and dtypes (and are used where one
        value is needed: prior draws, the checks). Each dataset's own values ride in
        ``Observation.design`` as ``{keyword: [K, ...]}``.
    Raises:
      NumpyroModelError: naming the site or keyword that cannot be taken, and what to do.
    """
    obs_names = (obs,) if isinstance(obs, str) else tuple(obs)
    site_names = obs_names if obs_site is None else ((obs_site,) if isinstance(obs_site, str) else tuple(obs_site))
    if len(site_names) != len(obs_names):
        raise NumpyroModelError(f"from_numpyro: {len(obs_names)} observed keywords but {len(site_names)} obs_site names")
    _check_keywords(model_fn, obs_names)
    design = None if design is None else {str(k): v for k, v in dict(design).items()}
    if design is not None:
        _check_keywords(model_fn, tuple(design))
        clash = sorted(set(design) & (set(kwargs) | set(obs_names)))
        if clash:
            raise NumpyroModelError(f"from_numpyro: {clash[0]!r} is given both as design and as a fixed "
                                    "keyword or observed keyword; name it in one place")
    proto_design = None if design is None else {k: jnp.asarray(v) for k, v in design.items()}

    def bound(y=None, design=None):
        data = split(y) if y is not None else {n: None for n in obs_names}
        if design is not None and (not isinstance(design, dict) or set(design) != set(proto_design or ())):
            got = sorted(design) if isinstance(design, dict) else type(design).__name__
            raise NumpyroModelError(f"from_numpyro model: design must be a dict with the keywords "
                                    f"{sorted(proto_design or ())}, got {got}")
        return model_fn(*args, **{**kwargs, **(design or proto_design or {}), **data})

    generative = lambda: bound()  # noqa: E731
    _check_prior_draws(generative, model_fn)
    sim = _trace(generative, jax.random.PRNGKey(0))
    _check_no_params(sim)
    for site in site_names:
        if site not in sim:
            raise NumpyroModelError(f"from_numpyro: the model has no sample site named {site!r} "
                                    f"(sites: {sorted(sim)}); pass obs_site=")
    values = [np.asarray(sim[s]["value"]) for s in site_names]
    shapes = [v.shape for v in values]
    sizes = [int(math.prod(sh)) for sh in shapes]
    single = len(obs_names) == 1

    def split(y):
        if single:
            return {obs_names[0]: y}
        parts = jnp.split(jnp.ravel(y), np.cumsum(sizes)[:-1])
        return {n: p.reshape(sh) for n, p, sh in zip(obs_names, parts, shapes)}

    def join(vals):
        return vals[0] if single else jnp.concatenate([jnp.ravel(v) for v in vals])

    y_proto = join([jnp.asarray(v) for v in values])
    scored = _trace(bound, jax.random.PRNGKey(0), y=y_proto)
    _check_no_params(scored)
    latents = _latents(scored)
    if not latents:
        raise NumpyroModelError("from_numpyro: the model has no latent sample sites (no parameters)")
    _check_latents(latents, sim, obs_names, site_names)
    unc_proto = {k: biject_to(s["fn"].support).inv(s["value"]) for k, s in latents.items()}
    flat, unravel = ravel_pytree(unc_proto)
    param_names = []
    for k in sorted(unc_proto):  # ravel_pytree order: sorted keys
        n = int(np.size(unc_proto[k]))
        param_names += [k] if n == 1 and np.ndim(unc_proto[k]) == 0 else [f"{k}[{i}]" for i in range(n)]

    def prior_at(theta, d):
        return -_np_potential(_DropSites(partial(bound, design=d), observed), y_proto, unravel(theta))

    observed = [n for n, site in scored.items() if site["type"] == "sample" and site["is_observed"]]
    if design is not None:
        _check_prior_free_of_design(prior_at, unravel, unc_proto, proto_design, latents)

    def sample_prior(key, n):
        def one(k):
            tr = _trace(bound, k)
            return ravel_pytree({s: biject_to(tr[s]["fn"].support).inv(tr[s]["value"]) for s in latents})[0]

        return jax.vmap(one)(jax.random.split(key, n))

    def constrain(theta, d=None):
        # observed values supplied so no site needs a PRNG key; only parameter sites returned
        out = _np_constrain_fn(partial(bound, design=d), (), {"y": y_proto}, unravel(theta))
        return {k: out[k] for k in sorted(latents)}

    def simulate(key, theta, d=None):
        tr = _trace(handlers.condition(partial(bound, design=d), constrain(theta, d)), key)
        return join([tr[s]["value"] for s in site_names]).astype(jnp.float32)

    def log_prior(theta):
        return prior_at(theta, None)

    def log_likelihood(theta, y, d=None):
        tr = handlers.trace(handlers.substitute(partial(bound, design=d), constrain(theta, d))).get_trace(y=y)
        total = 0.0
        for site in tr.values():
            if site["type"] == "sample" and site["is_observed"]:
                # data outside the support (non-integer or negative counts, ...) have zero
                # likelihood; numpyro's log_prob would return a finite number for them
                inside = jnp.all(site["fn"].support.check(site["value"]))
                lp = jnp.sum(site["fn"].log_prob(site["value"]))
                if site.get("scale") is not None:  # handlers.scale / subsampled plates, as numpyro
                    lp = lp * site["scale"]
                total = total + jnp.where(inside, lp, -jnp.inf)
        return total

    # jitted: numpyro's handlers run op by op outside jit (seconds per eager, vmapped call of a
    # small model); under the callers' own jit these are plain nested calls
    return make_model(
        name=name or getattr(model_fn, "__name__", "numpyro_model"),
        param_names=tuple(param_names), obs_shape=tuple(np.shape(y_proto)), obs_kind=obs_kind,
        sample_prior=jax.jit(sample_prior, static_argnums=1), simulate=jax.jit(simulate),
        log_prior=jax.jit(log_prior), log_likelihood=jax.jit(log_likelihood),
        constrain=jax.jit(lambda theta: constrain(theta)),
        design_shape=None if design is None else {k: tuple(np.shape(v)) for k, v in design.items()},
        info={"source": "numpyro", "obs": list(obs_names), "obs_site": list(site_names),
              "design": None if design is None else sorted(design),
              "dim": int(flat.size), "simulation_only_sites": sorted(set(_latents(sim)) - set(latents) - set(site_names))},
    )


def _check_prior_free_of_design(prior_at, unravel, unc_proto, proto_design, latents) -> None:
    """The Model's prior takes no design, so it must be the same for every dataset's design:
    compare it at a few parameter values under the example design and a perturbed one."""
    flat = ravel_pytree(unc_proto)[0]
    other = {k: jnp.asarray(_perturbed(v)) for k, v in proto_design.items()}
    thetas = flat + 0.5 * jax.random.normal(jax.random.PRNGKey(7), (4,) + flat.shape, flat.dtype)
    a = np.asarray(jax.vmap(lambda t: prior_at(t, proto_design))(thetas))
    b = np.asarray(jax.vmap(lambda t: prior_at(t, other))(thetas))
    same = (a == b) | np.isclose(a, b, rtol=1e-6, atol=1e-6)
    if not same.all():
        raise NumpyroModelError(
            f"from_numpyro: the prior of the latent sites {sorted(latents)} changes with the design "
            f"keywords {sorted(proto_design)}; amortflow needs one prior for all datasets: pass the "
            "keywords the prior uses as fixed arguments, and as design only what the likelihood uses")


def _np_potential(fn, y, params):
    """``-log p`` of ``fn`` at unconstrained ``params`` (numpyro's potential energy)."""
    from numpyro.infer.util import potential_energy

    return potential_energy(fn, (), {"y": y}, params)


__all__ = ["from_numpyro", "NumpyroModelError"]
