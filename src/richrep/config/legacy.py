"""Reading experiment files written for older richrep versions."""

from __future__ import annotations

import warnings
from typing import Any

_RUNTIME_KEYS = ("device", "threads", "engine", "strategy", "ray")


def runtime_from_older_files(raw: Any) -> Any:
    """Settings of how to run that files of richrep 0.1 kept under ``training`` (device,
    threads, engine, strategy, ray) or ``evaluation`` (device) moved to ``runtime``; read them
    there, with a :class:`FutureWarning`."""
    if not isinstance(raw, dict):
        return raw
    raw = dict(raw)
    runtime = dict(raw.get("runtime") or {})
    moved = []
    training = raw.get("training")
    if isinstance(training, dict):
        training = dict(training)
        for key in _RUNTIME_KEYS:
            if key not in training:
                continue
            moved.append(f"training.{key}")
            value = training.pop(key)
            if key == "ray":
                engine = runtime.get("engine", "ray")
                name = engine if isinstance(engine, str) else next(iter(engine))
                runtime["engine"] = {name: value}
            elif key == "engine" and isinstance(runtime.get("engine"), dict):
                ((_, params),) = runtime["engine"].items()
                runtime["engine"] = {value: params}
            else:
                runtime.setdefault(key, value)
        raw["training"] = training
    evaluation = raw.get("evaluation")
    if isinstance(evaluation, dict) and "device" in evaluation:
        evaluation = dict(evaluation)
        runtime.setdefault("eval_device", evaluation.pop("device"))
        moved.append("evaluation.device")
        raw["evaluation"] = evaluation
    if moved:
        warnings.warn(
            f"{', '.join(moved)} moved to the runtime: section (how to run is not part of the "
            f"run's identity); read as runtime settings",
            FutureWarning,
            stacklevel=3,
        )
        raw["runtime"] = runtime
    return raw
