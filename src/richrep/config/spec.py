"""The one spec form: a registry entry written in YAML as ``name`` or ``{name: {arg: value}}``."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from richrep.registry import Registry


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Spec(Strict):
    """A registry entry with arguments: written in YAML as ``name`` or ``{name: {arg: value}}``."""

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
                    f"arguments of {k!r} must be a mapping like {{arg: value}}, got {p!r}"
                )
            return {"name": k, "params": p}
        return v

    def as_tuple(self) -> tuple[str, dict[str, Any]]:
        return self.name, dict(self.params)

    def label(self) -> str:
        if not self.params:
            return self.name
        return self.name + "(" + ",".join(f"{k}={_short(v)}" for k, v in self.params.items()) + ")"

    def resolved(self, registry: Registry[Any], where: str) -> Spec:
        """This spec with its arguments checked against ``registry`` and defaults filled in (but
        for those the run fills, ``registry.filled``: a probe's seed and device)."""
        params = registry.validate(self.name, self.params, where=where)
        return Spec(name=self.name, params=_jsonable(params))


def _short(v: Any) -> str:
    if (
        isinstance(v, list)
        and len(v) > 2
        and all(isinstance(i, int) for i in v)
        and v == list(range(v[0], v[-1] + 1))
    ):
        return f"{v[0]}-{v[-1]}"
    return str(v).replace(" ", "")


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))
