"""Weight files an experiment names, only local ones (never a hub): ``model.pretrained`` (one
safetensors file every seed starts from) and ``training.seeds: {from_checkpoints: [...]}`` (K
checkpoints that become the run's seeds, untrained here). Each file's sha256 is recorded when
the experiment is resolved and stands for the file in the run's identity (a moved file keeps
the run; a changed one is refused)."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from richrep.errors import ConfigError
from richrep.store import sha256_file

Sha256 = Annotated[str, Field(pattern=r"^([0-9a-f]{64})?$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Pretrained(_Strict):
    """``model.pretrained: path.safetensors`` (or ``{path: …, sha256: …}``): the encoder's
    initial weights, loaded key for key (a bare encoder state_dict, torchvision's layout
    without ``fc.*``, or a richrep checkpoint)."""

    path: Annotated[str, Field(min_length=1)]
    sha256: Sha256 = ""

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, v: Any) -> Any:
        return {"path": v} if isinstance(v, (str, Path)) else v


class Checkpoints(_Strict):
    """``training.seeds: {from_checkpoints: [a.safetensors, …]}``: K encoder checkpoints of the
    ``model:`` architecture become seeds 0..K-1, evaluated without training. A path may be a
    glob pattern (expanded, sorted)."""

    from_checkpoints: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    sha256: list[Sha256] = []

    @property
    def count(self) -> int:
        return len(self.from_checkpoints)


def _expand(paths: list[str], where: str) -> list[str]:
    out: list[str] = []
    for p in paths:
        if any(c in p for c in "*?["):
            hits = sorted(glob.glob(p))
            if not hits:
                raise ConfigError(f"{where}: no file matches {p!r}")
            out += hits
        else:
            out.append(p)
    return out


def file_sha256(path: str, recorded: str, where: str) -> tuple[str, str]:
    """The file's absolute path and sha256. A file that is gone keeps its recorded sha256 (an
    old run folder still opens; loading it fails then); one whose content changed is refused."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise ConfigError(
            f"{where}: {path} is a directory; name one .safetensors file in it (only local "
            f"files are read)"
        )
    if not p.is_file():
        if recorded:
            return str(p), recorded
        raise ConfigError(f"{where}: weight file {path} does not exist (only local files are read)")
    if p.suffix != ".safetensors":
        raise ConfigError(
            f"{where}: {path} is not a .safetensors file (pickled weights are never read)"
        )
    digest = sha256_file(p)
    if recorded and digest != recorded:
        raise ConfigError(
            f"{where}: {path} has sha256 {digest[:12]}… but the experiment recorded "
            f"{recorded[:12]}…: the file changed since; start a new run for the new weights"
        )
    return str(p.resolve()), digest


def resolve_pretrained(pre: Pretrained | None) -> Pretrained | None:
    if pre is None:
        return None
    path, digest = file_sha256(pre.path, pre.sha256, "model.pretrained")
    return Pretrained(path=path, sha256=digest)


def resolve_checkpoints(ck: Checkpoints) -> Checkpoints:
    where = "training.seeds.from_checkpoints"
    paths = _expand(ck.from_checkpoints, where)
    recorded = list(ck.sha256) if len(ck.sha256) == len(paths) else [""] * len(paths)
    pairs = [
        file_sha256(p, r, f"{where}[{i}]")
        for i, (p, r) in enumerate(zip(paths, recorded, strict=True))
    ]
    dup = sorted({d for _, d in pairs if [e for _, e in pairs].count(d) > 1})
    if dup:
        raise ConfigError(f"{where}: the same checkpoint is listed twice (sha256 {dup[0][:12]}…)")
    return Checkpoints(from_checkpoints=[p for p, _ in pairs], sha256=[d for _, d in pairs])


def resolve_files(spec: Any) -> Any:
    """``spec`` with its weight files' paths made absolute and their sha256 recorded (a
    :class:`Pretrained` or :class:`Checkpoints`; anything else, e.g. a seed count, as is)."""
    if isinstance(spec, Pretrained):
        return resolve_pretrained(spec)
    if isinstance(spec, Checkpoints):
        return resolve_checkpoints(spec)
    return spec


def identities(seeds: Any, model: dict[str, Any], seed_list: list[int]) -> Any:
    """The run identity's seeds (``seed_list``, or the checkpoints' sha256 for dumped
    ``seeds: {from_checkpoints: …}``); ``model`` (dumped) edited in place so that pretrained
    weights stand for their sha256 only and a run without them keeps its hash."""
    if model.get("pretrained") is None:
        model.pop("pretrained", None)
    else:
        model["pretrained"] = {"sha256": model["pretrained"]["sha256"]}
    if isinstance(seeds, dict) and "from_checkpoints" in seeds:
        return {"from_checkpoints": list(seeds.get("sha256", []))}
    return seed_list
