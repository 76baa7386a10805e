"""Options of the stage-8 RT models, read from the workflow config's ``model`` block."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from rtprep.core import settings
from rtprep.core.errors import RtprepError
from rtprep.core.frames import DEFAULT_COVARIATE_FAMILIES


def _model(*key: str) -> Any:
    """A default of the config's ``model`` block, from the schema (the one place for them)."""
    return settings.default("model", *key)


def _choices(key: str) -> tuple[str, ...]:
    return tuple(settings.schema()["properties"]["model"]["properties"][key]["enum"])


GROUP_BY_CHOICES = _choices("group_by")
METHOD_CHOICES = _choices("method")
FILL_CHOICES = _choices("fill")


@dataclass(frozen=True)
class ModelOptions:
    """How the ridge and partial-pooling RT models are fitted.

    - ``group_by``: a group is (``species``, compound) or (``species_cluster``, compound).
    - ``ridge_lambda``: ridge penalty on the centred covariates' slopes (the intercept is not
      penalised); None: chosen on the training rows by generalised cross-validation
      (:func:`rtprep.models.ridge.choose_ridge_lambda`).
    - ``families``: covariate column prefixes, in RT CSV order.
    - ``fill``: how a null covariate is filled: ``impute`` (default: its expected value given
      the row's other covariates, :class:`rtprep.models.data.Covariates`), the training
      ``mean``, ``median`` or ``zero`` (before centring).
    - ``method``: ``advi`` (mean-field ADVI; ``advi_steps``, or ``quick_steps`` when quick) or
      ``nuts`` (``nuts_draws``, ``nuts_tune``, ``nuts_chains``).
    - ``pooled_lambda``: the pooled model's slope precision ratio ``λ`` (slopes ~
      N(species mean, noise_var / λ)); 0 (default): chosen by the within-group restricted
      likelihood on a grid (covariates in any unit); ``ridge_lambda`` stays the ridge penalty.
    - ``slope_by_rt``: the pooled model's slope prior mean is a smooth function of the
      compound's mean rt (:mod:`rtprep.models.slopes`): a cubic spline with ``slope_knots``
      interior knots (0: linear in rt).
    - ``robust``: each training row's probability of being mis-assigned from a mixture of the
      model's Gaussian and a broad outlier component, by EM (:mod:`rtprep.models.robust`):
      rows more likely mis-assigned than not are left out of both models (counted as
      ``rt_outlier``), the others weighted by their probability of being right; false: every
      row counts fully.
    - ``robust_rounds``: at most this many EM rounds (each a pooled fit).
    - ``screen_steps``: ADVI steps of each ADVI round of an EM round's fit; ADVI rounds repeat
      until another no longer improves it (:mod:`rtprep.models.advi`).
    - ``allow_unconverged``: a fit whose ADVI verdict is ``not converged`` after recovery is
      written (and marked so) instead of failing the run.
    - ``summary_draws``: posterior draws used to summarise the pooled fit per group.
    - ``seed``: every random choice of the fit (ADVI, NUTS, draws).
    """

    group_by: str = _model("group_by")
    ridge_lambda: float | None = _model("ridge_lambda")
    families: tuple[str, ...] = DEFAULT_COVARIATE_FAMILIES
    fill: str = _model("fill")
    method: str = _model("method")
    advi_steps: int = _model("advi_steps")
    quick_steps: int = _model("quick_steps")
    learning_rate: float = _model("learning_rate")
    nuts_draws: int = _model("nuts", "draws")
    nuts_tune: int = _model("nuts", "tune")
    nuts_chains: int = _model("nuts", "chains")
    summary_draws: int = _model("summary_draws")
    pooled_lambda: float = _model("pooled_lambda")
    slope_by_rt: bool = _model("slope_by_rt")
    slope_knots: int = _model("slope_knots")
    robust: bool = _model("robust")
    robust_rounds: int = _model("robust_rounds")
    screen_steps: int = _model("screen_steps")
    allow_unconverged: bool = _model("allow_unconverged")
    seed: int = _model("seed")
    quick: bool = _model("quick")
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.group_by not in GROUP_BY_CHOICES:
            raise RtprepError(
                f"model option group_by={self.group_by!r}: use one of {', '.join(GROUP_BY_CHOICES)}"
            )
        if self.method not in METHOD_CHOICES:
            raise RtprepError(
                f"model option method={self.method!r}: use one of {', '.join(METHOD_CHOICES)}"
            )
        if self.fill not in FILL_CHOICES:
            raise RtprepError(
                f"model option fill={self.fill!r}: use one of {', '.join(FILL_CHOICES)}"
            )
        if not self.pooled_lambda >= 0:
            raise RtprepError(f"model option pooled_lambda={self.pooled_lambda!r}: must be >= 0 "
                              "(0: chosen from the data)")
        if self.ridge_lambda is not None and not self.ridge_lambda > 0:
            raise RtprepError(f"model option ridge_lambda={self.ridge_lambda!r}: must be > 0 "
                              "(or null: chosen from the data)")
        for name in ("advi_steps", "quick_steps", "nuts_draws", "nuts_tune", "nuts_chains",
                     "summary_draws", "screen_steps", "robust_rounds"):
            if int(getattr(self, name)) < 1:
                raise RtprepError(f"model option {name}={getattr(self, name)!r}: must be >= 1")
        if not self.families:
            raise RtprepError("model option families: give at least one covariate family")

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None,
                    families: Sequence[str] | None = None) -> ModelOptions:
        """Build options from the config's ``model`` block (or the whole config, which has one).

        Accepts ``nuts: {draws, tune, chains}`` as in ``config/schema.yaml`` or flat ``nuts_*``
        keys; values given as strings (``--config`` on the Snakemake command line) are coerced.
        ``families`` (the config's ``covariates.families``) overrides a ``families`` key.
        """
        cfg: dict[str, Any] = dict(config or {})
        if "model" in cfg and isinstance(cfg["model"], Mapping):
            covs = cfg.get("covariates")
            if families is None and isinstance(covs, Mapping) and covs.get("families"):
                families = list(covs["families"])
            cfg = dict(cfg["model"])
        nuts = cfg.pop("nuts", None) or {}
        for key in ("draws", "tune", "chains"):
            if key in nuts:
                cfg[f"nuts_{key}"] = nuts[key]
        if families is not None:
            cfg["families"] = families
        known = {f.name: f for f in fields(cls) if f.name != "extra"}
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in cfg.items():
            if key not in known:
                extra[key] = value  # workflow switches such as train/evaluate
                continue
            kwargs[key] = _coerce(key, value, known[key].type)
        return cls(**kwargs, extra=extra)

    def steps(self) -> int:
        """ADVI steps for this run (``quick_steps`` when quick)."""
        return int(self.quick_steps if self.quick else self.advi_steps)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (the values used, for metadata)."""
        d = asdict(self)
        d.pop("extra", None)
        d["families"] = list(self.families)
        return d


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Coerce a config value (possibly a string from ``--config``) to the option's type (its
    annotation: ``bool``, ``int``, ``float``, ``tuple[...]``, ``str``, ``... | None``)."""
    text = str(annotation)
    nullable = "None" in text
    if value is None or (nullable and isinstance(value, str)
                         and value.strip().lower() in ("", "null", "none")):
        if nullable:
            return None
        raise RtprepError(f"model option {key}: a value is required")
    kind = next((k for k in ("bool", "int", "float", "tuple") if text.startswith(k)), "str")
    try:
        if kind == "bool":
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("true", "1", "yes", "on"):
                    return True
                if low in ("false", "0", "no", "off", ""):
                    return False
                raise ValueError(value)
            return bool(value)
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "tuple":
            if isinstance(value, str):
                return tuple(v.strip() for v in value.strip("[]").split(",") if v.strip())
            return tuple(str(v) for v in value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise RtprepError(f"model option {key}={value!r}: expected {kind}") from exc
