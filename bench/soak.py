"""``nox -s soak``: the API's memory under steady traffic with feedback, minutes long.

Serves a freshly trained model (one uvicorn process, the prediction log in a temporary
SQLite file), drives it with ``calops simulate`` at a fixed rate with most rows answered,
samples the API's resident memory every few seconds and prints it against the first sample
after warm-up. The target: RSS flat within ±10 % once warm.

    python bench/soak.py [--minutes 10] [--rps 200] [--feedback-fraction 0.9]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from bench import model, payloads, servers  # noqa: E402

WARMUP_SECONDS = 120.0  # drift windows and the feedback backlog fill in the first minutes
SAMPLE_SECONDS = 5.0
TOLERANCE = 0.10
MIN_SAMPLES = 2


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rps", type=float, default=200.0)
    parser.add_argument("--feedback-fraction", type=float, default=0.9)
    parser.add_argument("--feedback-delay", type=float, default=5.0)
    parser.add_argument("--config", type=Path, default=ROOT / "config.yaml")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    seconds = options.minutes * 60
    with tempfile.TemporaryDirectory(prefix="calops-soak-") as scratch:
        folder = Path(scratch)
        print("· training the model")
        trained = model.train(options.config, folder / "artifacts")
        port = servers.free_port()
        log = folder / "predictions.db"
        spec = servers.ServerSpec(
            "calapi",
            servers.uvicorn_argv("calapi.serving.app:create_app", port, app_dir=ROOT),
            port, "/readyz", "/predict", payloads.single_body(),
            env={"CALOPS_MODEL": str(trained.artifacts), "CALOPS_PREDICTION_LOG": str(log)},
        )  # fmt: skip
        with servers.serving(spec, folder / "api.log") as pgid:
            samples, summary = _drive(options, spec.base_url, pgid, seconds)
            log_bytes = sum(p.stat().st_size for p in folder.glob("predictions.db*"))
    return _report(options, samples, summary, log_bytes)


def _drive(
    options: argparse.Namespace, url: str, pgid: int, seconds: float
) -> tuple[list[tuple[float, int]], dict[str, object]]:
    """Run the simulator for ``seconds``; (seconds in, RSS bytes) every few seconds."""
    calops = str(Path(sys.executable).with_name("calops"))
    argv = [calops, "simulate", "--url", url, "--rps", str(options.rps),
            "--duration", str(seconds), "--feedback-fraction", str(options.feedback_fraction),
            "--feedback-delay", str(options.feedback_delay), "--json"]  # fmt: skip
    answered = f"{options.feedback_fraction:.0%} answered after {options.feedback_delay:g} s"
    print(f"· {options.minutes:g} min at {options.rps:g} req/s, {answered}")
    started = time.monotonic()
    samples: list[tuple[float, int]] = []
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as traffic:
        while traffic.poll() is None:
            elapsed = time.monotonic() - started
            samples.append((elapsed, servers.group_rss_bytes(pgid)))
            if len(samples) % 12 == 0:
                print(f"  {elapsed / 60:4.1f} min  RSS {samples[-1][1] / 2**20:6.1f} MiB")
            time.sleep(SAMPLE_SECONDS)
        output = traffic.stdout.read() if traffic.stdout else b""
    return samples, json.loads(output or b"{}")


def _report(
    options: argparse.Namespace, samples: list[tuple[float, int]], summary: dict[str, object],
    log_bytes: int,
) -> int:  # fmt: skip
    warm = [rss for elapsed, rss in samples if elapsed >= WARMUP_SECONDS]
    if len(warm) < MIN_SAMPLES:
        print("The run was too short to measure after warm-up; use --minutes 5 or more.")
        return 1
    base = warm[0]
    low, high = min(warm) / base, max(warm) / base
    last = warm[-1] / base
    verdict = "PASS" if low >= 1 - TOLERANCE and high <= 1 + TOLERANCE else "FAIL"
    mib = 2**20
    print(f"simulator: {json.dumps(summary, default=str)[:400]}")
    print(f"RSS after warm-up {base / mib:.1f} MiB; over the rest of the run "
          f"{min(warm) / mib:.1f}..{max(warm) / mib:.1f} MiB "
          f"({low:.3f}x..{high:.3f}x, last {last:.3f}x)")  # fmt: skip
    print(f"prediction log on disk at the end: {log_bytes / mib:.1f} MiB")
    print(f"target: RSS within ±{TOLERANCE:.0%} once warm -> {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
