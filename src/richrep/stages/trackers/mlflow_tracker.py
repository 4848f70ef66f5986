"""The ``mlflow`` tracker: one MLflow run per logged state of a richrep run.

Where it logs: ``tracking_uri`` when given, else ``MLFLOW_TRACKING_URI`` when set, else
richrep's own local file store ``<runs folder>/mlruns`` beside the run folders, so every run of
one output folder can be compared in one MLflow UI
(``MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri runs/mlruns``). MLflow refuses
file stores unless ``MLFLOW_ALLOW_FILE_STORE`` is true: richrep sets it for its own default
store, and only while it logs. The experiment is ``experiment`` when given, else the
experiment's name. Params and tags go in batches of 100, metrics of 1000 (``log_batch``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field

from richrep.errors import ConfigError, StoreError
from richrep.plugins import TRACKERS
from richrep.stages.trackers import Record

ExperimentName = Annotated[str, Field(min_length=1, max_length=500)]


def import_mlflow() -> Any:
    try:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ConfigError(
            "runtime.track: mlflow needs MLflow, which is not installed: "
            "`pip install 'richrep[track]'` (or `pip install mlflow-skinny`)"
        ) from None
    return MlflowException, MlflowClient


def shown(uri: str) -> str:
    """``uri`` without a password (``https://user:secret@host`` -> ``https://user@host``)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}@{host}"))


@TRACKERS.register("mlflow", description="log config, curves, results and report to MLflow")
class MlflowTracker:
    """Log each run to MLflow: ``tracking_uri`` (default: a local file store ``mlruns``
    beside the run folders, or ``MLFLOW_TRACKING_URI``), under ``experiment`` (default: the
    experiment's name)."""

    def __init__(
        self, tracking_uri: str | None = None, experiment: ExperimentName | None = None
    ) -> None:
        self.error, self.client_class = import_mlflow()
        self.tracking_uri = tracking_uri
        self.experiment = experiment

    def _uri(self, record: Record) -> tuple[str, bool]:
        """The tracking URI, and whether it is richrep's own default local store."""
        given = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if given:
            return given, False
        return (record.runs_dir / "mlruns").resolve().as_uri(), True

    def target(self, record: Record) -> str:
        return f"{shown(self._uri(record)[0])}#{self.experiment or record.experiment}"

    @contextlib.contextmanager
    def _client(self, record: Record) -> Iterator[Any]:
        uri, own = self._uri(record)
        before = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
        if own:
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        try:
            yield self.client_class(tracking_uri=uri)
        except self.error as e:
            raise StoreError(f"MLflow at {shown(uri)}: {e.message}") from None
        except OSError as e:
            raise StoreError(f"MLflow at {shown(uri)}: {e}") from None
        finally:
            if own and before is None:
                os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
            elif own:
                os.environ["MLFLOW_ALLOW_FILE_STORE"] = before  # type: ignore[assignment]

    def logged(self, ref: str, record: Record) -> bool:
        with self._client(record) as client:
            try:
                run = client.get_run(ref)
            except self.error:
                return False
            return run.info.lifecycle_stage == "active" and run.info.status == "FINISHED"

    def _experiment_id(self, client: Any, name: str, uri: str) -> str:
        found = client.get_experiment_by_name(name)
        if found is None:
            try:
                return str(client.create_experiment(name))
            except self.error:  # created meanwhile by another run
                found = client.get_experiment_by_name(name)
                if found is None:
                    raise
        if found.lifecycle_stage != "active":
            raise StoreError(
                f"MLflow experiment {name!r} at {shown(uri)} is deleted: restore it "
                f"(mlflow experiments restore) or name another one with "
                f"runtime.track: {{mlflow: {{experiment: ...}}}}"
            )
        return str(found.experiment_id)

    def log(self, record: Record) -> str:
        from mlflow.entities import Metric, Param, RunTag

        uri = self._uri(record)[0]
        with self._client(record) as client:
            eid = self._experiment_id(client, self.experiment or record.experiment, uri)
            run = client.create_run(eid, run_name=record.run_id, tags=record.tags)
            rid = run.info.run_id
            try:
                now = int(time.time() * 1000)
                params = [Param(k, v) for k, v in record.params.items()]
                for i in range(0, len(params), 100):
                    client.log_batch(rid, params=params[i : i + 100])
                metrics = [Metric(k, v, now, step) for k, v, step in record.metrics]
                for i in range(0, len(metrics), 1000):
                    client.log_batch(rid, metrics=metrics[i : i + 1000])
                for path, folder in record.artifacts:
                    client.log_artifact(rid, str(path), folder or None)
                client.log_batch(rid, tags=[RunTag("richrep.digest", record.digest)])
            except BaseException:
                with contextlib.suppress(Exception):
                    client.set_terminated(rid, "FAILED")
                raise
            client.set_terminated(rid, "FINISHED")
        return str(rid)
