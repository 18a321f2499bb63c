"""The local serving pointer: ``artifacts/current`` names the run the API serves, and the API
reports that run's registry version, alias and run id (real files and symlinks, no mocks)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from api_support import api_client, make_run, point, row, sample
from calapi.errors import ModelError
from calapi.model.runrecord import RunInfo, read_run
from calapi.serving.sources import LocalSource, run_identity


@pytest.fixture
def artifacts(trained_model_dir: Path, tmp_path: Path) -> Path:
    """An artifacts folder with runs a (calories/1) and b (calories/2), current -> runs/b."""
    root = tmp_path / "artifacts"
    make_run(root, trained_model_dir, "a", "1")
    make_run(root, trained_model_dir, "b", "2")
    point(root, "b")
    return root


def test_pointer_run_is_served_with_its_registry_version(artifacts: Path) -> None:
    """current -> runs/b: the model, card and run.json of run b; version calories/2."""
    model = LocalSource(artifacts).load()
    assert (model.version, model.alias, model.run_id) == ("calories/2", "current", "b")
    assert model.source == str((artifacts / "runs" / "b" / "model.skops").resolve())
    assert model.card is not None
    assert model.card_note is None
    assert os.readlink(artifacts / "current") == str(Path("runs") / "b")


def test_switching_the_pointer_changes_the_signature_and_the_next_load(artifacts: Path) -> None:
    """Same model bytes in both runs: only the resolved target tells the switch apart."""
    source = LocalSource(artifacts)
    before = source.signature()
    assert source.signature() == before
    point(artifacts, "a")
    assert source.signature() != before
    model = source.load()
    assert (model.version, model.run_id) == ("calories/1", "a")


def test_one_load_reads_a_single_run_folder(artifacts: Path) -> None:
    """The pointer is resolved once: every file a load reads is in the same run folder."""
    folder = LocalSource(artifacts).run_folder()
    point(artifacts, "a")
    target = (artifacts / "runs" / "b").resolve()
    assert folder.target == target
    assert folder.model_path.parent == folder.card_path.parent == target
    assert folder.run is not None
    assert folder.run.run_id == "b"


def test_a_rewritten_model_in_the_same_run_changes_the_signature(
    artifacts: Path, trained_model_dir: Path
) -> None:
    """The files' stats count too, not only where the pointer leads."""
    source = LocalSource(artifacts)
    before = source.signature()
    model = artifacts / "runs" / "b" / "model.skops"
    model.unlink()
    shutil.copy(trained_model_dir / "model.skops", model)
    assert source.signature() != before


def test_a_dangling_pointer_names_itself_and_the_way_out(artifacts: Path) -> None:
    """current -> a removed run: one sentence naming the pointer, promote and rollback."""
    point(artifacts, "gone")
    source = LocalSource(artifacts)
    assert source.signature() is not None  # checking never raises; loading says why
    with pytest.raises(ModelError) as error:
        source.load()
    message = str(error.value)
    assert str(artifacts / "current") in message
    assert "calops promote" in message
    assert "calops rollback" in message


def test_a_pointer_that_is_a_plain_folder_is_served(artifacts: Path) -> None:
    """``current`` may be a real folder (a filesystem without symlinks)."""
    (artifacts / "current").unlink()
    shutil.copytree(artifacts / "runs" / "a", artifacts / "current")
    model = LocalSource(artifacts).load()
    assert (model.version, model.alias, model.run_id) == ("calories/1", "current", "a")


def test_run_json_names_the_model_file(artifacts: Path) -> None:
    """run.json's model_file picks the file served in the run folder."""
    folder = artifacts / "runs" / "b"
    (folder / "model.skops").rename(folder / "calories.skops")
    run = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps({**run, "model_file": "calories.skops"}))
    model = LocalSource(artifacts).load()
    assert model.source.endswith("calories.skops")
    assert model.version == "calories/2"


def test_a_corrupt_run_json_falls_back_to_the_sha256(
    artifacts: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An unreadable run.json costs the registry version, never the serving model."""
    (artifacts / "runs" / "b" / "run.json").write_text("{not json", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="calapi"):
        model = LocalSource(artifacts).load()
    assert model.version == model.sha256[:12]
    assert (model.alias, model.run_id) == ("current", None)
    assert "unreadable" in caplog.text


def test_run_records_that_cannot_name_the_version() -> None:
    """A record of another model, or one without a registry version, gives the sha256 prefix."""
    sha = "c" * 64
    assert run_identity(None, sha) == (sha[:12], None, None)

    def record(**raw: object) -> RunInfo:
        return RunInfo.from_json(dict(raw))

    other = run_identity(record(sha256="d" * 64, model_name="calories", version="2"), sha)
    assert other[:2] == (sha[:12], None)
    assert other[2] is not None
    assert run_identity(record(run_id="r1", version=None), sha) == (sha[:12], "r1", None)
    assert run_identity(record(model_name="calories", version=3), sha)[0] == "calories/3"


def test_read_run_explains_what_it_ignores(tmp_path: Path) -> None:
    """Missing, unreadable and non-object records each come back as None and a reason."""
    (tmp_path / "list.json").write_text("[1, 2]")
    for name in ("missing.json", "list.json"):
        run, note = read_run(tmp_path / name)
        assert run is None
        assert note is not None


def test_the_legacy_folder_and_a_model_file_are_unchanged(trained_model_dir: Path) -> None:
    """No ``current``: model.skops in the folder, versioned by its sha256, no alias."""
    for path in (trained_model_dir, trained_model_dir / "model.skops"):
        model = LocalSource(path).load()
        assert model.version == model.sha256[:12]
        assert (model.alias, model.run_id) == (None, None)
        assert model.source == str(trained_model_dir / "model.skops")
        assert model.card is not None


def test_an_empty_folder_mentions_the_pointer(tmp_path: Path) -> None:
    """Neither a pointer nor a model: the message names both and how to get one."""
    with pytest.raises(ModelError) as error:
        LocalSource(tmp_path).load()
    message = str(error.value)
    assert f"no {tmp_path / 'current'} and no model.skops" in message
    assert "calops train" in message


@pytest.mark.anyio
async def test_info_and_metrics_name_the_run_behind_the_pointer(artifacts: Path) -> None:
    """/info shows alias and run id; app_model_info carries the registry version and alias."""
    async with api_client(artifacts) as client:
        model = (await client.get("/info")).json()["model"]
        predict = await client.post("/predict", json=row())
        text = (await client.get("/metrics")).text
    assert (model["version"], model["alias"], model["run_id"]) == ("calories/2", "current", "b")
    assert predict.json()["model_version"] == "calories/2"
    (info,) = [
        metric.labels
        for family in text_string_to_metric_families(text)
        for metric in family.samples
        if metric.name == "app_model_info"
    ]
    assert (info["version"], info["alias"]) == ("calories/2", "current")


@pytest.mark.anyio
async def test_a_pointer_switch_is_picked_up_while_serving(artifacts: Path) -> None:
    """Promotion while the API runs: the watcher serves the other run, one series remains."""
    async with api_client(artifacts, reload_interval_seconds=0.05) as client:
        assert (await client.get("/info")).json()["model"]["version"] == "calories/2"
        point(artifacts, "a")
        model: dict[str, Any] = {}
        for _ in range(200):
            model = (await client.get("/info")).json()["model"]
            if model["version"] == "calories/1":
                break
            await asyncio.sleep(0.05)
        predict = await client.post("/predict", json=row())
        registry = client.registry  # type: ignore[attr-defined]
    assert (model["version"], model["run_id"]) == ("calories/1", "a")
    assert predict.json()["model_version"] == "calories/1"
    sha = model["sha256"][:12]
    served = str((artifacts / "runs" / "a" / "model.skops").resolve())
    old = str((artifacts / "runs" / "b" / "model.skops").resolve())
    assert sample(registry, "app_model_info", version="calories/1", alias="current",
                  sha256=sha, source=served) == 1  # fmt: skip
    assert sample(registry, "app_model_info", version="calories/2", alias="current",
                  sha256=sha, source=old) == 0  # fmt: skip
    assert sample(registry, "app_model_reloads_total", result="loaded") >= 1
