"""The ``runtime:`` section: how to run an experiment (device, threads, engine, strategy,
experiment tracking), never part of its identity."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from richrep.config.spec import Spec, Strict
from richrep.plugins import ENGINES, TRACKERS


class RuntimeConfig(Strict):
    """How to run: never part of a run's identity (the same models result on any of these)."""

    device: str = "auto"
    eval_device: str | None = None  # default: device
    threads: Annotated[int, Field(ge=0)] = 0  # 0: all cores; at most the cores (a warning)
    # suite entries evaluated at once, in threads sharing the feature cache, each with its own
    # share of `threads` (0: one per core on a CPU, 1 on an accelerator; 1: one at a time)
    eval_workers: Annotated[int, Field(ge=0)] = 0
    # memory a probe may hold (bytes, "8GB", "50%"; default half the machine's): above it, the
    # features are streamed from disk in chunks (runtime/memory.py)
    memory: int | str | None = None
    engine: Annotated[Spec, Field(validate_default=True)] = Spec(name="local")
    track: Spec | None = None  # experiment tracking (TRACKERS): null, mlflow, {mlflow: {...}}
    strategy: Literal["auto", "sequential", "threads", "processes", "fused", "fused-threads"] = (
        "auto"
    )

    @field_validator("device", "eval_device")
    @classmethod
    def _device(cls, v: str | None) -> str | None:
        if v is None or v == "auto":
            return v
        from richrep.runtime.device import check_device

        check_device(v, available=False)  # availability is checked where it is used
        return v

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, v: object) -> object:
        from richrep.runtime.memory import parse_memory

        parse_memory(v)  # ConfigError (a ValueError) names what is wrong
        return v

    @field_validator("engine")
    @classmethod
    def _engine(cls, v: Spec) -> Spec:
        return v.resolved(ENGINES, "runtime.engine")

    @field_validator("track")
    @classmethod
    def _tracker(cls, v: Spec | None) -> Spec | None:
        return None if v is None else v.resolved(TRACKERS, "runtime.track")

    @property
    def evaluation_device(self) -> str:
        return self.eval_device or self.device
