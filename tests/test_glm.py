"""The Bernoulli GLM (af.models.bernoulli_glm): shipped stimulus, design, prior and likelihood
checked against scipy, and the fixed sufficient-statistics summary."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from amortflow.models import bernoulli_glm, glm_summary_spec
from amortflow.models.glm import _STIMULUS_FILE, glm_design_matrix, glm_prior_precision, glm_stimulus
from amortflow.nets import LinearSummarySpec, build_summary, spec_from_dict, spec_to_dict


@pytest.fixture(scope="module")
def model():
    return bernoulli_glm()


def test_stimulus_is_validated_when_read(tmp_path):
    stim = glm_stimulus()
    assert stim.shape == (100,) and stim.dtype == np.float32
    assert abs(stim.mean()) < 0.3 and 0.7 < stim.std() < 1.3  # white noise
    doc = json.load(open(_STIMULUS_FILE))
    doc["stimulus"][3] += 1e-3
    bad = tmp_path / "stim.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="checksum mismatch"):
        glm_stimulus(str(bad))
    doc["stimulus"] = doc["stimulus"][:50]
    bad.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="100 numbers"):
        glm_stimulus(str(bad))
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="JSON"):
        glm_stimulus(str(bad))


def test_design_matrix_holds_offset_and_lagged_stimulus():
    stim = glm_stimulus()
    x = glm_design_matrix(stim)
    assert x.shape == (100, 10)
    np.testing.assert_array_equal(x[:, 0], 1.0)
    np.testing.assert_array_equal(x[:, 1], stim)
    np.testing.assert_array_equal(x[3:, 4], stim[:97])  # lag 3
    np.testing.assert_array_equal(x[:3, 4], 0.0)


def test_prior_precision_is_the_benchmark_one():
    p = glm_prior_precision()
    assert p[0, 0] == 0.5 and np.all(p[0, 1:] == 0)
    d = np.eye(9) - np.eye(9, k=-1)
    f = d @ d + np.diag(np.sqrt(np.arange(9) / 9))
    np.testing.assert_allclose(p[1:, 1:], f.T @ f)
    assert np.all(np.linalg.eigvalsh(p) > 0)


def test_prior_and_likelihood_match_scipy(model):
    prec = glm_prior_precision()
    x = glm_design_matrix(glm_stimulus())
    theta, ys = model.sample_prior_predictive(jax.random.PRNGKey(0), 4)
    mvn = stats.multivariate_normal(np.zeros(10), np.linalg.inv(prec))
    for th, y in zip(np.asarray(theta, np.float64), np.asarray(ys)):
        assert set(np.unique(y)) <= {0.0, 1.0}
        assert float(model.log_prior(jnp.asarray(th))) == pytest.approx(mvn.logpdf(th), rel=1e-4, abs=1e-3)
        ref = stats.bernoulli(1 / (1 + np.exp(-(x @ th)))).logpmf(y).sum()
        assert float(model.log_likelihood(jnp.asarray(th), jnp.asarray(y))) == pytest.approx(ref, rel=1e-4, abs=1e-3)
    y_bad = np.asarray(ys[0]).copy()
    y_bad[7] = 0.5  # not a spike count
    assert float(model.log_likelihood(theta[0], jnp.asarray(y_bad))) == -np.inf


def test_prior_draws_have_the_prior_covariance(model):
    theta = np.asarray(model.sample_prior(jax.random.PRNGKey(1), 40_000), np.float64)
    cov = np.linalg.inv(glm_prior_precision())
    # sd of a sample covariance entry ~ sqrt((s_ii s_jj + s_ij^2) / n): 5 of them
    tol = 5 * np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov ** 2) / len(theta))
    assert np.all(np.abs(np.cov(theta.T) - cov) < tol)
    assert np.all(np.abs(theta.mean(0)) < 5 * np.sqrt(np.diag(cov) / len(theta)))


def test_summary_is_the_sufficient_statistics(model):
    spec = glm_summary_spec(model)
    assert spec == spec_from_dict(json.loads(json.dumps(spec_to_dict(spec))))
    net = build_summary(spec, 1, (100,))
    _, ys = model.sample_prior_predictive(jax.random.PRNGKey(2), 8)
    x = glm_design_matrix(glm_stimulus())
    got = np.asarray(net.apply({}, ys))
    np.testing.assert_allclose(got, np.asarray(ys) @ x / 10.0, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="101 values"):
        build_summary(spec, 1, (101,))
    with pytest.raises(ValueError, match="rectangular"):
        LinearSummarySpec(((1.0, 2.0), (3.0,)))
    with pytest.raises(ValueError, match="finite"):
        LinearSummarySpec(((1.0, float("nan")),))
