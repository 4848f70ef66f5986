"""The experiment schema: one YAML file describes data, model, training and evaluation, and a
``runtime:`` section says how to run it.

Every axis of variation is a registry entry written in one spec form, ``name`` or
``{name: {param: value}}`` (:mod:`richrep.config.spec`), and validated against its registry
(names, arguments, types), so a typo fails before any work starts with an error naming the
field, the value and the choices. ``runtime`` (:mod:`richrep.config.runtime`: device,
threads, engine, strategy, tracking) is not part of the run's identity:
:meth:`Experiment.identity` is the one place that says what is.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import pydantic
from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

from richrep.config.legacy import runtime_from_older_files
from richrep.config.runtime import RuntimeConfig
from richrep.config.spec import Spec, Strict, _jsonable
from richrep.errors import ConfigError
from richrep.plugins import (
    FLOORS,
    MEMBERS,
    OBJECTIVES,
    PROBES,
    PROTOCOLS,
    load_plugins,
)
from richrep.registry import Registry
from richrep.runtime.limits import check_subsets
from richrep.store.weightfiles import Checkpoints, Pretrained, identities, resolve_files

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]
# a field whose default is resolved too (its registry's defaults filled in, as a given value's)
Params = Annotated[dict[str, Any], Field(validate_default=True)]


def resolved_list(registry: Registry[Any], specs: list[Spec], where: str) -> list[Spec]:
    """Every spec of a list checked against ``registry``, its defaults filled in."""
    return [s.resolved(registry, f"{where}[{i}]") for i, s in enumerate(specs)]


class DataConfig(Strict):
    dataset: str
    params: Params = {}
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1
    max_train_per_class: Annotated[int, Field(ge=1)] | None = None
    source: list[Spec] = []

    @field_validator("params")
    @classmethod
    def _dataset_params(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        from richrep.data import DATASETS

        if "dataset" not in info.data:  # its own error is reported
            return v
        return _jsonable(DATASETS.validate(info.data["dataset"], v, where="data.dataset/params"))

    @field_validator("source")
    @classmethod
    def _shifts(cls, v: list[Spec]) -> list[Spec]:
        from richrep.data import SHIFTS

        return resolved_list(SHIFTS, v, "data.source")


class ModelConfig(Strict):
    encoder: str
    width: Annotated[float, Field(gt=0, le=64)] = 1.0
    params: Params = {}
    pretrained: Pretrained | None = None  # a local safetensors file the encoders start from

    @field_validator("params")
    @classmethod
    def _encoder_params(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        from richrep.models import ENCODERS

        if "width" in v:
            raise ConfigError(
                "model.params.width: set the width multiplier as model.width, not in params"
            )
        if "encoder" not in info.data:
            return v
        params = ENCODERS.validate(info.data["encoder"], v, where="model.encoder/params")
        params.pop("width", None)
        return _jsonable(params)

    @field_validator("pretrained")
    @classmethod
    def _weight_file(cls, v: Pretrained | None) -> Pretrained | None:
        return resolve_files(v)  # absolute path and sha256 recorded


class Baseline(Strict):
    """A member kind trained beside the seeds, standing for catK: ``{kind: wide, k: 5}``;
    arguments of the kind go beside (``{kind: distill, k: 5, temperature: 4}``) or under
    ``params``."""

    kind: str
    k: Annotated[int, Field(ge=1)]  # each kind's own range: registry meta ``k_range``
    seeds: Annotated[int, Field(ge=1)] = 1
    params: dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _gather(cls, v: Any) -> Any:
        """Arguments of the kind written beside ``kind`` and ``k`` go into ``params``."""
        if not isinstance(v, dict):
            return v
        own = {"kind", "k", "seeds", "params"}
        extra = {key: value for key, value in v.items() if key not in own}
        if not extra:
            return v
        params = v.get("params") or {}
        if not isinstance(params, dict):
            return v
        return {**{key: v[key] for key in own if key in v}, "params": {**params, **extra}}

    def resolved(self, where: str, seeds: int | None) -> Baseline:
        """This baseline with its kind's arguments checked and completed, and its ``k`` in the
        kind's range (and, for a kind standing for catK, at most the run's ``seeds``)."""
        params = MEMBERS.validate(self.kind, self.params, where=where)
        lo, hi = MEMBERS.meta(self.kind, "k_range", (2, None))
        at = where.replace("[", ".").rstrip("]") + ".k"
        if self.k < lo or (hi is not None and self.k > hi):
            need = f"{lo}" if lo == hi else f"at least {lo}" if hi is None else f"{lo} to {hi}"
            raise ConfigError(
                f"{at}: {self.kind} takes k = {need} (it stands for catK); got {self.k}"
            )
        if MEMBERS.meta(self.kind, "k_seeds", False) and seeds is not None and self.k > seeds:
            msg = f"{self.kind}{self.k} stands for cat{self.k}, but the run trains {seeds} seeds"
            raise ConfigError(f"{at}: {msg}; lower k or raise training.seeds")
        return self.model_copy(update={"params": _jsonable(params)})


def _seed_count(v: Any) -> Any:
    if isinstance(v, bool):
        raise ValueError(f"seeds must be a count or a list of seeds, not a boolean ({v})")
    if isinstance(v, list) and any(isinstance(s, bool) for s in v):
        raise ValueError(f"seeds must be integers, not booleans: {v}")
    return v


def seed_list_of(seeds: int | list[int] | Checkpoints) -> list[int]:
    """The seeds of ``training.seeds``: 0..n-1 for a count or for n checkpoints, else the list."""
    if isinstance(seeds, (int, Checkpoints)):
        return list(range(getattr(seeds, "count", seeds)))
    return list(seeds)


def objective_for_seeds(spec: Spec) -> Spec:
    """``training.objective`` checked and completed: one that trains the seeds, so neither a
    member kind's own head nor targets besides the labels."""
    objective = spec.resolved(OBJECTIVES, "training.objective")
    built = OBJECTIVES.build(objective.name, where="training.objective", **objective.params)
    head = built.reads_head_of()
    if head:
        raise ConfigError(
            f"training.objective: {objective.name!r} reads the head of {head!r} members; "
            f"add a {{kind: {head}}} baseline instead of training every seed with it"
        )
    needs = built.needs()
    if needs:
        raise ConfigError(
            f"training.objective: {objective.name!r} needs {list(needs)} besides the labels; "
            f"it trains member kinds that supply them (e.g. a distill baseline), not the seeds"
        )
    return objective


class TrainingConfig(Strict):
    # a count (0..n-1), an explicit list of distinct seeds, or {from_checkpoints: [files]}
    seeds: int | list[Seed] | Checkpoints = 5
    epochs: Annotated[int, Field(ge=1)] = 5
    batch_size: Annotated[int, Field(ge=1)] = 128
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: Annotated[float, Field(gt=0)] = 0.05
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    weight_decay: Annotated[float, Field(ge=0)] = 5e-4
    schedule: Literal["cosine", "constant"] = "cosine"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    objective: Annotated[Spec, Field(validate_default=True)] = Spec(name="cross_entropy")
    baselines: list[Baseline] = []
    augment: list[Spec] = []  # train-time augmentations (AUGMENTATIONS), never in evaluation

    @field_validator("seeds", mode="before")
    @classmethod
    def _no_bools(cls, v: Any) -> Any:
        return _seed_count(v)

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
        return resolve_files(v)  # checkpoints: absolute paths and sha256 recorded

    @field_validator("objective")
    @classmethod
    def _objective(cls, v: Spec) -> Spec:
        return objective_for_seeds(v)

    @field_validator("baselines")
    @classmethod
    def _baselines(cls, v: list[Baseline], info: ValidationInfo) -> list[Baseline]:
        seeds = info.data.get("seeds")
        n = None if seeds is None else len(seed_list_of(seeds))
        return [b.resolved(f"training.baselines[{i}]", n) for i, b in enumerate(v)]

    @field_validator("augment")
    @classmethod
    def _augment(cls, v: list[Spec]) -> list[Spec]:
        from richrep.data.augment import AUGMENTATIONS

        return resolved_list(AUGMENTATIONS, v, "training.augment")

    @property
    def seed_list(self) -> list[int]:
        return seed_list_of(self.seeds)


Size = Annotated[int, Field(ge=1)] | Literal["all"]


class SuiteEntry(Strict):
    """A target and the protocol that evaluates on it. The target is the run's dataset (or
    ``dataset`` with ``params``: any registered dataset, e.g. your own ``npz``) with
    ``shifts`` applied."""

    name: Name
    dataset: str | None = None
    params: dict[str, Any] = {}
    shifts: list[Spec] = []
    protocol: Spec = Spec(name="transfer")
    sizes: Annotated[list[Size], Field(min_length=1)] = ["all"]  # examples per class
    draws: Annotated[int, Field(ge=1)] = 3  # random draws of each size below "all"
    probe: Spec | None = None  # default: evaluation.probe

    @field_validator("probe", mode="before")
    @classmethod
    def _probe_form(cls, v: Any) -> Any:
        return _probe_short_form(v)

    def resolved(self, where: str) -> SuiteEntry:
        """This entry with its shifts, protocol, probe and dataset arguments checked against
        their registries and completed."""
        from richrep.data import DATASETS, SHIFTS

        update: dict[str, Any] = {
            "shifts": resolved_list(SHIFTS, self.shifts, f"{where}.shifts"),
            "protocol": self.protocol.resolved(PROTOCOLS, f"{where}.protocol"),
        }
        if self.probe is not None:
            update["probe"] = self.probe.resolved(PROBES, f"{where}.probe")
        if self.dataset is not None:
            params = DATASETS.validate(self.dataset, self.params, where=f"{where}.dataset/params")
            update["params"] = _jsonable(params)
        elif self.params:
            raise ConfigError(f"{where}.params: arguments given without a dataset")
        return self.model_copy(update=update)


def _probe_short_form(v: Any) -> Any:
    """``probe: {Cs: [...]}`` (arguments of the default linear probe) is read as
    ``{linear: {Cs: [...]}}``."""
    if (
        isinstance(v, dict)
        and v
        and "name" not in v
        and not (len(v) == 1 and next(iter(v)) in PROBES)
    ):
        return {"linear": v}
    return v


class EvaluationConfig(Strict):
    suite: list[SuiteEntry] = []
    probe: Annotated[Spec, Field(validate_default=True)] = Spec(name="linear")
    subsets: Annotated[int, Field(ge=1)] = 3  # seed subsets per K for catK
    floors: Annotated[list[Spec], Field(validate_default=True)] = [
        Spec(name="input"),
        Spec(name="random"),
    ]
    cache_features: bool = True  # keep extracted features in the run folder

    @field_validator("probe", mode="before")
    @classmethod
    def _probe_form(cls, v: Any) -> Any:
        return _probe_short_form(v)

    @field_validator("suite")
    @classmethod
    def _unique(cls, v: list[SuiteEntry]) -> list[SuiteEntry]:
        names = [e.name for e in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"suite entry names must be unique; repeated: {dup}")
        return [e.resolved(f"evaluation.suite[{i}]") for i, e in enumerate(v)]

    @field_validator("probe")
    @classmethod
    def _probe(cls, v: Spec) -> Spec:
        return v.resolved(PROBES, "evaluation.probe")

    @field_validator("floors")
    @classmethod
    def _floors(cls, v: list[Spec]) -> list[Spec]:
        return resolved_list(FLOORS, v, "evaluation.floors")


class Experiment(Strict):
    name: Name
    seed: Seed = 0  # data splits and subset draws
    data: DataConfig
    model: ModelConfig
    # built when read (not at import): their defaults are resolved against the registries
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @model_validator(mode="before")
    @classmethod
    def _migrate(cls, raw: Any) -> Any:
        return runtime_from_older_files(raw)

    @model_validator(mode="after")
    def _subsets(self) -> Experiment:
        check_subsets(self.evaluation.subsets, len(self.training.seed_list))
        return self

    def identity(self) -> dict[str, Any]:
        """What determines the trained models: the run folder's hash covers exactly this."""
        t = self.training.model_dump(mode="json")
        model = self.model.model_dump(mode="json")  # weight files stand for their sha256:
        t["seeds"] = identities(t["seeds"], model, self.training.seed_list)
        if not t["augment"]:  # runs without augmentation keep their hash
            del t["augment"]
        return {
            "seed": self.seed,
            "data": self.data.model_dump(mode="json"),
            "model": model,
            "training": t,
        }

    def results_identity(self) -> dict[str, Any]:
        """What determines the results: the identity and the evaluation (not the runtime)."""
        return {**self.identity(), "evaluation": self.evaluation.model_dump(mode="json")}

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
        raised = e.get("ctx", {}).get("error")
        if isinstance(raised, ConfigError):  # a validator's: its message names the field
            lines.append(f"  {raised}")
            continue
        loc = ".".join(
            str(p)
            for p in e["loc"]
            if not str(p).startswith(("function-after", "function-before", "constrained-"))
        )
        for noise in (".int", ".list[int]", ".list[constrained-int]", ".str", ".literal['all']"):
            loc = loc.replace(noise, "")
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            field = str(e["loc"][-1])
            hint = _field_hint(err, e["loc"])
            msg = f"unknown field {field!r} (check its spelling){hint}"
        got = e.get("input")
        shown = (
            ""
            if e["type"] in ("missing", "extra_forbidden") or isinstance(got, dict)
            else f" (got {got!r})"
        )
        lines.append(f"  {loc}: {msg}{shown}")
    head = f"invalid experiment{f' {source}' if source else ''}:"
    return "\n".join([head, *dict.fromkeys(lines)])


def _field_hint(err: pydantic.ValidationError, loc: tuple[Any, ...]) -> str:
    """A "did you mean" among the fields of the model ``loc`` ends in (a suite entry…)."""
    from richrep.registry import did_you_mean

    model: Any = Experiment
    for part in loc[:-1]:
        if not isinstance(part, int):
            field = getattr(model, "model_fields", {}).get(str(part))
            model = _model_in(field.annotation) if field is not None else None
    return did_you_mean(str(loc[-1]), list(getattr(model, "model_fields", {})))


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for a in get_args(annotation) if (m := _model_in(a))), None)


def parse_experiment(raw: Any, source: str = "") -> Experiment:
    """Validate a mapping (e.g. parsed YAML) into an :class:`Experiment`. Each section checks
    its registry specs (names, arguments, types, values) in its own validators and fills their
    defaults in, so the stored config is complete (all but those the run fills where a spec
    leaves them unset, :attr:`Registry.filled`: a probe's seed and device); weight files get
    their absolute paths and sha256."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"experiment{f' {source}' if source else ''} must be a mapping at the top level, "
            f"got {type(raw).__name__}"
        )
    load_plugins()
    try:
        return Experiment.model_validate(raw)
    except pydantic.ValidationError as e:
        raise ConfigError(format_errors(e, source)) from None


def load_experiment(path: str | Path) -> Experiment:
    from richrep.config.yamlio import load_yaml

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"experiment file {p} does not exist")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read experiment file {p}: {e}") from None
    return parse_experiment(load_yaml(text, str(p)), str(p))


def dump_experiment(exp: Experiment) -> str:
    import yaml

    return yaml.safe_dump(exp.model_dump(mode="json"), sort_keys=False)
