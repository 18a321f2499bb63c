"""``nox -s bench``: calapi against a bare FastAPI endpoint and ``mlflow models serve``.

One run trains the model once (timed), serves it three ways with the same uvicorn settings,
drives each with wrk at the same concurrency, times a 10,000-row batch and ``calops --help``,
prints a table with PASS/FAIL per target and writes bench/results/latest.json.
A benchmark reports: the exit code is 0 even when a target is missed, 1 only when the harness
itself could not measure something it should have.

    python bench/run.py [--quick] [--rounds N] [--duration S] [--connections C]
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import platform
import signal
import sys
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    # Run as a script (`python bench/run.py`): make the `bench` package importable.
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from rich.console import Console  # noqa: E402

from bench import loadgen, model, payloads, probes, report, servers  # noqa: E402


@dataclass(frozen=True)
class Options:
    """What to measure and how hard; the defaults are the full run."""

    load: loadgen.LoadSpec
    rounds: int
    config: Path
    output_dir: Path
    batch_rows: int
    batch_repeats: int
    help_runs: int
    mlflow: bool
    artifacts: Path | None = None


def parse_args(argv: Sequence[str] | None = None) -> Options:
    """Options from the command line; ``--quick`` shortens every phase."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s runs, one round, fewer repeats")
    parser.add_argument("--duration", type=float, help="seconds measured per server and round")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up load before each run")
    parser.add_argument("--rounds", type=int, help="rounds over all servers; the best is kept")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--config", type=Path, default=ROOT / "config.yaml")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--batch-rows", type=int, default=10_000)
    parser.add_argument("--no-mlflow", action="store_true", help="skip mlflow models serve")
    parser.add_argument(
        "--artifacts", type=Path, help="serve this trained artifacts folder instead of training"
    )
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    load = loadgen.LoadSpec(
        connections=args.connections,
        threads=args.threads,
        duration_s=args.duration or (3.0 if quick else 10.0),
        warmup_s=args.warmup if args.warmup is not None else (1.0 if quick else 2.0),
    )
    return Options(
        load=load,
        rounds=args.rounds or (1 if quick else 2),
        config=args.config,
        output_dir=args.output_dir,
        batch_rows=args.batch_rows,
        batch_repeats=3 if quick else 5,
        help_runs=10 if quick else 20,
        mlflow=not args.no_mlflow,
        artifacts=args.artifacts,
    )


class Bench:
    """One benchmark run; every process it starts is stopped when ``run`` returns or raises."""

    def __init__(self, options: Options, workdir: Path, console: Console) -> None:
        self.options = options
        self.workdir = workdir
        self.console = console
        self.results: dict[str, Any] = {"servers": {}, "batch": {}, "errors": []}

    def run(self) -> dict[str, Any]:
        """Measure everything the plan asks for; return the results (targets not yet judged)."""
        self.results.update(created=datetime.now(UTC).isoformat(), settings=self._settings())
        self.results["machine"] = _machine()
        self._warn_if_busy()
        self._time_cli_help()
        trained = self._train()
        logged = self._log_to_mlflow(trained)
        specs = self._specs(trained, logged)
        with ExitStack() as stack:
            groups = self._start(specs, stack)
            live = [spec for spec in specs if spec.name in groups]
            self._check_answers(live)
            self._drive(live, groups)
            self._time_batches(live)
            for name, pgid in groups.items():
                self.results["servers"][name]["rss_bytes"] = servers.group_rss_bytes(pgid)
        self.results["machine"]["load_after"] = _load_average()
        return self.results

    def _warn_if_busy(self) -> None:
        busy = os.getloadavg()[0]
        cpus = os.cpu_count() or 1
        if busy > 0.5 * cpus:
            self._step(
                f"[yellow]load average {busy:.1f} on {cpus} CPUs: other work shares the cores, "
                "so absolute numbers will be low and noisy; ratios within the run still hold "
                "best[/]"
            )

    def _settings(self) -> dict[str, Any]:
        return {
            "uvicorn": dict(servers.UVICORN_SETTINGS),
            "load": {**asdict(self.options.load), "rounds": self.options.rounds, "tool": "wrk"},
            "batch_rows": self.options.batch_rows,
            "config": str(self.options.config),
        }

    def _step(self, message: str) -> None:
        self.console.print(f"[dim]·[/dim] {message}", highlight=False)

    def _fail(self, what: str, error: BaseException) -> None:
        message = f"{what}: {type(error).__name__}: {error}"
        self.results["errors"].append(message)
        self.console.print(f"[red]{message}[/red]", highlight=False)

    def _time_cli_help(self) -> None:
        self._step("timing `calops --help`")
        calops = str(Path(sys.executable).with_name("calops"))
        try:
            timing = probes.command_time([calops, "--help"], runs=self.options.help_runs)
        except Exception as error:  # reported; the rest of the run goes on
            self._fail("calops --help", error)
            return
        self.results["cli_help"] = timing.as_dict()

    def _train(self) -> model.TrainedModel | None:
        if self.options.artifacts is not None:
            self.results["training"] = {"skipped": f"reused {self.options.artifacts}"}
            return model.reuse(self.options.artifacts)
        if not _importable("calapi.model.train"):
            self.results["training"] = {"skipped": "calapi.model.train is not available yet"}
            self._step(
                "[yellow]calapi.model.train is missing: no model, so only the bare endpoint[/]"
            )
            return None
        self._step(f"training with {self.options.config} (timed)")
        try:
            trained = model.train(self.options.config, self.workdir / "artifacts")
        except Exception as error:
            self._fail("training", error)
            return None
        self.results["training"] = {
            "rows": trained.rows,
            "seconds": trained.seconds,
            "metrics": trained.metrics,
        }
        return trained

    def _log_to_mlflow(self, trained: model.TrainedModel | None) -> model.LoggedModel | None:
        if trained is None or not self.options.mlflow:
            return None
        self._step("logging the model to a temporary MLflow store")
        try:
            return model.log_to_mlflow(trained, self.workdir / "mlflow")
        except Exception as error:
            self._fail("logging to MLflow", error)
            return None

    def _specs(
        self, trained: model.TrainedModel | None, logged: model.LoggedModel | None
    ) -> list[servers.ServerSpec]:
        specs = [_bare_spec()]
        if logged is not None:
            specs.append(_mlflow_spec(logged))
        elif self.options.mlflow:
            self._skip("mlflow", "no model logged to MLflow")
        else:
            self._skip("mlflow", "--no-mlflow")
        if trained is None:
            self._skip("calapi", "no trained model")
        elif not _importable("calapi.serving.app"):
            self._skip("calapi", "calapi.serving.app is not available yet")
        else:
            specs.append(_calapi_spec(trained))
        return specs

    def _skip(self, name: str, reason: str) -> None:
        self.results["servers"][name] = {"skipped": reason}
        self._step(f"[yellow]{report.SERVER_LABELS[name]} skipped: {reason}[/]")

    def _start(self, specs: list[servers.ServerSpec], stack: ExitStack) -> dict[str, int]:
        groups: dict[str, int] = {}
        for spec in specs:
            self._step(f"starting {report.SERVER_LABELS[spec.name]} on port {spec.port}")
            self.results["servers"][spec.name] = {"url": spec.predict_url}
            log = self.workdir / f"{spec.name}.log"
            try:
                groups[spec.name] = stack.enter_context(servers.serving(spec, log))
            except servers.ServerError as error:
                self.results["servers"][spec.name]["error"] = str(error)
                self._fail(f"starting {spec.name}", error)
        return groups

    def _check_answers(self, specs: list[servers.ServerSpec]) -> None:
        for spec in specs:
            response = httpx.post(
                spec.predict_url,
                content=spec.single_body,
                headers={"content-type": "application/json"},
                timeout=30.0,
            )
            if response.status_code != HTTPStatus.OK:
                raise servers.ServerError(
                    f"{spec.name} answered {response.status_code} to the single-row body: "
                    f"{response.text[:500]}"
                )
            self.results["servers"][spec.name]["single_answer"] = response.json()

    def _drive(self, specs: list[servers.ServerSpec], groups: dict[str, int]) -> None:
        rounds: dict[str, list[loadgen.LoadResult]] = {spec.name: [] for spec in specs}
        for index in range(self.options.rounds):
            for spec in specs:
                self._step(f"round {index + 1}/{self.options.rounds}: {spec.name}")
                pgid = groups[spec.name]
                try:
                    result = loadgen.run_wrk(
                        spec.predict_url,
                        spec.single_body,
                        self.options.load,
                        self.workdir,
                        cpu_meter=functools.partial(servers.group_cpu_seconds, pgid),
                    )
                except loadgen.LoadError as error:
                    self._fail(f"load on {spec.name}", error)
                    continue
                rounds[spec.name].append(result)
                self.console.print(f"    {_summary(result)}", highlight=False)
        for name, results in rounds.items():
            if results:
                self.results["servers"][name]["load"] = loadgen.best(results).as_dict()
                self.results["servers"][name]["rounds"] = [r.as_dict() for r in results]

    def _time_batches(self, specs: list[servers.ServerSpec]) -> None:
        by_name = {spec.name: spec for spec in specs}
        rows = model.sample_rows(self.options.batch_rows)
        bodies = {
            "calapi": (payloads.calapi_batch_body(rows), payloads.calapi_predictions),
            "mlflow": (payloads.mlflow_body(rows), payloads.mlflow_predictions),
        }
        predictions: dict[str, list[float]] = {}
        for name, (body, read) in bodies.items():
            if name not in by_name:
                continue
            self._step(f"timing a {len(rows):,}-row batch on {name}")
            try:
                result = probes.batch_latency(
                    by_name[name].predict_url, body, read, repeats=self.options.batch_repeats
                )
            except httpx.HTTPError as error:
                self._fail(f"batch on {name}", error)
                continue
            self.results["batch"][name] = result.as_dict()
            predictions[name] = result.predictions
        if set(predictions) == {"calapi", "mlflow"}:
            self.results["agreement_max_abs_kcal"] = payloads.max_abs_difference(
                predictions["calapi"], predictions["mlflow"]
            )


def _summary(result: loadgen.LoadResult) -> str:
    cpu = result.cpu_us_per_request
    return (
        f"{result.requests_per_s:,.0f} req/s, p50 {result.p50_ms:.2f} ms, "
        f"p99 {result.p99_ms:.2f} ms, errors {result.errors}"
        + ("" if cpu is None else f", server CPU {cpu:,.0f} µs/request")
    )


def _bare_spec() -> servers.ServerSpec:
    port = servers.free_port()
    argv = servers.uvicorn_argv("bench.bare_app:create_app", port, app_dir=ROOT)
    return servers.ServerSpec("bare", argv, port, "/healthz", "/predict", payloads.single_body())


def _mlflow_spec(logged: model.LoggedModel) -> servers.ServerSpec:
    port = servers.free_port()
    return servers.ServerSpec(
        "mlflow",
        servers.mlflow_serve_argv(logged.model_uri, port),
        port,
        "/ping",
        "/invocations",
        payloads.mlflow_body([payloads.SEED_ROW]),
        env={"MLFLOW_TRACKING_URI": logged.tracking_uri, **servers.venv_path_env()},
    )


def _calapi_spec(trained: model.TrainedModel) -> servers.ServerSpec:
    port = servers.free_port()
    argv = servers.uvicorn_argv("calapi.serving.app:create_app", port, app_dir=ROOT)
    return servers.ServerSpec(
        "calapi",
        argv,
        port,
        "/readyz",
        "/predict",
        payloads.single_body(),
        env={"CALOPS_MODEL": str(trained.artifacts)},
    )


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def _machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_before": _load_average(),
    }


def _stop_on_sigterm() -> None:
    # SystemExit unwinds the ExitStack, so every server is stopped on `kill` too.
    def handler(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table, write the JSON; 1 only when the harness broke."""
    options = parse_args(argv)
    # A fixed width keeps the tables whole when the output goes to a file or a CI log.
    console = Console() if sys.stdout.isatty() else Console(width=110)
    _stop_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="calops-bench-") as folder:
        results = report.finish(Bench(options, Path(folder), console).run())
    report.render(results, console)
    for path in report.write(results, options.output_dir):
        console.print(f"wrote {path}", highlight=False)
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
