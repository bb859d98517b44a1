"""Model registry: one registered model per model family, versions gated by aliases.

Naming: every trained version of a model family goes to ONE registered model named
``isrec-<model>`` (``isrec-rnn_mtl``, ``isrec-esmm``, ...). Versions of one family are
interchangeable at serving time (same inputs, same outputs), so the registered model is the unit
that serving and batch scoring point at (``models:/isrec-rnn_mtl@champion``); different families
stay apart because their champions are compared only against their own kind. The data a version
was trained on is in its tags (``isrec.data.samples.path`` / ``.version``), not in the name.

Aliases, never stages: a newly registered version gets alias ``challenger``; ``promote`` moves
alias ``champion`` to the challenger only when it beats the current champion on a test metric
(default ``train.metrics.DEFAULT_METRIC``, in the direction the metric registry gives it) measured
on the SAME data (same samples table path and Delta version).
With no champion yet, the challenger is promoted; a challenger flagged below chance
(``isrec.below_chance``, train/tracking/guard.py) never is. Each decision is written into the
challenger version's tags (``isrec.promotion.decision`` / ``.champion_version``) and its numbers
and reason into the description. A version carries few tags: the samples path and version it was
trained on, the promotion metric, its comparison id and the below-chance flag.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from etl.tables import SAMPLES
from train.metrics import DEFAULT_METRIC, sign
from train.metrics import metric as known_metric
from train.tracking.guard import BELOW_CHANCE_TAG, VALUE_TAG
from train.tracking.store import TAG, configure

log = logging.getLogger(__name__)

PREFIX = "isrec-"
CHAMPION, CHALLENGER = "champion", "challenger"
DATA_TAGS = (f"{TAG}data.{SAMPLES}.path", f"{TAG}data.{SAMPLES}.version")
# what a version's tags hold (a few chips in the UI; the rest is in its run and description):
# the data it was trained on, the promotion metric, its comparison and the below-chance flag
VERSION_RUN_TAGS = (*DATA_TAGS, f"{TAG}comparison_id", BELOW_CHANCE_TAG)
DESCRIPTION_METRICS = ("ctr_auc", "cvr_auc", "ctcvr_auc", "ctcvr_logloss")


def registered_model_name(model: str) -> str:
    """``isrec-<model>``; a name that already has the prefix is returned unchanged."""
    return model if model.startswith(PREFIX) else f"{PREFIX}{model}"


def _client(tracking_uri: str | None) -> MlflowClient:
    uri = configure(tracking_uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException:
        family = name.removeprefix(PREFIX)
        description = (
            f"isrec {family} models. Alias '{CHAMPION}' = the version serving and batch scoring "
            f"use; '{CHALLENGER}' = the newest candidate. Promotion: jobs/promote.py."
        )
        try:
            client.create_registered_model(
                name, tags={f"{TAG}model": family}, description=description
            )
        except MlflowException:  # created concurrently
            client.get_registered_model(name)


def _run_record(client: MlflowClient, run_id: str | None) -> tuple[dict[str, str], str]:
    """The version's tags from its run (``VERSION_RUN_TAGS`` and the promotion metric) and a
    description naming the run, its data and its test metrics."""
    if not run_id:
        return {}, ""
    run = client.get_run(run_id)
    tags = {k: run.data.tags[k] for k in VERSION_RUN_TAGS if k in run.data.tags}
    metrics = run.data.metrics
    key = f"test_{DEFAULT_METRIC}"
    if key in metrics:
        tags[f"{TAG}metric.{key}"] = repr(metrics[key])
    shown = [
        f"{m} {metrics[f'test_{m}']:.4f}" for m in DESCRIPTION_METRICS if f"test_{m}" in metrics
    ]
    data = tags.get(DATA_TAGS[1], "?")
    text = f"Trained by run {run_id} on samples version {data}."
    if shown:
        text += f" Test: {', '.join(shown)}."
    if tags.get(BELOW_CHANCE_TAG) == "true":
        text += f" Ranks below chance ({run.data.tags.get(VALUE_TAG)}): never promoted."
    return tags, text


def register_version(
    model_uri: str,
    model: str,
    *,
    run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    alias: str | None = CHALLENGER,
    tracking_uri: str | None = None,
) -> ModelVersion:
    """Register ``model_uri`` as a new version of ``isrec-<model>`` and point ``alias`` at it.

    The version's tags carry the run's data lineage (samples path + Delta version) and test
    metrics, so promotion can compare versions without reading other stores. Registering the
    same model of the same run again returns its existing version (a retried job adds none)."""
    client = _client(tracking_uri)
    name = registered_model_name(model)
    _ensure_registered_model(client, name)
    run_tags, description = _run_record(client, run_id)
    version_tags = run_tags | dict(tags or {})
    mv = _existing_version(client, name, model_uri, run_id)
    if mv is None:
        mv = mlflow.register_model(model_uri, name, tags=version_tags)
    else:
        log.info("%s of run %s is already version %s of %s", model_uri, run_id, mv.version, name)
    if description:
        client.update_model_version(name, mv.version, description=description)
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    return client.get_model_version(name, mv.version)


def _existing_version(
    client: MlflowClient, name: str, model_uri: str, run_id: str | None
) -> ModelVersion | None:
    if not run_id:
        return None
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    same = [mv for mv in found if mv.source == model_uri]
    return min(same, key=lambda mv: int(mv.version)) if same else None


def alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def version_metric(client: MlflowClient, mv: ModelVersion, metric: str) -> float | None:
    """The version's ``test_<metric>``: from its run when readable, else from its tags."""
    key = metric if metric.startswith("test_") else f"test_{metric}"
    if mv.run_id:
        try:
            value = client.get_run(mv.run_id).data.metrics.get(key)
        except MlflowException:
            value = None
        if value is not None:
            return float(value)
    tag = (mv.tags or {}).get(f"{TAG}metric.{key}")
    return float(tag) if tag is not None else None


def data_version(mv: ModelVersion) -> tuple[str, str] | None:
    """(samples table path, Delta version) the version was trained on; None when unknown."""
    tags = mv.tags or {}
    if not all(tags.get(t) for t in DATA_TAGS):
        return None
    return tags[DATA_TAGS[0]], tags[DATA_TAGS[1]]


def below_chance(client: MlflowClient, mv: ModelVersion) -> bool:
    """The version (or its run) carries the below-chance flag (train/tracking/guard.py)."""
    if (mv.tags or {}).get(BELOW_CHANCE_TAG) == "true":
        return True
    if not mv.run_id:
        return False
    try:
        return client.get_run(mv.run_id).data.tags.get(BELOW_CHANCE_TAG) == "true"
    except MlflowException:
        return False


@dataclass
class Decision:
    registered_model: str
    metric: str
    promoted: bool
    reason: str
    challenger_version: str | None = None
    champion_version: str | None = None  # the champion before the decision
    challenger_value: float | None = None
    champion_value: float | None = None
    challenger_data: str | None = None
    champion_data: str | None = None
    decided_at: str = ""

    def summary(self) -> str:
        verdict = "PROMOTED" if self.promoted else "REFUSED"
        return (
            f"{verdict} {self.registered_model} v{self.challenger_version} "
            f"(champion before: {_v(self.champion_version)}): {self.reason}"
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def _v(version: str | None) -> str:
    return f"v{version}" if version else "none"


def _fmt(data: tuple[str, str] | None) -> str | None:
    return f"{data[0]}@v{data[1]}" if data else None


def decide(
    client: MlflowClient,
    name: str,
    challenger: ModelVersion,
    champion: ModelVersion | None,
    metric: str,
    min_delta: float = 0.0,
) -> Decision:
    """Pure decision (no writes): does ``challenger`` replace ``champion``?"""
    value = version_metric(client, challenger, metric)
    data = data_version(challenger)
    champ = str(champion.version) if champion is not None else None
    d = Decision(name, metric, False, "", str(challenger.version), champ)
    d.challenger_value, d.challenger_data = value, _fmt(data)
    if champ == d.challenger_version:
        d.reason = "the challenger already is the champion"
        return d
    if value is None:
        d.reason = f"the challenger has no test_{metric.removeprefix('test_')} metric"
        return d
    if below_chance(client, challenger):
        d.reason = (
            f"the challenger ranks below chance ({VALUE_TAG} < 0.5, tag {BELOW_CHANCE_TAG}): "
            "never promoted"
        )
        return d
    if champion is None:
        d.promoted, d.reason = True, f"no champion yet; challenger {metric}={value:.6f}"
        return d
    return _compare(client, d, champion, metric, min_delta)


def _compare(
    client: MlflowClient, d: Decision, champion: ModelVersion, metric: str, min_delta: float
) -> Decision:
    champ_data = data_version(champion)
    d.champion_data = _fmt(champ_data)
    d.champion_value = version_metric(client, champion, metric)
    if d.challenger_data is None or champ_data is None or d.challenger_data != d.champion_data:
        d.reason = (
            f"different data version: challenger on {d.challenger_data}, champion on "
            f"{d.champion_data}; metrics are comparable only on the same samples version"
        )
        return d
    if d.champion_value is None:
        d.promoted, d.reason = True, f"the champion has no {metric}; challenger takes over"
        return d
    gain = sign(metric) * (d.challenger_value - d.champion_value)
    op = ">" if gain > min_delta else "<="
    word = "beats" if gain > min_delta else "does not beat"
    d.promoted = gain > min_delta
    d.reason = (
        f"challenger {word} champion on {metric}: {d.challenger_value:.6f} vs "
        f"{d.champion_value:.6f} (improvement {gain:+.6f} {op} min_delta {min_delta}) "
        f"on {d.challenger_data}"
    )
    return d


def record(client: MlflowClient, d: Decision) -> None:
    """Write the decision into the challenger version's tags and description."""
    name, version = d.registered_model, d.challenger_version
    tags = {  # the numbers and the reason go into the description
        "decision": "promoted" if d.promoted else "refused",
        "champion_version": d.champion_version,
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, f"{TAG}promotion.{key}", str(value))
    old = client.get_model_version(name, version).description or ""
    line = f"[{d.decided_at}] {d.summary()}"
    client.update_model_version(name, version, description=f"{old}\n\n{line}".strip())


def promote(
    model: str,
    metric: str = DEFAULT_METRIC,
    *,
    version: str | None = None,
    min_delta: float = 0.0,
    tracking_uri: str | None = None,
) -> Decision:
    """Gate the challenger (alias, or ``version``) against the champion; move ``champion``
    when it wins. The decision is recorded on the challenger version either way. ``metric``
    is a train.metrics name (``ctcvr_auc`` or ``test_ctcvr_auc``); an unknown one raises
    ValueError before anything is read or written."""
    known_metric(metric)
    client = _client(tracking_uri)
    name = registered_model_name(model)
    client.get_registered_model(name)  # a clear RESOURCE_DOES_NOT_EXIST for a wrong name
    challenger = (
        client.get_model_version(name, str(version))
        if version is not None
        else alias_version(client, name, CHALLENGER)
    )
    if challenger is None:
        return Decision(name, metric, False, f"no version has alias '{CHALLENGER}'")
    champion = alias_version(client, name, CHAMPION)
    d = decide(client, name, challenger, champion, metric, min_delta)
    d.decided_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    if d.promoted:
        client.set_registered_model_alias(name, CHAMPION, challenger.version)
        if champion is not None:
            client.set_model_version_tag(
                name, champion.version, f"{TAG}promotion.replaced_by", str(challenger.version)
            )
    if d.reason and "already is the champion" not in d.reason:
        record(client, d)
    return d


def champion_uri(model: str) -> str:
    return f"models:/{registered_model_name(model)}@{CHAMPION}"


def describe(model: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """Aliases and versions of ``isrec-<model>`` (for CLIs and reports)."""
    client = _client(tracking_uri)
    rm = client.get_registered_model(registered_model_name(model))
    return {"name": rm.name, "aliases": dict(rm.aliases or {})}
