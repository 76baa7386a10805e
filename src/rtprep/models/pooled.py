"""Partial-pooling RT model in PyMC, fitted from per-group sufficient statistics.

The model (one group g = (species, compound); u = its species, c = its compound, k its class)::

    rt_i = a_g + x_i·b_g + ε_i,        ε_i ~ N(0, σ_g²),   x centred on training rows
    a_g ~ N(α0 + species_u + compound_c, τ_group²)
    b_g ~ N(m_g, σ_g² / λ · I)      m_g: fixed (:mod:`rtprep.models.slopes`), λ: fixed
    species_u = cluster_{cl(u)} + τ_species·z
    cluster   = τ_cluster·z
    compound_c = class_k + embedding_c·γ + τ_compound·z,   class_k = τ_class·z
    log σ_g = log σ0 + τ_noise_species·z_u + τ_noise_class·z_k + τ_noise_compound·z_c

The slope prior mean ``m_g`` is the species' slopes plus a smooth function (a spline) of the
compound's training mean RT: a compound's response to the standards follows where it elutes, as
the standards that bracket it move (:mod:`rtprep.models.slopes`). It is estimated in closed form
from the within-group variation of all rows and held fixed, so the fit runs on statistics
shifted by it (exact, :meth:`GroupAlgebra.shifted_by`) and ``m_g`` is added back to the slopes of
the group summaries. The noise is per compound, pooled toward its class and species (a few rows
of one compound say little about its scale, thousands of its class's rows say more).

``λ`` sets how far a group's slopes may stray from that mean. It is in the covariates' units
(a drift of a tenth of a minute makes XᵀX small), so a fixed default fits no dataset: it is
chosen by the within-group restricted likelihood (:func:`rtprep.models.slopes.choose_lambda`,
closed form on a grid) unless ``pooled_lambda`` fixes it; each group's ``XᵀX + λI`` is then
factored once, as before.

All group effects are non-centred (z ~ N(0, 1)); priors are scaled by the spread of rt. The
group's own intercept deviation and slopes are integrated out analytically
(:mod:`rtprep.models.algebra`), so the likelihood is a ``pm.Potential`` over per-group
precomputed arrays: a gradient costs O(groups) and does not depend on the number of rows or
covariates. With ``group_by: species_cluster`` the cluster takes the species' place and the
cluster level above it is dropped.

Rows may carry weights (the robust fit's probability that a row is well assigned,
:mod:`rtprep.models.robust`): the statistics are then weighted sums, which is the M-step of the
mixture's EM.

Inference: mean-field ADVI (Adam with a decaying step and iterate averaging over the last
quarter, which removes most of the stochastic-gradient jitter from the means) or NUTS. Group
posteriors (mean and covariance of intercept and slopes, noise variance) are then exact given
each posterior draw of the hyperparameters, averaged over draws by the law of total covariance.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from rtprep.core.embeddings import EMBEDDING_COLUMN
from rtprep.models import advi
from rtprep.models.algebra import LOG_2PI, GroupAlgebra, GroupMoments
from rtprep.models.data import Covariates, GroupStats, unit_column
from rtprep.models.fitted import FittedModel
from rtprep.models.options import ModelOptions
from rtprep.models.slopes import SlopePrior, choose_lambda, fit_slope_prior

log = logging.getLogger(__name__)


@dataclass
class Embeddings:
    """Standardised compound embeddings (rows in ``chem_ids`` order)."""

    chem_ids: list[str]
    values: np.ndarray  # (n, d) standardised per dimension

    @classmethod
    def from_frame(cls, df: pl.DataFrame) -> Embeddings:
        vals = np.asarray(df[EMBEDDING_COLUMN].to_list(), dtype=np.float64)
        ok = np.isfinite(vals).all(axis=1)
        vals = vals[ok]
        ids = [str(v) for v, keep in zip(df["chem_id"].to_list(), ok, strict=True) if keep]
        centre = vals.mean(axis=0)
        scale = vals.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        return cls(ids, (vals - centre) / scale)

    def for_keys(self, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Rows for ``keys`` (zeros where a key has no embedding) and a has-embedding mask."""
        index = {k: i for i, k in enumerate(self.chem_ids)}
        pos = np.array([index.get(k, -1) for k in keys], dtype=np.int64)
        has = pos >= 0
        out = np.zeros((len(keys), self.values.shape[1]))
        out[has] = self.values[pos[has]]
        return out, has


@dataclass
class PooledData:
    """Index maps and precomputed arrays the PyMC model is built on."""

    units: list[str]
    clusters: list[str]
    compounds: list[str]
    classes: list[str]
    unit_g: np.ndarray
    cpd_g: np.ndarray
    class_g: np.ndarray
    cluster_u: np.ndarray
    class_c: np.ndarray
    emb: np.ndarray | None   # (compounds, d)
    has_parent: bool
    const: float
    y_mean: float
    y_sd: float
    y_sd_within: float
    sigma_init: float


def _codes(values: pl.Series) -> tuple[list[str], np.ndarray]:
    levels = sorted(values.unique().to_list())
    index = {v: i for i, v in enumerate(levels)}
    return levels, np.array([index[v] for v in values.to_list()], dtype=np.int64)


def prepare(stats: GroupStats, alg: GroupAlgebra, group_by: str, sigma_init: float,
            embeddings: Embeddings | None) -> PooledData:
    """Index the groups by species / cluster / compound / class."""
    g = stats.groups
    unit = unit_column(group_by)
    units, unit_g = _codes(g[unit])
    compounds, cpd_g = _codes(g["compound"])
    classes, class_g = _codes(g["compound_class"])
    has_parent = unit == "species"
    if has_parent:
        pairs = g.select(unit, "species_cluster").unique().sort(unit)
        clusters = sorted(pairs["species_cluster"].unique().to_list())
        cidx = {v: i for i, v in enumerate(clusters)}
        cluster_u = np.array([cidx[v] for v in pairs["species_cluster"].to_list()], np.int64)
    else:
        clusters, cluster_u = ["<all>"], np.zeros(len(units), np.int64)
    class_c = np.zeros(len(compounds), np.int64)
    class_c[cpd_g] = class_g
    emb = None
    if embeddings is not None:
        emb, has = embeddings.for_keys(compounds)
        if not has.all():
            log.warning("pooled: %d of %d compounds have no embedding; their embedding term is 0",
                        int((~has).sum()), len(has))
    # y scale from the group means and within-group spread (sufficient statistics only)
    n_tot = alg.n.sum()
    y_mean = float((alg.n * alg.ybar).sum() / n_tot)
    y_var = float(((alg.yty + alg.n * (alg.ybar - y_mean) ** 2).sum()) / max(n_tot - 1, 1))
    return PooledData(
        units=units, clusters=clusters, compounds=compounds, classes=classes, unit_g=unit_g,
        cpd_g=cpd_g, class_g=class_g, cluster_u=cluster_u, class_c=class_c, emb=emb,
        has_parent=has_parent,
        const=float(-0.5 * (n_tot * LOG_2PI + alg.logdet.sum())), y_mean=y_mean,
        y_sd=float(np.sqrt(max(y_var, 1e-12))),
        y_sd_within=float(np.sqrt(max(alg.yty.sum() / n_tot, sigma_init**2, 1e-12))),
        sigma_init=float(sigma_init),
    )


@dataclass
class _Built:
    """The last model built (see :func:`build_model`): its structure key, shared variables
    and the functions compiled from it (compiling costs seconds)."""

    key: tuple[Any, ...]
    model: Any
    shared: dict[str, Any]
    compiled: dict[str, Any] = field(default_factory=dict)


_LAST: list[_Built] = []  # at most one: the next fit of this run is the likely reuse


def clear_model_cache() -> None:
    """Forget the cached model and its compiled functions (the next fit builds afresh)."""
    _LAST.clear()


def _compiled(model: Any, name: str, make: Callable[[], Any]) -> Any:
    """``make()`` once per cached model and ``name``; a model not in the cache compiles anew."""
    built = _LAST[0] if _LAST and _LAST[0].model is model else None
    if built is None:
        return make()
    if name not in built.compiled:
        built.compiled[name] = make()
    return built.compiled[name]


def _model_data(alg: GroupAlgebra, d: PooledData) -> dict[str, Any]:
    """Every data array the model reads, by the name of its shared variable."""
    values: dict[str, Any] = {
        # data-dependent scales too (a literal constant would be compiled into fused C code,
        # which is then rebuilt for every dataset)
        "sd_y": np.float64(d.y_sd), "sd_w": np.float64(d.y_sd_within),
        "y_mean": np.float64(d.y_mean),
        "log_sigma_init": np.float64(np.log(d.sigma_init)), "ll_const": np.float64(d.const),
        # per-group arrays: the Potential only ever sees these, never rows
        "n_g": alg.n, "h_aa": alg.h_aa, "h_a": alg.h_a, "c0": alg.c0, "ybar": alg.ybar,
        "unit_g": d.unit_g, "cpd_g": d.cpd_g, "class_g": d.class_g,
        "cluster_u": d.cluster_u, "class_c": d.class_c,
    }
    if d.emb is not None:
        values["embedding"] = d.emb
    return {k: (np.ascontiguousarray(v) if isinstance(v, np.ndarray) and v.ndim else v)
            for k, v in values.items()}


def build_model(alg: GroupAlgebra, d: PooledData, covs: Covariates) -> Any:
    """State the pooled model in PyMC (named coords, non-centred effects, integrated groups).

    All data enter as shared variables, so a model of the same structure (the same clusters,
    species, compounds, classes and covariates; any groups and rows) is the previous model
    with new values: the robust fit's rounds and the main fit then compile once.
    """
    values = _model_data(alg, d)
    key = (tuple(d.clusters), tuple(d.units), tuple(d.compounds), tuple(d.classes),
           tuple(covs.names), bool(d.has_parent),
           None if d.emb is None else tuple(d.emb.shape),
           tuple(sorted((k, getattr(v, "dtype", None)) for k, v in values.items())))
    if _LAST and _LAST[0].key == key:
        for name, value in values.items():
            _LAST[0].shared[name].set_value(value)
        return _LAST[0].model
    model, shared_vars = _build_model(values, d)
    _LAST[:] = [_Built(key, model, shared_vars)]
    return model


def _build_model(values: dict[str, Any], d: PooledData) -> tuple[Any, dict[str, Any]]:
    import pymc as pm
    import pytensor
    import pytensor.tensor as pt

    sv = {name: pytensor.shared(value, name=name) for name, value in values.items()}
    coords: dict[str, Any] = {"cluster": d.clusters, "species": d.units,
                              "compound": d.compounds, "compound_class": d.classes}
    if d.emb is not None:
        coords["embedding_dim"] = [f"e{i}" for i in range(d.emb.shape[1])]
    sd_y = sv["sd_y"]
    # group deviations live on the within-group scale of rt, not its spread across compounds
    sd_w = sv["sd_w"]
    with pm.Model(coords=coords) as model:
        z_alpha = pm.Normal("z_alpha", 0.0, 1.0)
        alpha0 = pm.Deterministic("alpha0", sv["y_mean"] + sd_y * z_alpha)
        # intercept effects
        if d.has_parent:
            tau_cluster = pm.HalfNormal("tau_cluster", sd_y)
            z_cluster = pm.Normal("z_cluster", 0.0, 1.0, dims="cluster")
            cluster_eff = pm.Deterministic("cluster_effect", tau_cluster * z_cluster,
                                           dims="cluster")
            parent_int = cluster_eff[sv["cluster_u"]]
        else:
            parent_int = pt.zeros(len(d.units))
        tau_species = pm.HalfNormal("tau_species", sd_y)
        z_species = pm.Normal("z_species", 0.0, 1.0, dims="species")
        species_eff = pm.Deterministic("species_effect", parent_int + tau_species * z_species,
                                       dims="species")
        tau_class = pm.HalfNormal("tau_class", sd_y)
        z_class = pm.Normal("z_class", 0.0, 1.0, dims="compound_class")
        class_eff = pm.Deterministic("class_effect", tau_class * z_class, dims="compound_class")
        cpd_prior = class_eff[sv["class_c"]]
        if d.emb is not None:
            # the embedding regression shrinks as a whole (τ_gamma): with few compounds per
            # dimension an unshrunk 20-D regression overfits
            tau_gamma = pm.HalfNormal("tau_gamma", sd_y / float(np.sqrt(d.emb.shape[1])))
            z_gamma = pm.Normal("z_gamma", 0.0, 1.0, dims="embedding_dim")
            gamma = pm.Deterministic("gamma", tau_gamma * z_gamma, dims="embedding_dim")
            cpd_prior = cpd_prior + pt.dot(sv["embedding"], gamma)
        tau_compound = pm.HalfNormal("tau_compound", sd_y)
        z_compound = pm.Normal("z_compound", 0.0, 1.0, dims="compound")
        compound_eff = pm.Deterministic("compound_effect", cpd_prior + tau_compound * z_compound,
                                        dims="compound")
        tau_group = pm.HalfNormal("tau_group", sd_w)
        # noise per compound, pooled toward its class and species
        z_ls = pm.Normal("z_log_sigma", 0.0, 1.0)
        log_sigma0 = pm.Deterministic("log_sigma0", sv["log_sigma_init"] + z_ls)
        tau_ns = pm.HalfNormal("tau_noise_species", 0.5)
        z_ns = pm.Normal("z_noise_species", 0.0, 1.0, dims="species")
        noise_species = pm.Deterministic("noise_species", tau_ns * z_ns, dims="species")
        tau_nk = pm.HalfNormal("tau_noise_class", 0.5)
        z_nk = pm.Normal("z_noise_class", 0.0, 1.0, dims="compound_class")
        noise_class = pm.Deterministic("noise_class", tau_nk * z_nk, dims="compound_class")
        tau_nc = pm.HalfNormal("tau_noise_compound", 0.5)
        z_nc = pm.Normal("z_noise_compound", 0.0, 1.0, dims="compound")
        noise_compound = pm.Deterministic("noise_compound", tau_nc * z_nc, dims="compound")
        # integrated likelihood of every group (slope prior mean 0: the statistics are shifted)
        log_s = (log_sigma0 + noise_species[sv["unit_g"]] + noise_class[sv["class_g"]]
                 + noise_compound[sv["cpd_g"]])
        s2 = pt.exp(2.0 * log_s)
        tau2 = tau_group**2
        h_aa, h_a = sv["h_aa"], sv["h_a"]
        mu = alpha0 + species_eff[sv["unit_g"]] + compound_eff[sv["cpd_g"]] - sv["ybar"]
        q0 = sv["c0"] - 2.0 * mu * h_a + mu**2 * h_aa
        q1 = h_a - mu * h_aa
        ll = sv["ll_const"] - 0.5 * pt.sum(
            sv["n_g"] * 2.0 * log_s + pt.log1p(tau2 * h_aa / s2) + q0 / s2
            - tau2 * q1**2 / (s2 * (s2 + tau2 * h_aa)))
        pm.Potential("integrated_groups", ll)
    return model, sv


_DRAW_VARS = ("alpha0", "species_effect", "class_effect", "compound_effect", "tau_group",
              "log_sigma0", "noise_species", "noise_class", "noise_compound",
              "tau_species", "tau_class", "tau_compound", "tau_noise_species",
              "tau_noise_class", "tau_noise_compound")


def initial_point(alg: GroupAlgebra, d: PooledData) -> dict[str, Any]:
    """Start from moment estimates: compound and class effects from the group means."""
    n_c = len(d.compounds)
    w = np.bincount(d.cpd_g, weights=alg.n, minlength=n_c)
    v_hat = np.bincount(d.cpd_g, weights=alg.n * alg.ybar, minlength=n_c) / np.maximum(
        w, 1e-300) - d.y_mean
    n_k = len(d.classes)
    k_hat = (np.bincount(d.class_c, weights=v_hat, minlength=n_k)
             / np.maximum(np.bincount(d.class_c, minlength=n_k), 1))
    tau_k = float(max(np.std(k_hat), 0.05 * d.y_sd))
    resid = v_hat - k_hat[d.class_c]
    gamma = None
    if d.emb is not None:
        # start the embedding regression at its ridge fit to the compound residuals: started
        # at 0 with z_compound absorbing everything, only the weak prior pull on z_compound
        # moves γ, and ADVI would leave it near 0 for thousands of steps
        emb = d.emb
        gamma = np.linalg.solve(emb.T @ emb + np.eye(emb.shape[1]), emb.T @ resid)
        resid = resid - emb @ gamma
    tau_c = float(max(np.std(resid), 0.05 * d.y_sd))
    start: dict[str, Any] = {
        "tau_class": tau_k, "z_class": k_hat / tau_k, "tau_compound": tau_c,
        "z_compound": resid / tau_c, "tau_species": 0.05 * d.y_sd,
        "tau_group": d.y_sd_within, "tau_noise_species": 0.1, "tau_noise_class": 0.1,
        "tau_noise_compound": 0.1,
    }
    if d.has_parent:
        start["tau_cluster"] = 0.05 * d.y_sd
    if gamma is not None:
        tau_g = float(max(np.sqrt(np.mean(gamma**2)), 0.01 * d.y_sd))
        start["z_gamma"] = gamma / tau_g
        start["tau_gamma"] = tau_g
    return start


def _fit_advi(model: Any, options: ModelOptions, start: dict[str, Any], *,
              label: str = "pooled", until_converged: bool = False,
              max_steps: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Mean-field ADVI (:mod:`rtprep.models.advi`) on the PyMC model's compiled log density and
    gradient, from ``start``; ``summary_draws`` draws of the summarised variables, and the fit's
    diagnostics."""
    draws, info, _ = fit_advi_state(model, options, start, label=label,
                                    until_converged=until_converged, max_steps=max_steps)
    return draws, info


def fit_advi_state(model: Any, options: ModelOptions, start: dict[str, Any], *,
                   label: str = "pooled", until_converged: bool = False,
                   max_steps: int | None = None, q_start: advi.Gaussian | None = None,
                   ) -> tuple[dict[str, np.ndarray], dict[str, Any], advi.Gaussian]:
    """:func:`_fit_advi`, also returning the variational state kept; ``q_start`` (a state of a
    model of the same parameters, e.g. the previous robust round's) replaces the start point
    (``warm_start`` in the diagnostics says which was used)."""
    from pymc.blocking import DictToArrayBijection
    from pymc.initial_point import make_initial_point_fn

    t0 = time.perf_counter()
    value_vars = model.value_vars
    ip = make_initial_point_fn(model=model, overrides=start, jitter_rvs={},
                               return_transformed=True)(options.seed)
    raveled = DictToArrayBijection.map({v.name: ip[v.name] for v in value_vars})
    def make_logp() -> Any:
        f = model.logp_dlogp_function(grad_vars=value_vars, ravel_inputs=True)
        f.set_extra_values({})
        return f

    fn = _compiled(model, "logp_dlogp", make_logp)
    t_compile = time.perf_counter() - t0
    mu0 = np.asarray(raveled.data, dtype=np.float64).copy()
    warm = q_start is not None and q_start.mu.shape == mu0.shape
    q0 = (advi.Gaussian(q_start.mu.copy(), q_start.omega.copy()) if warm and q_start is not None
          else advi.Gaussian(mu0, np.full_like(mu0, np.log(0.1))))
    settings = advi.AdviSettings(steps=options.steps(), learning_rate=options.learning_rate,
                                 seed=options.seed, label=label,
                                 until_converged=until_converged, max_steps=max_steps)
    q, diag = advi.fit(fn, q0, settings)
    draws_x = q.sample(options.summary_draws, options.seed + 1)
    points = [DictToArrayBijection.rmap(type(raveled)(x, raveled.point_map_info))
              for x in draws_x]
    draws = _deterministics(model, points)
    info = {"method": "advi", **diag, "seconds": round(time.perf_counter() - t0, 3),
            "compile_seconds": round(t_compile, 3), "learning_rate": options.learning_rate,
            "parameters": len(mu0), "warm_start": warm}
    return draws, info, q


def _deterministics(model: Any, points: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Values of the summarised variables at each point (dicts of transformed values)."""
    names = _present(model, _DRAW_VARS)
    fn = _compiled(model, "deterministics", lambda: model.compile_fn(
        model.replace_rvs_by_values([model[n] for n in names]), point_fn=True))
    vals = [fn(pt_) for pt_ in points]
    return {n: np.stack([np.asarray(v[i], dtype=np.float64) for v in vals])
            for i, n in enumerate(names)}



def _fit_nuts(model: Any, options: ModelOptions, start: dict[str, Any],
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    import arviz as az
    import pymc as pm

    t0 = time.perf_counter()
    with model:
        idata = pm.sample(draws=options.nuts_draws, tune=options.nuts_tune,
                          chains=options.nuts_chains, cores=1, random_seed=options.seed,
                          initvals=start, progressbar=False, compute_convergence_checks=False)
    free = [v.name for v in model.free_RVs]
    rhat = az.rhat(idata, var_names=free)
    ess = az.ess(idata, var_names=free, method="bulk")
    rhat_max = float(max(float(np.nanmax(rhat[v].values)) for v in free))
    ess_min = float(min(float(np.nanmin(ess[v].values)) for v in free))
    worst = {v: float(np.nanmax(rhat[v].values)) for v in free}
    div = int(idata.sample_stats["diverging"].values.sum())
    info = {"method": "nuts", "draws": options.nuts_draws, "tune": options.nuts_tune,
            "chains": options.nuts_chains, "seconds": round(time.perf_counter() - t0, 3),
            "rhat_max": rhat_max, "ess_bulk_min": ess_min, "divergences": div,
            "rhat_by_variable": worst}
    log.info("pooled: NUTS r-hat max %.3f, bulk ESS min %.0f, %d divergences", rhat_max,
             ess_min, div)
    draws = _draws(idata, model)
    total = next(iter(draws.values())).shape[0]
    keep = np.unique(np.linspace(0, total - 1, min(options.summary_draws, total)).astype(int))
    return {k: v[keep] for k, v in draws.items()}, info


def _present(model: Any, names: tuple[str, ...]) -> list[str]:
    have = set(model.named_vars)
    return [n for n in (*names, "cluster_effect", "gamma", "tau_cluster") if n in have]


def _draws(idata: Any, model: Any) -> dict[str, np.ndarray]:
    post = idata.posterior
    out = {}
    for name in _present(model, _DRAW_VARS):
        v = post[name].values  # (chain, draw, ...)
        out[name] = v.reshape(-1, *v.shape[2:]).astype(np.float64)
    return out


def fit_pooled(stats: GroupStats, covs: Covariates, alg: GroupAlgebra, options: ModelOptions, *,
               sigma_init: float, embeddings: Embeddings | None = None,
               meta: dict[str, Any] | None = None,
               species_map: dict[str, str] | None = None,
               prepared: PreparedFit | None = None) -> FittedModel:
    """Fit the pooled model and summarise it per group and per effect level (``prepared``:
    the statistics, slope prior and λ of an earlier :func:`prepare_fit` on the same rows)."""
    fit = prepared or prepare_fit(stats, alg, options, sigma_init, embeddings)
    d, alg = fit.data, fit.alg
    model = build_model(alg, d, covs)
    start = initial_point(alg, d)
    if options.method == "nuts":
        draws, info = _fit_nuts(model, options, start)
    else:
        draws, info = _fit_advi(model, options, start)
    mean, cov, noise_var, noise_df = group_posteriors(alg, d, draws)
    mean[:, 1:] += fit.slope_means
    effects, hyper = effect_tables(d, draws, embeddings, covs, fit.prior)
    meta = dict(meta or {})
    meta["fit"] = info
    meta["hyper"] = hyper
    meta["pooled"] = {"n_species": len(d.units), "n_clusters": len(d.clusters),
                      "n_compounds": len(d.compounds), "n_classes": len(d.classes),
                      "slope_lambda": alg.lam, "slope_lambda_choice": fit.lambda_info,
                      "slope_prior": None if fit.prior is None else {
                          "knots": len(fit.prior.knots), "basis": int(fit.prior.kappa.shape[0]),
                          "species_shrink": fit.prior.species_shrink},
                      "embeddings": d.emb is not None,
                      "summary_draws": int(next(iter(draws.values())).shape[0])}
    return FittedModel(kind="pooled", group_by=options.group_by, covariates=covs,
                       ridge_lambda=alg.lam, groups=stats.groups, mean=mean, cov=cov,
                       noise_var=noise_var, noise_df=noise_df,
                       meta=meta, effects=effects, species_map=dict(species_map or {}))


@dataclass
class PreparedFit:
    """What the fit runs on: the indexed data, the algebra of the shifted statistics, the fixed
    slope prior (``None`` without covariates) and each group's slope prior mean ``m_g``."""

    data: PooledData
    alg: GroupAlgebra
    prior: SlopePrior | None
    slope_means: np.ndarray   # (G, p)
    lambda_info: dict[str, Any] | None


def prepare_fit(stats: GroupStats, alg: GroupMoments, options: ModelOptions, sigma_init: float,
                embeddings: Embeddings | None) -> PreparedFit:
    """:func:`prepare`, the slope prior mean estimated (:mod:`rtprep.models.slopes`), λ chosen,
    and the statistics shifted by the prior mean.

    ``alg``: the statistics' moments; a :class:`GroupAlgebra` at the fit's λ is reused, any
    other is factored once at the λ chosen (the prior and λ need the moments only).
    """
    lam = float(options.pooled_lambda)
    p = alg.p
    if not p:
        full = (alg if isinstance(alg, GroupAlgebra)  # no slopes: λ plays no part
                else GroupAlgebra.from_stats(stats, lam if lam > 0 else 1.0))
        return PreparedFit(prepare(stats, full, options.group_by, sigma_init, embeddings),
                           full, None, np.zeros((len(alg.n), 0)), None)
    g = stats.groups
    units, unit_g = _codes(g[unit_column(options.group_by)])
    compounds, cpd_g = _codes(g["compound"])
    prior = fit_slope_prior(alg, unit_g, cpd_g, len(units), len(compounds),
                            int(options.slope_knots) if options.slope_by_rt else None)
    m = prior.group_means(unit_g, cpd_g)
    log.info("pooled: slope prior mean along the gradient: %d basis functions, "
             "spread of compound slopes %.4g", prior.kappa.shape[0],
             float(np.abs(prior.compound_slopes()).sum(axis=1).std()))
    lam_info = None
    if lam <= 0:
        lam, lam_info = choose_lambda(alg, m)
    full = (alg if isinstance(alg, GroupAlgebra) and alg.lam == lam
            else GroupAlgebra.from_stats(stats, lam))
    shifted = full.shifted_by(m)
    return PreparedFit(prepare(stats, shifted, options.group_by, sigma_init, embeddings),
                       shifted, prior, m, lam_info)


def _log_s2(d: PooledData, draws: dict[str, np.ndarray]) -> np.ndarray:
    """log σ_g² per draw and group (draws, G)."""
    return 2.0 * (draws["log_sigma0"][:, None] + draws["noise_species"][:, d.unit_g]
                  + draws["noise_class"][:, d.class_g] + draws["noise_compound"][:, d.cpd_g])


def group_posteriors(alg: GroupAlgebra, d: PooledData, draws: dict[str, np.ndarray],
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-group posterior mean and covariance of (intercept, slopes), noise variance and the
    degrees of freedom of the predictive t (:func:`group_posterior_parts`, the covariance's
    two parts summed)."""
    mean, within, between, noise_var, df = group_posterior_parts(alg, d, draws)
    return mean, within + between, noise_var, df


def group_posterior_parts(alg: GroupAlgebra, d: PooledData, draws: dict[str, np.ndarray],
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                     np.ndarray]:
    """Per-group posterior mean of (intercept, slopes), the two parts of its covariance (within
    draws, between draws), noise variance and the degrees of freedom of the predictive t.

    Exact given each draw of the hyperparameters; combined over draws by the law of total
    covariance: E[Cov | draw] + Cov[E | draw]. The noise scale's own uncertainty (few rows of a
    compound behind it) makes the predictive a scale mixture of normals: it is summarised as a
    t whose degrees of freedom match the posterior variance of log σ² (``ν ≈ 2 / Var log σ²``,
    as for a scaled-inverse-χ² posterior).
    """
    g, p = alg.ks.shape
    n_draws = draws["alpha0"].shape[0]
    log_s2 = _log_s2(d, draws)
    s_theta = np.zeros((g, p + 1))
    s_outer = np.zeros((g, p + 1, p + 1))
    s_w = np.zeros(g)
    s_ws = np.zeros(g)
    block = np.empty((g, p + 1, _OUTER_BLOCK))  # a few draws' θ, for one batched product
    outer = np.empty_like(s_outer)
    for i in range(n_draws):  # a loop over posterior draws (tens), each vectorised over groups
        s2 = np.exp(log_s2[i])
        rho = s2 / draws["tau_group"][i] ** 2
        mu = (draws["alpha0"][i] + draws["species_effect"][i][d.unit_g]
              + draws["compound_effect"][i][d.cpd_g] - alg.ybar)
        a, b, s_schur = alg.posterior(rho, mu, None)  # the prior slope mean is 0 here
        theta = block[:, :, i % _OUTER_BLOCK]
        theta[:, 0] = alg.ybar + a
        theta[:, 1:] = b
        s_theta += theta
        if i % _OUTER_BLOCK == _OUTER_BLOCK - 1 or i == n_draws - 1:  # Σ θθᵀ over the block
            used = block[:, :, :i % _OUTER_BLOCK + 1]
            s_outer += np.matmul(used, used.transpose(0, 2, 1), out=outer)
        s_w += s2
        s_ws += s2 / s_schur
    mean = s_theta / n_draws
    between = (s_outer / n_draws - mean[:, :, None] * mean[:, None, :]).reshape(g, -1)
    within = alg.covariance(s_w / n_draws, s_ws / n_draws)
    var_log = log_s2.var(axis=0) if n_draws > 1 else np.zeros(g)
    df = np.where(var_log > 1e-12, 2.0 / np.maximum(var_log, 1e-12), np.inf)
    df = np.where(df > MAX_DF, np.inf, np.maximum(df, MIN_DF))
    return mean, within, between, s_w / n_draws, df


#: Draws whose θθᵀ are summed in one batched product (:func:`group_posterior_parts`).
_OUTER_BLOCK = 8
#: Degrees of freedom of the predictive t: beyond ``MAX_DF`` a normal; never below ``MIN_DF``.
MAX_DF = 200.0
MIN_DF = 3.0


def effect_tables(d: PooledData, draws: dict[str, np.ndarray], embeddings: Embeddings | None,
                  covs: Covariates, prior: SlopePrior | None,
                  ) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Effects per level for backoff, and the hyperparameters (E[τ²]) the backoff needs.

    Slopes: the species' fixed slopes, the cluster's and the global mean of them (their spread
    as the slope covariance and as ``tau_slope_*``); each compound's part of the slope prior
    mean (the spline at its RT) on the compound rows.
    """
    p = len(covs.names)
    sl = _SlopeLevels.of(d, prior, p)
    frames = [_effect_frame("global", ["global"], None, draws["alpha0"][:, None], p,
                            sl.glob_mean[None],
                            _outer(sl.dev_cl if d.has_parent else sl.dev_u)[None],
                            draws["log_sigma0"][:, None])]
    unit_level = "species" if d.has_parent else "cluster"
    if d.has_parent:
        frames.append(_effect_frame("cluster", d.clusters, None, draws["cluster_effect"], p,
                                    sl.cl_mean, _outer(sl.dev_u)[None]))
    frames.append(_effect_frame(unit_level, d.units,
                                [d.clusters[i] for i in d.cluster_u] if d.has_parent else None,
                                draws["species_effect"], p, sl.beta, None,
                                draws["noise_species"]))
    frames.append(_effect_frame("class", d.classes, None, draws["class_effect"], p, None, None,
                                draws["noise_class"]))
    cpd_slopes = (prior.compound_slopes() if prior is not None
                  else np.zeros((len(d.compounds), p)))
    frames.append(_effect_frame("compound", d.compounds, [d.classes[i] for i in d.class_c],
                                draws["compound_effect"], p, cpd_slopes, None,
                                draws["noise_compound"]))
    if embeddings is not None and "gamma" in draws:
        frames.append(_effect_frame("embedding", embeddings.chem_ids, None,
                                    draws["gamma"] @ embeddings.values.T, p))
    return pl.concat(frames, how="vertical"), _hyper(d, draws, sl, prior)


@dataclass
class _SlopeLevels:
    """The species' fixed slopes, their cluster and global means and spreads."""

    beta: np.ndarray       # (units, p)
    cl_mean: np.ndarray    # (clusters, p)
    glob_mean: np.ndarray  # (p,)
    dev_u: np.ndarray      # species - their cluster's mean
    dev_cl: np.ndarray     # cluster means - the global mean
    tau_ss: np.ndarray     # (p,) mean square of dev_u
    tau_sc: np.ndarray     # (p,) mean square of dev_cl (0 without a cluster level)

    @classmethod
    def of(cls, d: PooledData, prior: SlopePrior | None, p: int) -> _SlopeLevels:
        beta = prior.beta_u if prior is not None else np.zeros((len(d.units), p))
        n_cl = len(d.clusters)
        cl_of = d.cluster_u if d.has_parent else np.zeros(len(d.units), np.int64)
        cnt = np.maximum(np.bincount(cl_of, minlength=n_cl), 1)[:, None]
        cl_mean = np.stack([np.bincount(cl_of, weights=beta[:, j], minlength=n_cl)
                            for j in range(p)], axis=1) / cnt if p else np.zeros((n_cl, 0))
        glob_mean = beta.mean(axis=0) if len(beta) else np.zeros(p)
        dev_u = beta - cl_mean[cl_of]
        dev_cl = cl_mean - glob_mean[None]
        return cls(beta=beta, cl_mean=cl_mean, glob_mean=glob_mean, dev_u=dev_u, dev_cl=dev_cl,
                   tau_ss=(dev_u**2).mean(axis=0) if len(beta) else np.zeros(p),
                   tau_sc=(dev_cl**2).mean(axis=0) if d.has_parent else np.zeros(p))


def _outer(dev: np.ndarray) -> np.ndarray:
    """The mean outer product of the rows of ``dev``, flattened."""
    return np.einsum("li,lj->ij", dev, dev).reshape(-1) / max(len(dev), 1)


def _effect_frame(level: str, keys: list[str], parent: list[str | None] | None,
                  int_draws: np.ndarray, p: int, slopes: np.ndarray | None = None,
                  slope_cov: np.ndarray | None = None,
                  noise: np.ndarray | None = None) -> pl.DataFrame:
    """The rows of one level in ``effects.parquet`` (intercept draws summarised)."""
    n = len(keys)
    frame = pl.DataFrame({
        "level": [level] * n, "key": keys,
        "parent": parent if parent is not None else [None] * n,
        "intercept_mean": int_draws.mean(axis=0), "intercept_var": int_draws.var(axis=0),
    }, schema_overrides={"parent": pl.String})
    if slopes is not None:
        cov = (np.zeros((n, p * p)) if slope_cov is None
               else np.broadcast_to(slope_cov, (n, p * p)))
        frame = frame.with_columns(
            pl.Series("slope_mean", slopes, dtype=pl.Array(pl.Float64, p)),
            pl.Series("slope_cov", np.ascontiguousarray(cov), dtype=pl.Array(pl.Float64, p * p)))
    else:
        frame = frame.with_columns(
            pl.lit(None, dtype=pl.Array(pl.Float64, p)).alias("slope_mean"),
            pl.lit(None, dtype=pl.Array(pl.Float64, p * p)).alias("slope_cov"))
    return frame.with_columns(
        pl.Series("log_noise_sd", noise.mean(axis=0) if noise is not None
                  else np.full(n, np.nan), dtype=pl.Float64).fill_nan(None))


def _hyper(d: PooledData, draws: dict[str, np.ndarray], sl: _SlopeLevels,
           prior: SlopePrior | None) -> dict[str, Any]:
    """The hyperparameters the backoff needs (E[τ²] over the draws)."""
    def e2(name: str) -> Any:
        v = (draws[name] ** 2).mean(axis=0)
        return v.tolist() if np.ndim(v) else float(v)

    hyper: dict[str, Any] = {
        "tau_group2": e2("tau_group"), "tau_species2": e2("tau_species"),
        "tau_cluster2": e2("tau_cluster") if d.has_parent else 0.0,
        "tau_class2": e2("tau_class"), "tau_compound2": e2("tau_compound"),
        "tau_noise_species2": e2("tau_noise_species"), "tau_noise_class2": e2("tau_noise_class"),
        "tau_noise_compound2": e2("tau_noise_compound"),
        "tau_slope_species2": sl.tau_ss.tolist(), "tau_slope_cluster2": sl.tau_sc.tolist(),
        "log_sigma0": float(draws["log_sigma0"].mean()),
        "alpha0": float(draws["alpha0"].mean()),
    }
    if prior is not None:
        hyper["slope_prior"] = prior.to_json()
    if "gamma" in draws:
        hyper["gamma"] = draws["gamma"].mean(axis=0).tolist()
    return hyper
