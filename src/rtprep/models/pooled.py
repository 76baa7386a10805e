"""Partial-pooling RT model in PyMC, fitted from per-group sufficient statistics.

The model (one group g = (species, compound); u = its species, c = its compound)::

    rt_i = a_g + x_i·b_g + ε_i,        ε_i ~ N(0, σ²_cell(g)),   x centred on training rows
    a_g ~ N(α0 + species_u + compound_c, τ_group²)
    b_g ~ N(slope_species_u + t_c·κ, σ²_cell / λ · I)   λ: fixed (see :func:`choose_lambda`)
    species_u = cluster_{cl(u)} + τ_species·z            slope_species_u = slope_cluster + τ·z
    cluster   = τ_cluster·z                              slope_cluster  = slope_global + τ·z
    compound_c = class_{k(c)} + embedding_c·γ + τ_compound·z,   class_k = τ_class·z
    log σ_cell = log σ0 + τ_noise_species·z_u + τ_noise_class·z_k     (cell = (species, class))

``t_c`` is the compound's training mean rt minus the overall mean, and ``κ`` (``slope_rt``, one
per covariate) lets the slopes change along the gradient: an injection that runs a little slower
(standards later by a factor ``1 + s``) moves a late eluter more than an early one, so a
compound's slope on the standards' RTs grows with its own RT. Without this term every compound
of a species shares one slope vector, which is wrong for all but mid-gradient compounds. ``κ``
is estimated once, in closed form, from the within-group variation of all rows (species slopes
and κ by least squares on the within-group sufficient statistics), and then held fixed: with κ
known, ``y - t_c x·κ`` has slopes ``b_g - t_c κ ~ N(slope_species_u, σ²/λ)``, so the fit runs on
shifted sufficient statistics (exact, :meth:`GroupAlgebra.shifted`) at no cost per step, and
``t_c κ`` is added back to the slopes of the group summaries.

``λ`` sets how far a group's slopes may stray from that mean. It is in the covariates' units
(a drift of a tenth of a minute makes XᵀX small), so a fixed default fits no dataset: it is
chosen by the within-group restricted likelihood (:func:`choose_lambda`, closed form on a grid)
unless ``pooled_lambda`` fixes it; each group's ``XᵀX + λI`` is then factored once, as before.

All group effects are non-centred (z ~ N(0, 1)); priors are scaled by the spread of rt and of
the covariates. The group's own intercept deviation and slopes are integrated out analytically
(:mod:`rtprep.models.algebra`), so the likelihood is a ``pm.Potential`` over per-group
precomputed arrays: a gradient costs O(groups × p + cells × p²) and does not depend on the
number of rows. With ``group_by: species_cluster`` the cluster takes the species' place and the
cluster level above it is dropped.

Inference: mean-field ADVI (Adam with a decaying step and iterate averaging over the last
quarter, which removes most of the stochastic-gradient jitter from the means) or NUTS. Group
posteriors (mean and covariance of intercept and slopes, noise variance) are then exact given
each posterior draw of the hyperparameters, averaged over draws by the law of total covariance.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from rtprep.models import advi
from rtprep.models.algebra import LOG_2PI, GroupAlgebra
from rtprep.models.data import Covariates, GroupStats, unit_column
from rtprep.models.fitted import FittedModel
from rtprep.models.options import ModelOptions

log = logging.getLogger(__name__)


@dataclass
class Embeddings:
    """Standardised compound embeddings (rows in ``chem_ids`` order)."""

    chem_ids: list[str]
    values: np.ndarray  # (n, d) standardised per dimension

    @classmethod
    def from_frame(cls, df: pl.DataFrame) -> Embeddings:
        vals = np.asarray(df["embedding20"].to_list(), dtype=np.float64)
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
    cell_g: np.ndarray
    cluster_u: np.ndarray
    class_c: np.ndarray
    unit_cell: np.ndarray
    class_cell: np.ndarray
    n_cell: np.ndarray
    hm_cell: np.ndarray      # (cells, p)  Σ_g λKc
    hmm_cell: np.ndarray     # (cells, p, p)  Σ_g λ(I - λK)
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
    """Index the groups by species / cluster / compound / class / noise cell; sum cell terms."""
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
    cell_key = unit_g * len(classes) + class_g
    cells, cell_g = np.unique(cell_key, return_inverse=True)
    n_cells = len(cells)
    p = alg.p
    hm_cell = np.zeros((n_cells, p))
    np.add.at(hm_cell, cell_g, alg.h_m)
    hmm_cell = np.zeros((n_cells, p, p))
    np.add.at(hmm_cell, cell_g, alg.h_mm())
    n_cell = np.bincount(cell_g, weights=alg.n, minlength=n_cells)
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
        cpd_g=cpd_g, cell_g=cell_g, cluster_u=cluster_u, class_c=class_c,
        unit_cell=cells // len(classes), class_cell=cells % len(classes), n_cell=n_cell,
        hm_cell=hm_cell, hmm_cell=hmm_cell, emb=emb, has_parent=has_parent,
        const=float(-0.5 * (n_tot * LOG_2PI + alg.logdet.sum())), y_mean=y_mean,
        y_sd=float(np.sqrt(max(y_var, 1e-12))),
        y_sd_within=float(np.sqrt(max(alg.yty.sum() / n_tot, sigma_init**2, 1e-12))),
        sigma_init=float(sigma_init),
    )


#: The last model built, by structure (see :func:`build_model`), with its shared variables.
_MODEL_CACHE: dict[tuple[Any, ...], tuple[Any, dict[str, Any]]] = {}
#: Compiled log density + gradient per cached model (by ``id``): compiling costs seconds.
_FN_CACHE: dict[int, Any] = {}


def _model_data(alg: GroupAlgebra, d: PooledData, covs: Covariates) -> dict[str, Any]:
    """Every data array the model reads, by the name of its shared variable."""
    import scipy.sparse as sp

    g_n, p_n = alg.h_am.shape
    ham = sp.csr_matrix(
        (alg.h_am.ravel(),
         (np.repeat(np.arange(g_n), p_n),
          (d.unit_g[:, None] * p_n + np.arange(p_n)[None, :]).ravel())),
        shape=(g_n, max(len(d.units), 1) * p_n)) if p_n else sp.csr_matrix((g_n, 0))
    values: dict[str, Any] = {
        # data-dependent scales too (a literal constant would be compiled into fused C code,
        # which is then rebuilt for every dataset)
        "sd_y": np.float64(d.y_sd), "sd_w": np.float64(d.y_sd_within),
        "slope_scale": d.y_sd_within / covs.scale, "y_mean": np.float64(d.y_mean),
        "log_sigma_init": np.float64(np.log(d.sigma_init)), "ll_const": np.float64(d.const),
        # per-group arrays: the Potential only ever sees these, never rows
        "h_aa": alg.h_aa, "h_a": alg.h_a, "c0": alg.c0, "ybar": alg.ybar,
        "n_cell": d.n_cell, "hm_cell": d.hm_cell, "hmm_cell": d.hmm_cell, "ham_sparse": ham,
        "unit_g": d.unit_g, "cpd_g": d.cpd_g, "cell_g": d.cell_g, "unit_cell": d.unit_cell,
        "class_cell": d.class_cell, "cluster_u": d.cluster_u, "class_c": d.class_c,
    }
    if d.emb is not None:
        values["embedding"] = d.emb
    return {k: (np.ascontiguousarray(v) if isinstance(v, np.ndarray) and v.ndim else v)
            for k, v in values.items()}


def build_model(alg: GroupAlgebra, d: PooledData, covs: Covariates) -> Any:
    """State the pooled model in PyMC (named coords, non-centred effects, integrated groups).

    All data enter as shared variables, so a model of the same structure (the same clusters,
    species, compounds, classes and covariates; any groups and rows) is the previous model
    with new values: the outlier screen's fit and the main fit then compile once.
    """
    values = _model_data(alg, d, covs)
    key = (tuple(d.clusters), tuple(d.units), tuple(d.compounds), tuple(d.classes),
           tuple(covs.names), bool(d.has_parent),
           None if d.emb is None else tuple(d.emb.shape),
           tuple(sorted((k, getattr(v, "dtype", None)) for k, v in values.items())))
    cached = _MODEL_CACHE.get(key)
    if cached is not None:
        model, shared_vars = cached
        for name, value in values.items():
            shared_vars[name].set_value(value)
        return model
    model, shared_vars = _build_model(values, d, covs)
    _MODEL_CACHE.clear()  # one model kept: the next fit of this run is the likely reuse
    _FN_CACHE.clear()
    _MODEL_CACHE[key] = (model, shared_vars)
    return model


def _build_model(values: dict[str, Any], d: PooledData, covs: Covariates,
                 ) -> tuple[Any, dict[str, Any]]:
    import pymc as pm
    import pytensor
    import pytensor.sparse as ps
    import pytensor.tensor as pt

    shared_vars = {name: pytensor.shared(value, name=name) for name, value in values.items()}
    coords: dict[str, Any] = {"cluster": d.clusters, "species": d.units,
                              "compound": d.compounds, "compound_class": d.classes,
                              "covariate": covs.names}
    if d.emb is not None:
        coords["embedding_dim"] = [f"e{i}" for i in range(d.emb.shape[1])]
    sd_y = shared_vars["sd_y"]
    # slopes and group deviations live on the within-group scale of rt, not its spread across
    # compounds: a slope's prior scale is the within-group sd of rt per sd of the covariate
    sd_w = shared_vars["sd_w"]
    slope_scale = shared_vars["slope_scale"]
    y_mean = shared_vars["y_mean"]
    log_sigma_init = shared_vars["log_sigma_init"]
    ll_const = shared_vars["ll_const"]
    h_aa = shared_vars["h_aa"]
    h_a = shared_vars["h_a"]
    c0 = shared_vars["c0"]
    ybar = shared_vars["ybar"]
    n_cell = shared_vars["n_cell"]
    hm_cell = shared_vars["hm_cell"]
    hmm_cell = shared_vars["hmm_cell"]
    ham_sparse = shared_vars["ham_sparse"]
    unit_g = shared_vars["unit_g"]
    cpd_g = shared_vars["cpd_g"]
    cell_g = shared_vars["cell_g"]
    unit_cell = shared_vars["unit_cell"]
    class_cell = shared_vars["class_cell"]
    cluster_u = shared_vars["cluster_u"]
    class_c = shared_vars["class_c"]
    with pm.Model(coords=coords) as model:
        z_alpha = pm.Normal("z_alpha", 0.0, 1.0)
        alpha0 = pm.Deterministic("alpha0", y_mean + sd_y * z_alpha)
        # intercept effects
        if d.has_parent:
            tau_cluster = pm.HalfNormal("tau_cluster", sd_y)
            z_cluster = pm.Normal("z_cluster", 0.0, 1.0, dims="cluster")
            cluster_eff = pm.Deterministic("cluster_effect", tau_cluster * z_cluster,
                                           dims="cluster")
            parent_int = cluster_eff[cluster_u]
        else:
            parent_int = pt.zeros(len(d.units))
        tau_species = pm.HalfNormal("tau_species", sd_y)
        z_species = pm.Normal("z_species", 0.0, 1.0, dims="species")
        species_eff = pm.Deterministic("species_effect", parent_int + tau_species * z_species,
                                       dims="species")
        tau_class = pm.HalfNormal("tau_class", sd_y)
        z_class = pm.Normal("z_class", 0.0, 1.0, dims="compound_class")
        class_eff = pm.Deterministic("class_effect", tau_class * z_class, dims="compound_class")
        cpd_prior = class_eff[class_c]
        if d.emb is not None:
            # the embedding regression shrinks as a whole (τ_gamma): with few compounds per
            # dimension an unshrunk 20-D regression overfits
            tau_gamma = pm.HalfNormal("tau_gamma", sd_y / float(np.sqrt(d.emb.shape[1])))
            z_gamma = pm.Normal("z_gamma", 0.0, 1.0, dims="embedding_dim")
            gamma = pm.Deterministic("gamma", tau_gamma * z_gamma, dims="embedding_dim")
            cpd_prior = cpd_prior + pt.dot(shared_vars["embedding"], gamma)
        tau_compound = pm.HalfNormal("tau_compound", sd_y)
        z_compound = pm.Normal("z_compound", 0.0, 1.0, dims="compound")
        compound_eff = pm.Deterministic("compound_effect", cpd_prior + tau_compound * z_compound,
                                        dims="compound")
        tau_group = pm.HalfNormal("tau_group", sd_w)
        # slopes
        z_slope = pm.Normal("z_slope", 0.0, 1.0, dims="covariate")
        slope_global = pm.Deterministic("slope_global", slope_scale * z_slope, dims="covariate")
        if d.has_parent:
            tau_sc = pm.HalfNormal("tau_slope_cluster", slope_scale, dims="covariate")
            z_sc = pm.Normal("z_slope_cluster", 0.0, 1.0, dims=("cluster", "covariate"))
            slope_cluster = pm.Deterministic("slope_cluster", slope_global + tau_sc * z_sc,
                                             dims=("cluster", "covariate"))
            parent_slope = slope_cluster[cluster_u]
        else:
            parent_slope = slope_global[None, :]
        tau_ss = pm.HalfNormal("tau_slope_species", slope_scale, dims="covariate")
        z_ss = pm.Normal("z_slope_species", 0.0, 1.0, dims=("species", "covariate"))
        slope_species = pm.Deterministic("slope_species", parent_slope + tau_ss * z_ss,
                                         dims=("species", "covariate"))
        # noise
        z_ls = pm.Normal("z_log_sigma", 0.0, 1.0)
        log_sigma0 = pm.Deterministic("log_sigma0", log_sigma_init + z_ls)
        tau_ns = pm.HalfNormal("tau_noise_species", 0.5)
        z_ns = pm.Normal("z_noise_species", 0.0, 1.0, dims="species")
        noise_species = pm.Deterministic("noise_species", tau_ns * z_ns, dims="species")
        tau_nk = pm.HalfNormal("tau_noise_class", 0.5)
        z_nk = pm.Normal("z_noise_class", 0.0, 1.0, dims="compound_class")
        noise_class = pm.Deterministic("noise_class", tau_nk * z_nk, dims="compound_class")
        # integrated likelihood of every group
        log_s_cell = log_sigma0 + noise_species[unit_cell] + noise_class[class_cell]
        s2_cell = pt.exp(2.0 * log_s_cell)
        s2 = s2_cell[cell_g]
        tau2 = tau_group**2
        mu = alpha0 + species_eff[unit_g] + compound_eff[cpd_g] - ybar
        # H_am,g · m_unit(g) for every group as one sparse (groups × units·p) product: its
        # gradient is a sparse transpose product, where a gather's is a slow scatter-add
        ham_m = ps.structured_dot(ham_sparse, pt.reshape(slope_species, (-1, 1)))[:, 0]
        q0 = c0 - 2.0 * mu * h_a + mu**2 * h_aa + 2.0 * mu * ham_m
        m_c = slope_species[unit_cell]
        q_cell = (-2.0 * pt.sum(m_c * hm_cell, axis=1)
                  + pt.sum(m_c * pt.batched_dot(hmm_cell, m_c), axis=1))
        q1 = h_a - mu * h_aa - ham_m
        ll = ll_const - 0.5 * (
            pt.sum(n_cell * 2.0 * log_s_cell) + pt.sum(q_cell / s2_cell)
            + pt.sum(pt.log1p(tau2 * h_aa / s2) + q0 / s2
                     - tau2 * q1**2 / (s2 * (s2 + tau2 * h_aa)))
        )
        pm.Potential("integrated_groups", ll)
    return model, shared_vars


_DRAW_VARS = ("alpha0", "species_effect", "class_effect", "compound_effect", "tau_group",
              "slope_global", "slope_species", "log_sigma0", "noise_species", "noise_class",
              "tau_species", "tau_class", "tau_compound", "tau_slope_species",
              "tau_noise_species", "tau_noise_class")


def _initial_point(alg: GroupAlgebra, d: PooledData) -> dict[str, Any]:
    """Start from moment estimates: compound and class effects from the group means."""
    n_c = len(d.compounds)
    w = np.bincount(d.cpd_g, weights=alg.n, minlength=n_c)
    v_hat = np.bincount(d.cpd_g, weights=alg.n * alg.ybar, minlength=n_c) / w - d.y_mean
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
        "tau_slope_species": np.full(len(d.hm_cell[0]), 0.1),
    }
    if d.has_parent:
        start["tau_slope_cluster"] = np.full(len(d.hm_cell[0]), 0.1)
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
    from pymc.blocking import DictToArrayBijection
    from pymc.initial_point import make_initial_point_fn

    t0 = time.perf_counter()
    value_vars = model.value_vars
    ip = make_initial_point_fn(model=model, overrides=start, jitter_rvs={},
                               return_transformed=True)(options.seed)
    raveled = DictToArrayBijection.map({v.name: ip[v.name] for v in value_vars})
    fn = _FN_CACHE.get(id(model))
    if fn is None:
        fn = model.logp_dlogp_function(grad_vars=value_vars, ravel_inputs=True)
        fn.set_extra_values({})
        _FN_CACHE[id(model)] = fn
    t_compile = time.perf_counter() - t0
    mu0 = np.asarray(raveled.data, dtype=np.float64).copy()
    q0 = advi.Gaussian(mu0, np.full_like(mu0, np.log(0.1)))
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
            "parameters": len(mu0)}
    return draws, info


def _deterministics(model: Any, points: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Values of the summarised variables at each point (dicts of transformed values)."""
    names = _present(model, _DRAW_VARS)
    fn = _FN_CACHE.get(-id(model))  # (the same cache: negative ids)
    if fn is None:
        outs = model.replace_rvs_by_values([model[n] for n in names])
        fn = _FN_CACHE[-id(model)] = model.compile_fn(outs, point_fn=True)
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
    return [n for n in (*names, "cluster_effect", "slope_cluster", "gamma", "tau_cluster",
                        "tau_slope_cluster") if n in have]


def _draws(idata: Any, model: Any) -> dict[str, np.ndarray]:
    post = idata.posterior
    out = {}
    for name in _present(model, _DRAW_VARS):
        v = post[name].values  # (chain, draw, ...)
        out[name] = v.reshape(-1, *v.shape[2:]).astype(np.float64)
    return out


@dataclass
class SlopeRt:
    """The fixed slope-along-the-gradient term: ``κ`` and each group's ``t_g``."""

    kappa: np.ndarray    # (p,)
    t_g: np.ndarray      # (G,) compound's training mean rt minus ``centre``
    centre: float
    beta_u: np.ndarray   # (units, p) least-squares species slopes beside κ


def slope_rt(alg: GroupAlgebra, d: PooledData, ridge: float = 1e-6) -> SlopeRt:
    """Estimate ``κ`` by least squares on the within-group sufficient statistics.

    Within group g (rows centred on the group means) ``yc ≈ Xw (β_u + t_g κ)`` with ``Xw`` the
    within-centred covariates: the normal equations need only ``W_g = XᵀX - s sᵀ/n`` and
    ``c_g = Xᵀyc``. The species slopes ``β_u`` are eliminated per species (Schur complement), so
    the cost is O(groups × p² + species × p³). ``ridge`` (relative to the mean diagonal of W)
    keeps species with too few rows solvable.
    """
    n_c = len(d.compounds)
    w_c = np.bincount(d.cpd_g, weights=alg.n, minlength=n_c)
    t_c = np.bincount(d.cpd_g, weights=alg.n * alg.ybar, minlength=n_c) / np.maximum(w_c, 1e-300)
    centre = float((alg.n * alg.ybar).sum() / alg.n.sum())
    t_g = t_c[d.cpd_g] - centre
    p = alg.p
    if p == 0:
        return SlopeRt(np.zeros(0), t_g, centre, np.zeros((len(d.units), 0)))
    import scipy.sparse as sp

    w = alg.within()
    n_u, g_n = len(d.units), len(t_g)
    w_flat = w.reshape(g_n, p * p)

    def per_unit(weights: np.ndarray, v: np.ndarray) -> np.ndarray:
        # Σ_g∈u weight_g v_g as a sparse (units × groups) product: no (G, p, p) temporaries
        u = sp.csr_matrix((weights, (d.unit_g, np.arange(g_n))), shape=(n_u, g_n))
        return np.asarray(u @ v)

    ones = np.ones(g_n)
    a_u = per_unit(ones, w_flat).reshape(n_u, p, p)
    b_u = per_unit(t_g, w_flat).reshape(n_u, p, p)
    c_u = per_unit(ones, alg.c)
    eps = ridge * max(float(np.trace(a_u.sum(axis=0)) / p), 1e-12)
    a_u = a_u + eps * np.eye(p)[None]
    ainv_b = np.linalg.solve(a_u, b_u)
    ainv_c = np.linalg.solve(a_u, c_u[:, :, None])[:, :, 0]
    lhs = (t_g**2 @ w_flat).reshape(p, p) - np.einsum("uji,ujk->ik", b_u, ainv_b)
    rhs = t_g @ alg.c - np.einsum("uji,uj->i", b_u, ainv_c)
    kappa = np.linalg.solve(lhs + eps * np.eye(p), rhs)
    beta_u = ainv_c - np.einsum("uij,j->ui", ainv_b, kappa)
    return SlopeRt(kappa, t_g, centre, beta_u)


#: Grid of slope precision ratios λ searched by :func:`choose_lambda` (log10).
LAMBDA_GRID = np.arange(-2.0, 5.01, 0.25)


def choose_lambda(alg: GroupAlgebra, d: PooledData, srt: SlopeRt | None) -> tuple[float,
                                                                                   dict[str, Any]]:
    """The slope precision ratio λ that maximises the within-group (restricted) likelihood.

    Within group g (rows centred on their mean; the intercept drops out), with the prior slope
    mean ``m_g`` (least-squares species slopes + ``t_g κ``): ``yc ~ N(Xw m_g, σ²(P + Xw Xwᵀ/λ))``.
    With ``W = V diag(e) Vᵀ`` (one batched eigendecomposition) and ``r = c - W m``:
    ``Q_g = ycᵀyc - 2m·c + mᵀWm - Σ_i (Vᵀr)_i² / (e_i + λ)``, ``logdet = Σ_i log(1 + e_i/λ)``;
    σ² is profiled out. The grid search costs O(groups × p × grid) after the O(groups × p³)
    decomposition.
    """
    p = alg.p
    w = alg.within()
    if srt is not None:
        m = srt.beta_u[d.unit_g] + srt.t_g[:, None] * srt.kappa[None, :]
    else:
        m = np.zeros((len(alg.n), p))
    e, v = alg.within_eigh(w)
    wm = np.einsum("gij,gj->gi", w, m)
    r = alg.c - wm
    q_base = alg.yty - 2.0 * np.einsum("gi,gi->g", m, alg.c) + np.einsum("gi,gi->g", m, wm)
    vr2 = np.einsum("gji,gj->gi", v, r) ** 2
    dof = float((alg.n - 1).sum())
    scores = []
    for lg in LAMBDA_GRID:  # a loop over ~30 grid values, each vectorised over groups
        lam = 10.0**lg
        q = q_base - (vr2 / (e + lam)).sum(axis=1)
        logdet = np.log1p(e / lam).sum()
        sigma2 = max(float(q.sum()) / max(dof, 1.0), 1e-300)
        scores.append(-0.5 * (dof * np.log(sigma2) + logdet + dof))
    best = int(np.argmax(scores))
    lam = float(10.0 ** LAMBDA_GRID[best])
    info = {"lambda": lam, "grid_log10": [float(LAMBDA_GRID[0]), float(LAMBDA_GRID[-1])],
            "at_grid_edge": best in (0, len(LAMBDA_GRID) - 1)}
    log.info("pooled: slope precision ratio λ = %.4g (restricted likelihood)", lam)
    return lam, info


def fit_pooled(stats: GroupStats, covs: Covariates, alg: GroupAlgebra, options: ModelOptions, *,
               sigma_init: float, embeddings: Embeddings | None = None,
               meta: dict[str, Any] | None = None,
               species_map: dict[str, str] | None = None) -> FittedModel:
    """Fit the pooled model and summarise it per group and per effect level."""
    d, alg, srt = prepare_fit(stats, alg, options, sigma_init, embeddings)
    model = build_model(alg, d, covs)
    start = _initial_point(alg, d)
    if options.method == "nuts":
        draws, info = _fit_nuts(model, options, start)
    else:
        draws, info = _fit_advi(model, options, start)
    mean, cov, noise_var = group_posteriors(alg, d, draws)
    effects, hyper = effect_tables(d, draws, embeddings, covs)
    if srt is not None:
        mean[:, 1:] += srt.t_g[:, None] * srt.kappa[None, :]
        # backoff slopes: slope mean + (predicted intercept - slope_rt_centre) · slope_rt
        hyper["slope_rt"] = srt.kappa.tolist()
        hyper["slope_rt_centre"] = srt.centre
    meta = dict(meta or {})
    meta["fit"] = info
    meta["hyper"] = hyper
    meta["pooled"] = {"n_species": len(d.units), "n_clusters": len(d.clusters),
                      "n_compounds": len(d.compounds), "n_classes": len(d.classes),
                      "slope_lambda": alg.lam,
                      "slope_rt": None if srt is None else srt.kappa.tolist(),
                      "n_noise_cells": len(d.n_cell), "embeddings": d.emb is not None,
                      "summary_draws": int(next(iter(draws.values())).shape[0])}
    return FittedModel(kind="pooled", group_by=options.group_by, covariates=covs,
                       ridge_lambda=alg.lam, groups=stats.groups, mean=mean, cov=cov,
                       noise_var=noise_var, noise_df=np.full(len(noise_var), np.inf),
                       meta=meta, effects=effects, species_map=dict(species_map or {}))


def prepare_fit(stats: GroupStats, alg: GroupAlgebra, options: ModelOptions, sigma_init: float,
                embeddings: Embeddings | None,
                ) -> tuple[PooledData, GroupAlgebra, SlopeRt | None]:
    """:func:`prepare`, with the slope-along-the-gradient term estimated and the statistics
    shifted by it when ``options.slope_by_rt`` (returns the algebra the fit runs on)."""
    d = prepare(stats, alg, options.group_by, sigma_init, embeddings)
    srt = slope_rt(alg, d) if options.slope_by_rt and alg.p else None
    if srt is not None:
        log.info("pooled: slope along the gradient Σ|κ| = %.4g per min",
                 float(np.abs(srt.kappa).sum()))
    lam = float(options.pooled_lambda)
    if lam <= 0 and alg.p:
        lam, _ = choose_lambda(alg, d, srt)
    if lam > 0 and lam != alg.lam:
        alg = GroupAlgebra.from_stats(stats, lam)
    if srt is None:
        return d, alg, None
    alg = alg.shifted(srt.t_g, srt.kappa)
    return prepare(stats, alg, options.group_by, sigma_init, embeddings), alg, srt


def _cell_sigma2(d: PooledData, draws: dict[str, np.ndarray], i: int) -> np.ndarray:
    log_s = (draws["log_sigma0"][i] + draws["noise_species"][i][d.unit_cell]
             + draws["noise_class"][i][d.class_cell])
    return np.exp(2.0 * log_s)


def group_posteriors(alg: GroupAlgebra, d: PooledData, draws: dict[str, np.ndarray],
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group posterior mean and covariance of (intercept, slopes) and noise variance.

    Exact given each draw of the hyperparameters; combined over draws by the law of total
    covariance: E[Cov | draw] + Cov[E | draw].
    """
    g, p = alg.ks.shape
    n_draws = draws["alpha0"].shape[0]
    s_theta = np.zeros((g, p + 1))
    s_outer = np.zeros((g, (p + 1) ** 2))
    s_w = np.zeros(g)
    s_ws = np.zeros(g)
    for i in range(n_draws):  # a loop over posterior draws (tens), each vectorised over groups
        s2 = _cell_sigma2(d, draws, i)[d.cell_g]
        rho = s2 / draws["tau_group"][i] ** 2
        mu = (draws["alpha0"][i] + draws["species_effect"][i][d.unit_g]
              + draws["compound_effect"][i][d.cpd_g] - alg.ybar)
        m = draws["slope_species"][i][d.unit_g]
        a, b, s_schur = alg.posterior(rho, mu, m)
        theta = np.concatenate([(alg.ybar + a)[:, None], b], axis=1)
        s_theta += theta
        s_outer += (theta[:, :, None] * theta[:, None, :]).reshape(g, -1)
        s_w += s2
        s_ws += s2 / s_schur
    mean = s_theta / n_draws
    between = s_outer / n_draws - (mean[:, :, None] * mean[:, None, :]).reshape(g, -1)
    cov = alg.covariance(s_w / n_draws, s_ws / n_draws) + between
    return mean, cov, s_w / n_draws


def effect_tables(d: PooledData, draws: dict[str, np.ndarray], embeddings: Embeddings | None,
                  covs: Covariates) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Effects per level for backoff, and the hyperparameters (E[τ²]) the backoff needs."""
    p = len(covs.names)

    def mv(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x.mean(axis=0), x.var(axis=0)

    def slope_cov(x: np.ndarray) -> np.ndarray:
        # x: (draws, levels, p) -> (levels, p*p)
        c = x - x.mean(axis=0)
        return np.einsum("dli,dlj->lij", c, c).reshape(x.shape[1], p * p) / x.shape[0]

    frames: list[pl.DataFrame] = []

    def add(level: str, keys: list[str], parent: list[str | None] | None,
            int_draws: np.ndarray, slopes: np.ndarray | None = None,
            noise: np.ndarray | None = None) -> None:
        m, v = mv(int_draws)
        n = len(keys)
        frame = pl.DataFrame({
            "level": [level] * n, "key": keys,
            "parent": parent if parent is not None else [None] * n,
            "intercept_mean": m, "intercept_var": v,
        }, schema_overrides={"parent": pl.String})
        if slopes is not None:
            frame = frame.with_columns(
                pl.Series("slope_mean", slopes.mean(axis=0), dtype=pl.Array(pl.Float64, p)),
                pl.Series("slope_cov", slope_cov(slopes), dtype=pl.Array(pl.Float64, p * p)))
        else:
            frame = frame.with_columns(
                pl.lit(None, dtype=pl.Array(pl.Float64, p)).alias("slope_mean"),
                pl.lit(None, dtype=pl.Array(pl.Float64, p * p)).alias("slope_cov"))
        frame = frame.with_columns(
            pl.Series("log_noise_sd", noise.mean(axis=0) if noise is not None
                      else np.full(n, np.nan), dtype=pl.Float64).fill_nan(None))
        frames.append(frame)

    add("global", ["global"], None, draws["alpha0"][:, None], draws["slope_global"][:, None, :],
        draws["log_sigma0"][:, None])
    unit_level = "species" if d.has_parent else "cluster"
    if d.has_parent:
        add("cluster", d.clusters, None, draws["cluster_effect"], draws["slope_cluster"])
    add(unit_level, d.units,
        [d.clusters[i] for i in d.cluster_u] if d.has_parent else None,
        draws["species_effect"], draws["slope_species"], draws["noise_species"])
    add("class", d.classes, None, draws["class_effect"], None, draws["noise_class"])
    add("compound", d.compounds, [d.classes[i] for i in d.class_c], draws["compound_effect"])
    if embeddings is not None and "gamma" in draws:
        add("embedding", embeddings.chem_ids, None, draws["gamma"] @ embeddings.values.T)
    effects = pl.concat(frames, how="vertical")

    def e2(name: str) -> Any:
        v = (draws[name] ** 2).mean(axis=0)
        return v.tolist() if np.ndim(v) else float(v)

    hyper = {
        "tau_group2": e2("tau_group"), "tau_species2": e2("tau_species"),
        "tau_cluster2": e2("tau_cluster") if d.has_parent else 0.0,
        "tau_class2": e2("tau_class"), "tau_compound2": e2("tau_compound"),
        "tau_noise_species2": e2("tau_noise_species"), "tau_noise_class2": e2("tau_noise_class"),
        "tau_slope_species2": e2("tau_slope_species"),
        "tau_slope_cluster2": e2("tau_slope_cluster") if d.has_parent else [0.0] * p,
        "log_sigma0": float(draws["log_sigma0"].mean()),
        "alpha0": float(draws["alpha0"].mean()),
    }
    if "gamma" in draws:
        hyper["gamma"] = draws["gamma"].mean(axis=0).tolist()
    return effects, hyper
