"""The `Model` type: prior, simulator, log density and constraints as pure JAX functions.

A model is written once and yields jit/vmap-safe functions over a flat *unconstrained* parameter
vector ``theta`` of length ``d``. The observation is always an argument (never closed over), so a
function compiled once serves every dataset.

Shapes (``d`` parameters, observation shape ``obs_shape``):

- ``sample_prior(key, n)``            -> ``[n, d]`` unconstrained draws
- ``simulate(key, theta)``             -> ``[n, *obs_shape]`` for ``theta`` of shape ``[n, d]``
                                          (``[*obs_shape]`` for ``theta`` of shape ``[d]``)
- ``log_density(theta, y, beta=1.0)``  -> scalar  ``log p(theta) + beta * log p(y | theta)``
                                          in unconstrained space, Jacobian included
- ``log_density_obs(theta, obs)``      -> the same for an :class:`Observation` (``y``, ``beta``,
                                          per-dataset ``design``): what every stage calls
- ``constrain(theta)``                 -> ``dict`` name -> constrained value (batched if theta is)
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


from amortflow.errors import ObservationError  # noqa: E402  (defined with the other errors)


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """A Bayesian model over a flat unconstrained parameter vector.

    Build one with :func:`make_model` (plain JAX functions) or :func:`amortflow.from_numpyro`.
    Instances hash by identity, so they can be static arguments of jitted functions.

    Attributes:
      name: short identifier, stored with estimators trained on the model.
      param_names: names of the ``d`` entries of the unconstrained vector ``theta``.
      obs_shape: shape of one dataset, e.g. ``(65,)`` for 65 iid scalars, ``(n, k)`` for a set
        of ``n`` vectors, ``(h, w)`` for a grid.
      obs_kind: ``"set"`` (exchangeable leading axis), ``"vector"``, ``"grid"`` (a field
        ``[h, w]`` or ``[h, w, c]``) or ``"sequence"`` (ordered ``[n]`` or ``[n, k]``: a time
        series); guides the default summary network and data standardization.
      info: free-form JSON-serializable metadata (priors, bounds, reference).
      design_shape: ``None`` (no per-dataset design data), or a pytree of shapes of ONE
        dataset's design (e.g. ``{"trials": (9,)}``); then the likelihood and the simulator take
        the design as a third argument and it rides in :class:`Observation`.
      symmetry: ``None``, or a :class:`~amortflow.models.symmetry.Symmetry` of the observations
        (``p(g(y) | theta) = p(y | theta)``): estimators trained on a fixed simulation bank
        augment every training batch with it.
      design_sampler: ``None``, or ``(key, n) -> design`` (leading ``n`` on every leaf): the
        distribution of designs an estimator is trained over, for a model with
        ``design_shape`` (the network then learns ``q(theta | y, design)`` for every design it
        can draw). See :meth:`with_design_sampler`.
    """

    name: str
    param_names: tuple[str, ...]
    obs_shape: tuple[int, ...]
    obs_kind: str
    prior_sampler: Callable[[Array, int], Array]
    simulator: Callable[[Array, Array], Array]
    log_prior_fn: Callable[[Array], Array]
    log_likelihood_fn: Callable[[Array, Array], Array]
    constrain_fn: Callable[[Array], dict]
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    design_shape: Any = None
    symmetry: Any = None
    design_sampler: Callable[[Array, int], Any] | None = None

    @property
    def uses_design(self) -> bool:
        return self.design_shape is not None

    def sample_design(self, key: Array, n: int) -> Any:
        """``n`` designs from :attr:`design_sampler` (pytree, leading ``n`` on every leaf).

        Raises:
          ValueError: if the model takes no design data, or has no design sampler.
        """
        if self.design_shape is None:
            raise ValueError(f"{self.name}: this model takes no design data")
        if self.design_sampler is None:
            raise ValueError(f"{self.name}: no design sampler: an estimator must be trained over the designs "
                             "your datasets use; give one with model.with_design_sampler(fn), fn(key, n) "
                             f"-> designs {self.design_shape} with a leading n axis")
        return self.design_sampler(key, n)

    def with_design_sampler(self, sampler: Callable[[Array, int], Any]) -> "Model":
        """This model with ``sampler(key, n)`` as its training distribution of designs; its
        output is checked against :attr:`design_shape` (structure and shapes).

        Raises:
          ValueError: naming the mismatch.
        """
        if self.design_shape is None:
            raise ValueError(f"{self.name}: this model takes no design data; a design sampler has no use")
        check_design_sampler(self.name, sampler, self.design_shape)
        return dataclasses.replace(self, design_sampler=sampler)

    def _check_dim(self, theta, where: str):
        # JAX clamps out-of-range indices, so a theta of the wrong length would give a finite,
        # wrong value; shapes are static, so this check also holds under jit / vmap.
        if np.ndim(theta) == 0 or np.shape(theta)[-1] != self.dim:
            raise ValueError(f"{self.name}.{where}: theta must have last axis {self.dim} "
                             f"({', '.join(self.param_names)}), got shape {np.shape(theta)}")

    def _design_args(self, design):
        if self.design_shape is None:
            if design is not None:
                raise ValueError(f"{self.name}: this model takes no design data, got {type(design).__name__}")
            return ()
        if design is None:
            raise ValueError(f"{self.name}: this model needs per-dataset design data "
                             f"{self.design_shape}; pass it in the Observation (design=...)")
        return (design,)

    @property
    def dim(self) -> int:
        """Number of unconstrained parameters ``d``."""
        return len(self.param_names)

    # ----------------------------------------------------------------- sampling
    def sample_prior(self, key: Array, n: int) -> Array:
        """``n`` unconstrained prior draws, ``[n, d]``."""
        return self.prior_sampler(key, n)

    def simulate(self, key: Array, theta: Array, design: Any = None) -> Array:
        """Simulate one dataset per parameter vector.

        Args:
          key: PRNG key.
          theta: ``[n, d]`` (or ``[d]``) unconstrained parameters.
          design: per-dataset design (leading ``n`` axis when ``theta`` is batched), for models
            with ``design_shape``.
        Returns:
          ``[n, *obs_shape]`` (or ``[*obs_shape]``).
        """
        theta = jnp.asarray(theta)
        self._check_dim(theta, "simulate")
        extra = self._design_args(design)
        if theta.ndim == 1:
            return self.simulator(key, theta, *extra)
        keys = jax.random.split(key, theta.shape[0])
        return jax.vmap(self.simulator)(keys, theta, *extra)

    def sample_prior_predictive(self, key: Array, n: int) -> tuple[Array, Array]:
        """``(theta [n, d], y [n, *obs_shape])`` from the joint prior predictive (a model with
        design data: see :meth:`sample_joint`)."""
        if self.design_shape is not None:
            theta, y, _ = self.sample_joint(key, n)
            return theta, y
        k1, k2 = jax.random.split(key)
        theta = self.sample_prior(k1, n)
        return theta, self.simulate(k2, theta)

    def sample_joint(self, key: Array, n: int) -> tuple[Array, Array, Any]:
        """``(theta [n, d], y [n, *obs_shape], design)``: prior draws, designs from the
        :attr:`design_sampler` and one simulated dataset each (``design`` is ``None`` for a
        model without design data; then this is :meth:`sample_prior_predictive`)."""
        if self.design_shape is None:
            return (*self.sample_prior_predictive(key, n), None)
        k1, k2, k3 = jax.random.split(key, 3)
        theta = self.sample_prior(k1, n)
        design = self.sample_design(k3, n)
        return theta, self.simulate(k2, theta, design), design

    # ----------------------------------------------------------------- densities
    def log_prior(self, theta: Array) -> Array:
        """Unconstrained log prior density of ``theta [d]`` (Jacobian included); scalar."""
        self._check_dim(theta, "log_prior")
        return self.log_prior_fn(theta)

    def log_likelihood(self, theta: Array, y: Array, design: Any = None) -> Array:
        """``log p(y | theta)`` for one dataset ``y [*obs_shape]``; scalar (``-inf`` off support)."""
        self._check_dim(theta, "log_likelihood")
        return self.log_likelihood_fn(theta, y, *self._design_args(design))

    def log_density(self, theta: Array, y: Array, beta: float | Array = 1.0, design: Any = None) -> Array:
        """``log p(theta) + beta * log p(y | theta)`` (unconstrained, Jacobian included); scalar.

        ``-inf`` (never NaN) where ``theta`` puts ``y`` outside the likelihood's support.
        """
        out = self.raw_log_density(theta, y, beta, design)
        return jnp.where(jnp.isnan(out), -jnp.inf, out)

    def raw_log_density(self, theta: Array, y: Array, beta: float | Array = 1.0, design: Any = None) -> Array:
        """:meth:`log_density` with NaN (a broken likelihood or prior) left in place: what the
        importance-sampling gates evaluate, so such draws are refused rather than weighted 0."""
        lp = self.log_prior(theta)
        ll = self.log_likelihood(theta, y, design)
        # beta * (-inf) must stay -inf for beta > 0, and 0 * -inf must not produce NaN.
        ll = jnp.where(jnp.asarray(beta) == 0, 0.0, beta * ll)
        return lp + ll

    def log_density_obs(self, theta: Array, obs) -> Array:
        """:meth:`log_density` for ONE dataset's :class:`~amortflow.models.Observation`
        (``y``, temperature ``beta``, ``design``); the function every stage evaluates."""
        return self.log_density(theta, obs.y, obs.beta, obs.design)

    def raw_log_density_obs(self, theta: Array, obs) -> Array:
        """:meth:`raw_log_density` for ONE dataset's :class:`~amortflow.models.Observation`."""
        return self.raw_log_density(theta, obs.y, obs.beta, obs.design)

    def constrain(self, theta: Array) -> dict:
        """Named constrained values; ``theta`` may be ``[d]`` or ``[..., d]``."""
        theta = jnp.asarray(theta)
        fn = self.constrain_fn
        for _ in range(theta.ndim - 1):
            fn = jax.vmap(fn)
        return fn(theta)

    def fingerprint(self) -> str:
        """A content hash of the model: names and shapes, plus prior draws, simulations and
        log prior / log likelihood values at fixed keys. Two models that differ only in their
        likelihood (same name) get different fingerprints, so resumed progress and saved
        estimators cannot be reused against a changed model."""
        import hashlib

        h = hashlib.sha256(repr((self.name, self.param_names, self.obs_shape, self.obs_kind,
                                 self.design_shape)).encode())
        if self.symmetry is not None:  # kept out of the hash otherwise: old fingerprints stay valid
            h.update(f"symmetry={self.symmetry.name}".encode())
        if self.design_sampler is not None:  # the designs an estimator is trained over
            for leaf in jax.tree.leaves(jax.jit(self.design_sampler, static_argnums=1)(jax.random.PRNGKey(7), 4)):
                h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())

        def probe(key):
            theta = self.sample_prior(key, 4)
            design = (None if self.design_shape is None else jax.tree.map(
                lambda s: jnp.ones((4,) + tuple(s)), self.design_shape,
                is_leaf=lambda s: isinstance(s, tuple)))
            y = self.simulate(jax.random.fold_in(key, 1), theta, design)
            shifted = theta + 0.1
            lik = jax.vmap(self.log_likelihood)
            args = (y,) if design is None else (y, design)
            return (theta, y, jax.vmap(self.log_prior)(shifted), lik(theta, *args), lik(shifted, *args))

        for leaf in jax.tree.leaves(jax.jit(probe)(jax.random.PRNGKey(20240904))):
            h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
        return h.hexdigest()

    # ----------------------------------------------------------------- validation
    def check_observations(self, ys: Any, *, allow_nonfinite: bool = False) -> np.ndarray:
        """Validate a batch of datasets and return it as a float array ``[K, *obs_shape]``
        (see :func:`check_observation_batch`)."""
        return check_observation_batch(ys, self.obs_shape, self.name, allow_nonfinite=allow_nonfinite)

    def check_theta(self, theta: Any) -> np.ndarray:
        """Validate unconstrained parameters ``[..., d]``; raises ``ValueError`` naming the problem."""
        arr = np.asarray(theta)
        if arr.ndim == 0 or arr.shape[-1] != self.dim:
            raise ValueError(
                f"{self.name}: parameters must have last axis {self.dim} "
                f"({', '.join(self.param_names)}), got shape {arr.shape}"
            )
        if not np.isfinite(arr).all():
            raise ValueError(f"{self.name}: parameters contain NaN or infinite values")
        return arr


_F32_MAX = float(np.finfo(np.float32).max)


def _as_numeric(ys: Any, owner: str) -> np.ndarray:
    """``ys`` as a real numeric numpy array, or :class:`ObservationError` saying why not."""
    try:
        arr = np.asarray(ys)
    except ValueError:  # ragged nesting numpy cannot stack
        raise ObservationError(f"{owner}: observations could not be stacked into one array; pass "
                               "an array [K, *obs_shape] or a list of per-dataset arrays") from None
    kind = arr.dtype.kind
    if kind == "b":
        raise ObservationError(f"{owner}: observations are boolean; convert them explicitly "
                               "(e.g. ys.astype(float) for 0/1 data) so their meaning is yours")
    if kind == "c":
        raise ObservationError(f"{owner}: observations are complex; the models here take real "
                               "data (pass the real and imaginary parts as separate features)")
    if kind in "USO":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise ObservationError(f"{owner}: observations could not be read as numbers "
                                   f"(dtype {arr.dtype}); pass a numeric array") from None
    elif kind not in "fiu":
        raise ObservationError(f"{owner}: observations of dtype {arr.dtype} are not numeric")
    return arr


def dataset_problem(y: np.ndarray, obs_shape: tuple[int, ...]) -> str:
    """Why ONE dataset cannot be analysed (``""`` if it can): shape, NaN/inf, float32 overflow."""
    if tuple(y.shape) != tuple(obs_shape):
        return f"shape {tuple(y.shape)} does not match the model's {tuple(obs_shape)}"
    if not np.isfinite(y).all():
        return "dataset contains NaN or infinite values"
    if y.size and float(np.max(np.abs(y))) > _F32_MAX:
        return (f"values up to {float(np.max(np.abs(y))):.3g} overflow float32 (max {_F32_MAX:.3g}); "
                "rescale the data")
    return ""


def screen_observations(ys: Any, obs_shape: tuple[int, ...], owner: str) -> tuple[np.ndarray, np.ndarray]:
    """Check every dataset on its own: ``(ys [K, *obs_shape] float32, problem [K] object)``.

    ``ys`` may be an array ``[K, *obs_shape]``, one dataset ``[*obs_shape]``, or a list of
    per-dataset arrays (a ragged list may hold wrongly shaped datasets). A dataset with a problem
    (``problem[i] != ""``) gets a zero placeholder, so it never stops the others. What no
    dataset could survive (non-numeric or boolean data, a scalar) raises :class:`ObservationError`.
    """
    obs_shape = tuple(obs_shape)
    if isinstance(ys, (list, tuple)) and len(ys) and any(np.shape(y) != np.shape(ys[0]) for y in ys):
        items = [_as_numeric(y, owner) for y in ys]  # ragged: judge each dataset on its own
        problem = np.asarray([dataset_problem(y, obs_shape) for y in items] + [None])[:-1]
        out = np.zeros((len(items),) + obs_shape, np.float32)
        for i, y in enumerate(items):
            if not problem[i]:
                out[i] = y
        return out, problem
    arr = _as_numeric(ys, owner)
    if arr.ndim == 0:
        raise ObservationError(f"{owner}: got a scalar observation; expected [K, "
                               f"{', '.join(map(str, obs_shape))}] (K datasets of shape {obs_shape})")
    if tuple(arr.shape) == obs_shape:
        arr = arr[None]
    if arr.ndim != len(obs_shape) + 1 or tuple(arr.shape[1:]) != obs_shape:
        raise ObservationError(
            f"{owner}: expected observations of shape [K, {', '.join(map(str, obs_shape))}]"
            f" (K datasets of shape {obs_shape}), got {tuple(arr.shape)}")
    flat = arr.reshape(arr.shape[0], int(np.prod(obs_shape)))
    finite = np.isfinite(flat).all(axis=1)
    big = np.abs(np.where(np.isfinite(flat), flat, 0)).max(axis=1, initial=0) > _F32_MAX
    problem = np.full(arr.shape[0], "", dtype=object)
    for i in np.nonzero(~finite | big)[0]:
        problem[i] = dataset_problem(arr[i], obs_shape)
    out = np.where((problem != "").reshape((-1,) + (1,) * len(obs_shape)), 0, arr).astype(np.float32)
    return out, problem


def check_observation_batch(ys: Any, obs_shape: tuple[int, ...], owner: str, *,
                            allow_nonfinite: bool = False) -> np.ndarray:
    """Validate datasets ``[K, *obs_shape]`` (a single ``[*obs_shape]`` is promoted to K = 1).

    Returns a float32 array. Raises :class:`ObservationError` naming the problem: no datasets,
    wrong shape or dtype, NaN/inf or float32-overflowing values (unless ``allow_nonfinite``) with
    the offending indices.
    """
    if allow_nonfinite:
        arr = _as_numeric(ys, owner)
        if tuple(arr.shape) == tuple(obs_shape):
            arr = arr[None]
        if arr.ndim != len(obs_shape) + 1 or tuple(arr.shape[1:]) != tuple(obs_shape):
            raise ObservationError(
                f"{owner}: expected observations of shape [K, {', '.join(map(str, obs_shape))}]"
                f" (K datasets of shape {tuple(obs_shape)}), got {tuple(arr.shape)}")
        return arr.astype(np.float32)
    arr, problem = screen_observations(ys, obs_shape, owner)
    if arr.shape[0] == 0:
        raise ObservationError(f"{owner}: no datasets (K = 0)")
    bad = np.nonzero(problem != "")[0]
    if bad.size:
        shown = bad[:10].tolist()
        raise ObservationError(
            f"{owner}: {bad.size} dataset(s) cannot be used: {problem[bad[0]]} (indices {shown}"
            f"{' ...' if bad.size > 10 else ''}); remove, impute or rescale them")
    return arr


def make_model(
    *,
    name: str,
    param_names: tuple[str, ...] | list[str],
    obs_shape: tuple[int, ...],
    sample_prior: Callable[[Array, int], Array],
    simulate: Callable[[Array, Array], Array],
    log_prior: Callable[[Array], Array],
    log_likelihood: Callable[[Array, Array], Array],
    constrain: Callable[[Array], dict] | None = None,
    obs_kind: str | None = None,
    info: Mapping[str, Any] | None = None,
    design_shape: Any = None,
    symmetry: Any = None,
    sample_design: Callable[[Array, int], Any] | None = None,
) -> Model:
    """Build a :class:`Model` from plain JAX functions (all in unconstrained space).

    Args:
      sample_prior: ``(key, n) -> [n, d]``.
      simulate: ``(key, theta [d]) -> y [*obs_shape]`` for ONE parameter vector (vmapped here).
      log_prior: ``theta [d] -> scalar``, Jacobian of the constraining transform included.
      log_likelihood: ``(theta [d], y [*obs_shape]) -> scalar``; ``-inf`` off support.
      constrain: ``theta [d] -> dict``; defaults to the identity with ``param_names``.
      obs_kind: ``"set"``, ``"vector"``, ``"grid"`` or ``"sequence"``; default (:func:`infer_obs_kind`):
        ``"set"`` for 1-D / 2-D observations whose likelihood is invariant to reordering their
        rows (iid data: a permutation-invariant summary is then right), ``"vector"`` for other
        1-D / 2-D observations (groups, time series, rows tied to covariates: flattened),
        ``"grid"`` for more dimensions.
      design_shape: pytree of shapes of one dataset's design data, or ``None``; with it,
        ``simulate(key, theta, design)`` and ``log_likelihood(theta, y, design)`` take it.
      symmetry: a :class:`~amortflow.models.symmetry.Symmetry` of the observations (see
        :mod:`amortflow.models.symmetry`), checked here on simulated data; not with
        ``design_shape`` (a transformation of ``y`` alone need not preserve a design's meaning).
      sample_design: ``(key, n) -> design`` with a leading ``n`` axis: the designs estimators are
        trained over (see :attr:`Model.design_sampler`); only with ``design_shape``.
    Raises:
      ValueError: if ``sample_prior`` does not return ``[n, len(param_names)]``, or ``symmetry``
        changes the log likelihood of simulated data.
    """
    param_names = tuple(param_names)
    obs_shape = tuple(int(s) for s in obs_shape)
    if obs_kind not in (None, "set", "vector", "grid", "sequence"):
        raise ValueError(f"obs_kind must be 'set', 'vector', 'grid' or 'sequence', got {obs_kind!r}")
    if constrain is None:

        def constrain(theta):
            return {n: theta[i] for i, n in enumerate(param_names)}

    if symmetry is not None and design_shape is not None:
        raise ValueError(f"make_model({name!r}): a symmetry acts on the observation alone and cannot be "
                         "declared for a model with per-dataset design data")
    if sample_design is not None:
        if design_shape is None:
            raise ValueError(f"make_model({name!r}): sample_design needs design_shape (the model takes no design)")
        check_design_sampler(name, sample_design, design_shape)
    model = Model(name, param_names, obs_shape, obs_kind or "vector", sample_prior, simulate, log_prior,
                  log_likelihood, constrain, dict(info or {}), design_shape, symmetry, sample_design)
    probe = jax.eval_shape(lambda k: model.sample_prior(k, 2), jax.random.PRNGKey(0))
    if tuple(probe.shape) != (2, len(param_names)):
        raise ValueError(
            f"make_model({name!r}): sample_prior(key, n) must return [n, {len(param_names)}] "
            f"(one column per name in param_names={param_names}), got {tuple(probe.shape)} for n=2")
    if symmetry is not None:
        from amortflow.models.symmetry import check_symmetry

        check_symmetry(name, symmetry, sample_prior, simulate, log_likelihood)
    if obs_kind is None:
        model = dataclasses.replace(model, obs_kind=infer_obs_kind(model))
    return model


def _is_shape(s) -> bool:
    return isinstance(s, tuple) and all(isinstance(n, int) for n in s)


def check_design_sampler(name: str, sampler, design_shape) -> None:
    """Raise ``ValueError`` unless ``sampler(key, n)`` returns ``design_shape``'s structure with
    a leading ``n`` on every leaf (checked abstractly, for ``n = 3``)."""
    try:
        out = jax.eval_shape(lambda k: sampler(k, 3), jax.random.PRNGKey(0))
    except Exception as e:  # noqa: BLE001  (any failure of the user's function is reported)
        raise ValueError(f"{name}: sample_design(key, n) failed: {type(e).__name__}: {e}") from None
    want = jax.tree.map(lambda s: (3,) + tuple(s), design_shape, is_leaf=_is_shape)
    got = jax.tree.map(lambda a: tuple(a.shape), out)
    if jax.tree.structure(want, is_leaf=_is_shape) != jax.tree.structure(got, is_leaf=_is_shape) or \
            jax.tree.leaves(want, is_leaf=_is_shape) != jax.tree.leaves(got, is_leaf=_is_shape):
        raise ValueError(f"{name}: sample_design(key, n) must return designs {design_shape} with a leading n "
                         f"axis; for n = 3 it returned {got}")


def rows_exchangeable(model: Model, num_probes: int = 4) -> bool:
    """Whether ``log p(y | theta)`` is unchanged by reordering the rows (leading axis) of ``y``,
    checked at ``num_probes`` prior draws and their simulations with one random permutation
    each (fixed keys: the answer is a property of the model, the same every time)."""
    n = model.obs_shape[0] if model.obs_shape else 0
    if n < 2:
        return False
    key = jax.random.PRNGKey(20240917)
    theta = model.sample_prior(key, num_probes)
    design = (None if model.design_shape is None else jax.tree.map(
        lambda s: jnp.ones((num_probes,) + tuple(s)), model.design_shape,
        is_leaf=lambda s: isinstance(s, tuple)))
    y = model.simulate(jax.random.fold_in(key, 1), theta, design)
    perms = jax.vmap(lambda k: jax.random.permutation(k, n))(jax.random.split(jax.random.fold_in(key, 2), num_probes))
    y_perm = jax.vmap(lambda a, p: a[p])(y, perms)
    args = () if design is None else (design,)
    lik = jax.vmap(model.log_likelihood)
    ll, llp = np.asarray(lik(theta, y, *args), np.float64), np.asarray(lik(theta, y_perm, *args), np.float64)
    finite = np.isfinite(ll)
    if not finite.any() or not np.array_equal(finite, np.isfinite(llp)):
        return False
    return bool(np.all(np.abs(ll[finite] - llp[finite]) <= 1e-4 * (1.0 + np.abs(ll[finite]))))


def infer_obs_kind(model: Model) -> str:
    """The observation kind of :func:`make_model`'s default (see its ``obs_kind``)."""
    if len(model.obs_shape) > 2:
        return "grid"
    return "set" if rows_exchangeable(model) else "vector"
