"""The experiment schema: one YAML file describes data, model, training and evaluation.

Every error names the field, the value and what is allowed. Registry names (datasets, shifts,
encoders) and their arguments are checked against the registries, so a typo fails before any
work starts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from richrep.errors import ConfigError

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ShiftSpec(Strict):
    """One shift: written in YAML as ``name`` or ``{name: {arg: value}}``."""

    name: str
    params: dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, v: Any) -> Any:
        if isinstance(v, str):
            return {"name": v}
        if isinstance(v, dict) and len(v) == 1 and "name" not in v:
            ((k, p),) = v.items()
            if p is None:
                p = {}
            if not isinstance(p, dict):
                raise ValueError(
                    f"arguments of shift {k!r} must be a mapping like {{severity: 3}}, got {p!r}"
                )
            return {"name": k, "params": p}
        return v

    def as_tuple(self) -> tuple[str, dict[str, Any]]:
        return self.name, dict(self.params)

    def label(self) -> str:
        if not self.params:
            return self.name
        return self.name + "(" + ",".join(f"{k}={_short(v)}" for k, v in self.params.items()) + ")"


def _short(v: Any) -> str:
    if (
        isinstance(v, list)
        and len(v) > 2
        and all(isinstance(i, int) for i in v)
        and v == list(range(v[0], v[-1] + 1))
    ):
        return f"{v[0]}-{v[-1]}"
    return str(v).replace(" ", "")


class DataConfig(Strict):
    dataset: str
    params: dict[str, Any] = {}
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1
    max_train_per_class: Annotated[int, Field(ge=1)] | None = None
    source: list[ShiftSpec] = []


class ModelConfig(Strict):
    encoder: str
    width: Annotated[float, Field(gt=0, le=64)] = 1.0
    params: dict[str, Any] = {}


class Baseline(Strict):
    """A baseline trained beside the seeds: ``wide`` (parameters equal to catK), ``wide_dim``
    (feature dimension equal to catK) or ``joint`` (K towers trained jointly, one head)."""

    kind: Literal["wide", "wide_dim", "joint"]
    k: Annotated[int, Field(ge=2)]
    seeds: Annotated[int, Field(ge=1)] = 1


class TrainingConfig(Strict):
    seeds: int | list[int] = 5  # a count (0..n-1) or an explicit list of distinct seeds
    epochs: Annotated[int, Field(ge=1)] = 5
    batch_size: Annotated[int, Field(ge=1)] = 128
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: Annotated[float, Field(gt=0)] = 0.05
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    weight_decay: Annotated[float, Field(ge=0)] = 5e-4
    schedule: Literal["cosine", "constant"] = "cosine"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    baselines: list[Baseline] = []
    # How to run (not part of the run's identity): where and on what.
    device: str = "auto"
    threads: Annotated[int, Field(ge=0)] = 0  # 0: all available cores
    engine: Literal["local", "ray"] = "local"
    strategy: Literal["auto", "sequential", "threads", "processes", "fused", "fused-threads"] = (
        "auto"
    )
    ray: dict[str, Any] = {}

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, v: int | list[int]) -> int | list[int]:
        if isinstance(v, int) and not 1 <= v <= 10_000:
            raise ValueError(
                f"seeds must be a count between 1 and 10000 or a list of seeds, got {v}"
            )
        if isinstance(v, list) and not v:
            raise ValueError("seeds must not be an empty list")
        if isinstance(v, list) and len(set(v)) != len(v):
            raise ValueError(f"seeds {v} repeat a value: every seed must differ")
        return v

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)


class ProbeConfig(Strict):
    Cs: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=1)] = [
        1e-3,
        3e-3,
        1e-2,
        3e-2,
        1e-1,
        3e-1,
        1.0,
        3.0,
    ]
    max_iter: Annotated[int, Field(ge=1)] = 100


Size = Annotated[int, Field(ge=1)] | Literal["all"]


class SuiteEntry(Strict):
    """A target: shifts applied to the dataset, and the protocol that evaluates on it."""

    name: Name
    shifts: list[ShiftSpec] = []
    protocol: Literal["transfer", "robustness"] = "transfer"
    sizes: Annotated[list[Size], Field(min_length=1)] = ["all"]  # examples per class (transfer)
    draws: Annotated[int, Field(ge=1)] = 3  # random draws of each size below "all"
    probe: Literal["linear", "nearest_mean"] = "linear"


class EvaluationConfig(Strict):
    suite: list[SuiteEntry] = []
    probe: ProbeConfig = ProbeConfig()
    subsets: Annotated[int, Field(ge=1)] = 3  # seed subsets per K for catK
    floors: list[Literal["input", "random"]] = ["input", "random"]
    device: str = "auto"

    @field_validator("suite")
    @classmethod
    def _unique(cls, v: list[SuiteEntry]) -> list[SuiteEntry]:
        names = [e.name for e in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"suite entry names must be unique; repeated: {dup}")
        return v


class Experiment(Strict):
    name: Name
    seed: int = 0  # data splits and subset draws
    data: DataConfig
    model: ModelConfig
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()

    def identity(self) -> dict[str, Any]:
        """What determines the trained models: the run folder's hash covers exactly this."""
        t = self.training.model_dump(
            mode="json", exclude={"device", "threads", "engine", "strategy", "ray"}
        )
        t["seeds"] = self.training.seed_list
        return {
            "seed": self.seed,
            "data": self.data.model_dump(mode="json"),
            "model": self.model.model_dump(mode="json"),
            "training": t,
        }

    def run_hash(self) -> str:
        return stable_hash(self.identity())

    def run_id(self) -> str:
        return f"{self.name}-{self.run_hash()}"


def stable_hash(obj: Any, n: int = 10) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def format_errors(err: pydantic.ValidationError, source: str = "") -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-after"))
        loc = loc.replace(".int", "").replace(".list[int]", "").replace(".constrained-int", "")
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check its spelling)"
        got = e.get("input")
        shown = (
            ""
            if e["type"] in ("missing",)
            else f" (got {got!r})"
            if not isinstance(got, dict)
            else ""
        )
        lines.append(f"  {loc}: {msg}{shown}")
    head = f"invalid experiment{f' {source}' if source else ''}:"
    return "\n".join([head, *dict.fromkeys(lines)])


def parse_experiment(raw: Any, source: str = "") -> Experiment:
    """Validate a mapping (e.g. parsed YAML) into an :class:`Experiment`, registries included."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"experiment{f' {source}' if source else ''} must be a mapping at the top level, got {type(raw).__name__}"
        )
    try:
        exp = Experiment.model_validate(raw)
    except pydantic.ValidationError as e:
        raise ConfigError(format_errors(e, source)) from None
    return resolve(exp)


def resolve(exp: Experiment) -> Experiment:
    """Check registry names and arguments; fill registry defaults so the stored config is complete."""
    from richrep.data import DATASETS, SHIFTS
    from richrep.models import ENCODERS

    data_params = DATASETS.validate(exp.data.dataset, exp.data.params, where="data.dataset/params")
    source = [
        ShiftSpec(name=s.name, params=SHIFTS.validate(s.name, s.params, where=f"data.source[{i}]"))
        for i, s in enumerate(exp.data.source)
    ]
    if "width" in exp.model.params:
        raise ConfigError(
            "model.params.width: set the width multiplier as model.width, not in params"
        )
    enc_params = ENCODERS.validate(
        exp.model.encoder, exp.model.params, where="model.encoder/params"
    )
    enc_params.pop("width", None)
    suite = []
    for i, entry in enumerate(exp.evaluation.suite):
        shifts = [
            ShiftSpec(
                name=s.name,
                params=SHIFTS.validate(
                    s.name, s.params, where=f"evaluation.suite[{i}].shifts[{j}]"
                ),
            )
            for j, s in enumerate(entry.shifts)
        ]
        suite.append(entry.model_copy(update={"shifts": shifts}))
    return exp.model_copy(
        update={
            "data": exp.data.model_copy(
                update={"params": _jsonable(data_params), "source": source}
            ),
            "model": exp.model.model_copy(update={"params": _jsonable(enc_params)}),
            "evaluation": exp.evaluation.model_copy(update={"suite": suite}),
        }
    )


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))


def load_experiment(path: str | Path) -> Experiment:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"experiment file {p} does not exist")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read experiment file {p}: {e}") from None
    return parse_experiment(raw, str(p))


def dump_experiment(exp: Experiment) -> str:
    return yaml.safe_dump(exp.model_dump(mode="json"), sort_keys=False)
