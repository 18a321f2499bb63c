"""``calops retrain``: learn from the labelled traffic, judged on the most recent of it.

1. The labelled predictions of the last ``--since`` (the features the API saw and the truth
   that came back); fewer than ``--min-rows`` and nothing is trained or registered.
2. Split by prediction time, not at random: the newest ``--recent`` fraction is the evaluation
   window, never trained on; the older traffic is training data.
3. The training traffic is mixed with base data (the config's data source, ``--base-data``, or
   none): a seeded sample of at most ``BASE_SHARE`` as many base rows as traffic rows, each
   counting ``BASE_WEIGHT`` of a traffic row in the fit. Where the two disagree (concept
   drift: the same inputs now burn more) the fit follows the traffic; the base keeps the
   inputs the traffic has not visited covered.
4. ``calops train``'s trainer and config fit the mix (holdout off) into a run folder; the
   challenger and the champion are scored on the same window through the API's predictor; the
   run is logged and registered with that lineage, and the serving pointer moves only when the
   challenger is strictly better (or with ``--promote``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from calapi.errors import CalopsError
from calopsctl import lifecycle, tracking, training
from calopsctl.runs import RunFolders, write_json_atomic
from calopsctl.training import LOG_FILE, Plan, Produced, Report, TrackerFactory, TrainOptions

if TYPE_CHECKING:
    import pandas as pd

    from calapi.model.config import TrainConfig
    from calapi.model.data import LoadedData
    from calapi.serving.sources import LoadedModel
    from calopsctl.tracking import LoggedRun, Tracker, TrackingTarget

BASE_SHARE: Final = 0.25  # base rows per traffic training row, at most
# What a base row counts in the fit next to a traffic row. Where the two disagree the fit
# lands at their weighted mean: at 1.0 a quarter of base rows kept a fifth of the old
# behaviour (RMSLE 0.057 against a holdout of 0.023 after full concept drift); at 0.1 it is
# a fortieth. Where only base rows are, their weight does not matter.
BASE_WEIGHT: Final = 0.1
NO_BASE: Final = "none"
LINEAGE_FILE: Final = "retrain.json"
PARAM_PREFIX: Final = "retrain."
TAG_PREFIX: Final = "calops.retrain."
PREDICTED_AT: Final = "predicted_at"

TrafficReader = Callable[[Path, float, str | None], "pd.DataFrame"]


class NotEnoughTrafficError(CalopsError):
    """Too few labelled predictions to learn from."""


@dataclass(frozen=True)
class RetrainOptions:
    """What the user asked ``calops retrain`` for."""

    since_seconds: float = 3600.0
    since: str = "1h"  # as the user wrote it, for messages
    min_rows: int = 200
    base_data: str | None = None  # a CSV, "synthetic" or "none"; None: the config's data.source
    recent: float = 0.2
    promote: bool = False
    config_path: Path | None = None
    tracking: str | None = None
    experiment: str = "calops"
    log: str | None = None  # a prediction log to read instead of the stack's

    def train_options(self) -> TrainOptions:
        """The ``calops train`` options of the same run: the same config, holdout off."""
        data = "synthetic" if self.base_data == NO_BASE else self.base_data
        return TrainOptions(
            config_path=self.config_path, data=data, holdout=False, tracking=self.tracking,
            promote=self.promote, experiment=self.experiment,
        )  # fmt: skip


@dataclass(frozen=True)
class TrafficSplit:
    """The labelled traffic cut by prediction time: older rows to train on, the newest to judge."""

    train: pd.DataFrame
    window: pd.DataFrame

    @property
    def window_start(self) -> str:
        return iso(float(self.window[PREDICTED_AT].min()))

    @property
    def window_end(self) -> str:
        return iso(float(self.window[PREDICTED_AT].max()))

    @property
    def train_start(self) -> str:
        return iso(float(self.train[PREDICTED_AT].min()))


@dataclass(frozen=True)
class Lineage:
    """What the challenger was trained on and compared with; logged and kept in the run folder."""

    since: str
    traffic_start: str  # the oldest training row's prediction time
    window_start: str
    window_end: str
    rows_traffic: int
    rows_base: int
    rows_evaluated: int
    base_data: str
    champion: str | None  # the version compared with (None: nothing served)
    champion_rmsle: float | None
    challenger_rmsle: float

    def params(self) -> dict[str, Any]:
        return {f"{PARAM_PREFIX}{key}": value for key, value in self._known().items()}

    def tags(self) -> dict[str, str]:
        return {f"{TAG_PREFIX}{key}": str(value) for key, value in self._known().items()}

    def metrics(self) -> dict[str, float]:
        found = {"challenger_rmsle": self.challenger_rmsle, "champion_rmsle": self.champion_rmsle}
        return {key: value for key, value in found.items() if value is not None}

    def _known(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


@dataclass(frozen=True)
class RetrainSummary:
    """What ``calops retrain`` did, for the closing table or ``--json``."""

    outcome: str  # "promoted calories/3 (was calories/2)" or "kept calories/2: ..."
    promoted: bool
    promotion_reason: str
    model_name: str
    model_version: str
    champion: str | None
    challenger_rmsle: float
    champion_rmsle: float | None
    rows_evaluated: int
    rows_traffic: int
    rows_base: int
    window_start: str
    window_end: str
    traffic_start: str
    base_data: str
    run_id: str
    run_folder: str
    experiment: str
    tracking_uri: str
    serving_pointer: str
    model_uri: str
    log: str


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds")


def default_traffic(home: Path, since_seconds: float, log: str | None) -> pd.DataFrame:
    from calopsctl.trafficdata import labelled_traffic

    return labelled_traffic(home, since_seconds, log)


def retrain(
    options: RetrainOptions,
    *,
    home: Path,
    base: Path | None = None,
    report: Report = lambda _message: None,
    tracker_factory: TrackerFactory | None = None,
    traffic: TrafficReader = default_traffic,
) -> RetrainSummary:
    """Train a challenger on the labelled traffic, score it and the champion on the newest of
    it, register it with that lineage, and serve it only when it is better (or forced)."""
    plan = training.make_plan(options.train_options(), base or Path.cwd())
    assert plan.config is not None  # noqa: S101 - a plan without a script has a config
    rows = traffic(home, options.since_seconds, options.log)
    enough(len(rows), options)
    split = split_recent(rows, options.recent)
    base_rows = base_sample(plan.config, options.base_data, len(split.train))
    report(f"{len(split.train)} traffic rows and {_rows(base_rows)} base rows to train on; "
           f"{len(split.window)} recent rows to judge on.")  # fmt: skip
    target = tracking.resolve_target(options.tracking, home=home)
    report(f"Tracking to {target.shown} ({target.origin}).")
    tracking.check_reachable(target)
    tracker = (tracker_factory or tracking.MlflowTracker)(target)
    pointer = training.choose_pointer(target, tracker, plan)
    report(f"What serves: {pointer.where}.")
    done = _train_and_log(
        plan, options, split, base_rows, where=(target, tracker, pointer), report=report
    )
    verdict = lifecycle.gate(
        pointer, done.champion, key=done.logged.model_version, challenger=done.load,
        evaluation=split.window, no_evaluation="", force=options.promote, strict=True,
        rows_named=f"the same {len(split.window):,} recent rows", scored=done.scores,
    )  # fmt: skip
    challenger = lifecycle.find_run(pointer, done.logged.run_id)
    if verdict.move:
        lifecycle.move_to(pointer, challenger, verdict.how, verdict.reason)
    return _summary(plan, options, done, verdict, challenger=challenger, where=(target, pointer))


@dataclass(frozen=True)
class Logged:
    """A challenger trained, scored, logged and in its run folder."""

    champion: lifecycle.Candidate | None
    scores: lifecycle.Scores
    lineage: Lineage
    logged: LoggedRun
    folder: Path
    model_file: str
    log_file: str

    def load(self) -> LoadedModel:
        from calapi.serving.sources import LocalSource

        return LocalSource(self.folder / self.model_file).load()


def _train_and_log(
    plan: Plan,
    options: RetrainOptions,
    split: TrafficSplit,
    base_rows: LoadedData | None,
    *,
    where: tuple[TrackingTarget, Tracker, lifecycle.ServingPointer],
    report: Report,
) -> Logged:
    """Fit into a staging folder, score both models on the window, log the run with its
    lineage; the folder takes its final name only once logged, and is removed on failure."""
    target, tracker, pointer = where
    folders = RunFolders(plan.outputs)
    staging = folders.staging()
    try:
        champion = pointer.champion()
        produced = _fit(plan, split, base_rows, staging, report)
        judged = _score(pointer, champion, staging / produced.model_path.name, split.window)
        lineage = _lineage(options, split, base_rows, champion, judged.scores)
        produced = _with_lineage(produced, lineage, judged.challenger)
        write_json_atomic(staging / LINEAGE_FILE, asdict(lineage))
        report(f"Logging the run to {target.shown} and registering the model.")
        train_options = options.train_options()
        logged = tracker.log_run(
            training.run_record(
                plan, produced, train_options, tags=lineage.tags(),
                artifacts_too=(staging / LINEAGE_FILE,),
            )
        )  # fmt: skip
        info = training.run_info(plan, produced, logged, target, train_options)
        folder = folders.finish(staging, info)
    except BaseException:
        folders.discard(staging, keep=(LOG_FILE,))
        raise
    return Logged(
        champion, judged.scores, lineage, logged, folder, produced.model_path.name,
        produced.log_path.name,
    )  # fmt: skip


def _summary(
    plan: Plan,
    options: RetrainOptions,
    done: Logged,
    verdict: lifecycle.Verdict,
    *,
    challenger: lifecycle.Candidate,
    where: tuple[TrackingTarget, lifecycle.ServingPointer],
) -> RetrainSummary:
    target, pointer = where
    lineage, champion = done.lineage, done.champion
    return RetrainSummary(
        outcome=outcome(verdict, challenger, champion, lineage),
        promoted=verdict.move,
        promotion_reason=verdict.reason,
        model_name=plan.model_name,
        model_version=done.logged.model_version,
        champion=champion.key if champion else None,
        challenger_rmsle=lineage.challenger_rmsle,
        champion_rmsle=lineage.champion_rmsle,
        rows_evaluated=lineage.rows_evaluated,
        rows_traffic=lineage.rows_traffic,
        rows_base=lineage.rows_base,
        window_start=lineage.window_start,
        window_end=lineage.window_end,
        traffic_start=lineage.traffic_start,
        base_data=lineage.base_data,
        run_id=done.logged.run_id,
        run_folder=str(done.folder),
        experiment=options.experiment,
        tracking_uri=target.shown,
        serving_pointer=pointer.where,
        model_uri=done.logged.model_uri,
        log=str(done.folder / done.log_file),
    )


# -- the rows -------------------------------------------------------------------------------------


def enough(found: int, options: RetrainOptions) -> None:
    """NotEnoughTrafficError unless there are ``--min-rows`` labelled predictions."""
    if found < max(options.min_rows, 2):
        raise NotEnoughTrafficError(
            f"Only {found} labelled predictions in the last {options.since} (need "
            f"{options.min_rows}); send feedback to /feedback or lower --min-rows."
        )


def split_recent(rows: pd.DataFrame, fraction: float) -> TrafficSplit:
    """The newest ``fraction`` of ``rows`` by prediction time (at least one row) to judge on,
    the older ones (at least one) to train on."""
    ordered = rows.sort_values(PREDICTED_AT, kind="stable").reset_index(drop=True)
    recent = min(max(1, round(fraction * len(ordered))), len(ordered) - 1)
    cut = len(ordered) - recent
    return TrafficSplit(ordered.iloc[:cut], ordered.iloc[cut:])


def base_sample(config: TrainConfig, base_data: str | None, traffic_rows: int) -> LoadedData | None:
    """The base rows mixed in: a seeded sample of at most ``BASE_SHARE`` per traffic row (None
    with ``--base-data none``)."""
    if base_data == NO_BASE:
        return None
    from calapi.model.data import LoadedData, load_training_data

    loaded = load_training_data(
        config.data.source,
        synthetic_rows=config.data.synthetic_rows,
        synthetic_seed=config.data.synthetic_seed,
        synthetic_noise=config.data.synthetic_noise,
    )
    cap = math.floor(traffic_rows * BASE_SHARE)
    if len(loaded.frame) <= cap:
        return loaded
    sample = loaded.frame.sample(n=cap, random_state=config.model.random_state)
    return LoadedData(
        sample, f"{loaded.source} ({cap} of {len(loaded.frame)} rows)", loaded.synthetic
    )


def _rows(loaded: LoadedData | None) -> int:
    return 0 if loaded is None else len(loaded.frame)


def _mix(split: TrafficSplit, base_rows: LoadedData | None) -> LoadedData:
    import pandas as pd

    from calapi.model.data import LoadedData
    from calapi.model.features import FEATURES, SAMPLE_WEIGHT, TARGET

    columns = [*FEATURES, TARGET]
    parts = [split.train[columns].assign(**{SAMPLE_WEIGHT: 1.0})]
    source = (f"labelled traffic ({len(split.train)} rows predicted {split.train_start} to "
              f"{split.window_start})")  # fmt: skip
    if base_rows is not None:
        parts.append(base_rows.frame[columns].assign(**{SAMPLE_WEIGHT: BASE_WEIGHT}))
        source += f" + {base_rows.source} (weight {BASE_WEIGHT:g})"
    return LoadedData(pd.concat(parts, ignore_index=True), source, synthetic=False)


# -- training and scoring -------------------------------------------------------------------------


def _fit(
    plan: Plan, split: TrafficSplit, base_rows: LoadedData | None, into: Path, report: Report
) -> Produced:
    assert plan.config is not None  # noqa: S101 - checked by retrain
    mixed = _mix(split, base_rows)
    produced = training.run_builtin(plan.config, plan.params, into, report, data=mixed)
    return replace(produced, data_source=mixed.source)


@dataclass(frozen=True)
class Judged:
    """Both models on the window: the scores the gate reads, the challenger's full metrics."""

    scores: lifecycle.Scores
    challenger: dict[str, float]


def _score(
    pointer: lifecycle.ServingPointer,
    champion: lifecycle.Candidate | None,
    model_path: Path,
    window: pd.DataFrame,
) -> Judged:
    from calapi.serving.sources import LocalSource

    new = lifecycle.metrics_on(LocalSource(model_path).load(), window)
    old: float | CalopsError = math.nan
    if champion is not None:
        old = lifecycle.champion_score(pointer, champion, window)
    return Judged(lifecycle.Scores(new["rmsle"], old, len(window)), new)


def _lineage(
    options: RetrainOptions,
    split: TrafficSplit,
    base_rows: LoadedData | None,
    champion: lifecycle.Candidate | None,
    scored: lifecycle.Scores,
) -> Lineage:
    old = scored.champion
    return Lineage(
        since=options.since,
        traffic_start=split.train_start,
        window_start=split.window_start,
        window_end=split.window_end,
        rows_traffic=len(split.train),
        rows_base=_rows(base_rows),
        rows_evaluated=len(split.window),
        base_data=NO_BASE if base_rows is None else base_rows.source,
        champion=champion.key if champion else None,
        champion_rmsle=old if isinstance(old, float) and not math.isnan(old) else None,
        challenger_rmsle=scored.challenger,
    )


def _with_lineage(produced: Produced, lineage: Lineage, on_window: dict[str, float]) -> Produced:
    """The run as logged: its data source in words, the lineage as params, and as metrics the
    challenger's on the recent window (its fit on the training rows kept under ``train``)."""
    params = {**produced.params, "data.source": produced.data_source, **lineage.params()}
    fitted = {name: produced.metrics[name] for name in on_window if name in produced.metrics}
    metrics = {
        **produced.metrics,
        **on_window,
        "evaluated_on": f"recent traffic ({lineage.rows_evaluated} rows)",
        "n_evaluated": lineage.rows_evaluated,
        "train": fitted,
        "window": lineage.metrics(),
    }
    return replace(produced, params=params, metrics=metrics)


def outcome(
    verdict: lifecycle.Verdict,
    challenger: lifecycle.Candidate,
    champion: lifecycle.Candidate | None,
    lineage: Lineage,
) -> str:
    """What moved, in one line."""
    scores = f"challenger RMSLE {lineage.challenger_rmsle:.4g}"
    if lineage.champion_rmsle is not None:
        scores += f" vs {lineage.champion_rmsle:.4g}"
    scores += f" on the same {lineage.rows_evaluated:,} recent rows"
    if champion is None:
        return f"promoted {challenger.api_version} (nothing served before): {scores}"
    if verdict.move:
        forced = ", forced with --promote" if verdict.how == "forced" else ""
        return f"promoted {challenger.api_version} (was {champion.api_version}{forced}): {scores}"
    if lineage.champion_rmsle is None:
        return f"kept {champion.api_version}: {verdict.reason}"
    return f"kept {champion.api_version}: {scores}"
