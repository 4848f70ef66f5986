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
from pydantic import BaseModel, Field, field_validator, model_validator

from richrep.config.legacy import runtime_from_older_files
from richrep.config.runtime import RuntimeConfig, resolve_runtime
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
from richrep.runtime.limits import check_subsets
from richrep.store.weightfiles import Checkpoints, Pretrained, identities, resolve_files

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]


class DataConfig(Strict):
    dataset: str
    params: dict[str, Any] = {}
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1
    max_train_per_class: Annotated[int, Field(ge=1)] | None = None
    source: list[Spec] = []


class ModelConfig(Strict):
    encoder: str
    width: Annotated[float, Field(gt=0, le=64)] = 1.0
    params: dict[str, Any] = {}
    pretrained: Pretrained | None = None  # a local safetensors file the encoders start from


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


def _seed_count(v: Any) -> Any:
    if isinstance(v, bool):
        raise ValueError(f"seeds must be a count or a list of seeds, not a boolean ({v})")
    if isinstance(v, list) and any(isinstance(s, bool) for s in v):
        raise ValueError(f"seeds must be integers, not booleans: {v}")
    return v


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
    objective: Spec = Spec(name="cross_entropy")
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
        return v

    @property
    def seed_list(self) -> list[int]:
        if isinstance(self.seeds, (int, Checkpoints)):
            return list(range(getattr(self.seeds, "count", self.seeds)))
        return list(self.seeds)


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
    probe: Spec = Spec(name="linear")
    subsets: Annotated[int, Field(ge=1)] = 3  # seed subsets per K for catK
    floors: list[Spec] = [Spec(name="input"), Spec(name="random")]
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
        return v


class Experiment(Strict):
    name: Name
    seed: Seed = 0  # data splits and subset draws
    data: DataConfig
    model: ModelConfig
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @model_validator(mode="before")
    @classmethod
    def _migrate(cls, raw: Any) -> Any:
        return runtime_from_older_files(raw)

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
    """Validate a mapping (e.g. parsed YAML) into an :class:`Experiment`, registries included."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"experiment{f' {source}' if source else ''} must be a mapping at the top level, "
            f"got {type(raw).__name__}"
        )
    load_plugins()
    try:
        exp = Experiment.model_validate(raw)
    except pydantic.ValidationError as e:
        raise ConfigError(format_errors(e, source)) from None
    return resolve(exp)


def resolve(exp: Experiment) -> Experiment:
    """Check every registry name and argument; fill registry defaults so the stored config
    is complete (all but those the run fills where a spec leaves them unset,
    :attr:`Registry.filled`: a probe's seed and device)."""
    load_plugins()
    check_subsets(exp.evaluation.subsets, len(exp.training.seed_list))
    from richrep.data import DATASETS, SHIFTS
    from richrep.data.augment import AUGMENTATIONS
    from richrep.models import ENCODERS

    data_params = DATASETS.validate(exp.data.dataset, exp.data.params, where="data.dataset/params")
    source = [s.resolved(SHIFTS, f"data.source[{i}]") for i, s in enumerate(exp.data.source)]
    if "width" in exp.model.params:
        raise ConfigError(
            "model.params.width: set the width multiplier as model.width, not in params"
        )
    enc_params = ENCODERS.validate(
        exp.model.encoder, exp.model.params, where="model.encoder/params"
    )
    enc_params.pop("width", None)
    pre = exp.model.pretrained
    baselines = []
    for i, b in enumerate(exp.training.baselines):
        params = MEMBERS.validate(b.kind, b.params, where=f"training.baselines[{i}]")
        lo, hi = MEMBERS.meta(b.kind, "k_range", (2, None))
        if b.k < lo or (hi is not None and b.k > hi):
            need = f"{lo}" if lo == hi else f"at least {lo}" if hi is None else f"{lo} to {hi}"
            raise ConfigError(
                f"training.baselines.{i}.k: {b.kind} takes k = {need} (it stands for catK); "
                f"got {b.k}"
            )
        if MEMBERS.meta(b.kind, "k_seeds", False) and b.k > (n := len(exp.training.seed_list)):
            msg = f"{b.kind}{b.k} stands for cat{b.k}, but the run trains {n} seeds"
            raise ConfigError(f"training.baselines.{i}.k: {msg}; lower k or raise training.seeds")
        baselines.append(Baseline(kind=b.kind, k=b.k, seeds=b.seeds, params=_jsonable(params)))
    objective = exp.training.objective.resolved(OBJECTIVES, "training.objective")
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
    training = exp.training.model_copy(
        update={
            "objective": objective,
            "baselines": baselines,
            "seeds": resolve_files(exp.training.seeds),
            "augment": [
                s.resolved(AUGMENTATIONS, f"training.augment[{i}]")
                for i, s in enumerate(exp.training.augment)
            ],
        }
    )
    suite = []
    for i, entry in enumerate(exp.evaluation.suite):
        where = f"evaluation.suite[{i}]"
        update: dict[str, Any] = {
            "shifts": [
                s.resolved(SHIFTS, f"{where}.shifts[{j}]") for j, s in enumerate(entry.shifts)
            ],
            "protocol": entry.protocol.resolved(PROTOCOLS, f"{where}.protocol"),
        }
        if entry.probe is not None:
            update["probe"] = entry.probe.resolved(PROBES, f"{where}.probe")
        if entry.dataset is not None:
            update["params"] = _jsonable(
                DATASETS.validate(entry.dataset, entry.params, where=f"{where}.dataset/params")
            )
        elif entry.params:
            raise ConfigError(f"{where}.params: arguments given without a dataset")
        suite.append(entry.model_copy(update=update))
    evaluation = exp.evaluation.model_copy(
        update={
            "suite": suite,
            "probe": exp.evaluation.probe.resolved(PROBES, "evaluation.probe"),
            "floors": [
                f.resolved(FLOORS, f"evaluation.floors[{i}]")
                for i, f in enumerate(exp.evaluation.floors)
            ],
        }
    )
    runtime = resolve_runtime(exp.runtime)
    return exp.model_copy(
        update={
            "data": exp.data.model_copy(
                update={"params": _jsonable(data_params), "source": source}
            ),
            "model": exp.model.model_copy(
                update={"params": _jsonable(enc_params), "pretrained": resolve_files(pre)}
            ),
            "training": training,
            "evaluation": evaluation,
            "runtime": runtime,
        }
    )


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
