"""`kdtune export`: the shared ASHA sweep's best student as ONNX and as a torch.export program,
loaded back by onnxruntime and ``torch.export.load`` and compared with the student rebuilt
from its MLflow artifact; the sidecar's preprocessing against the raw digits; the model
registry; and the one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kdtune.cli import main
from kdtune.data import load_dataset
from kdtune.data.datasets import _digits_arrays
from kdtune.models import create_model
from kdtune.resolve import config_from_dict
from kdtune.tracking import Tracker

from .conftest import SweepRecord, new_store, sqlite_uri


def best_finished(record: SweepRecord):
    runs = record.tracker().trial_runs(record.name)
    finished = runs[runs["status"] == "FINISHED"]
    return runs, finished.sort_values("metrics.val_accuracy", ascending=False,
                                      kind="stable").iloc[0]


def student_from_mlflow(record: SweepRecord, run_id: str, folder: Path) -> tuple:
    """The student rebuilt straight from its run's ``student.pt`` (not through kdtune export)."""
    path = record.tracker().client.download_artifacts(run_id, "student.pt", str(folder))
    state = torch.load(path, weights_only=True)
    config = config_from_dict(state["config"])
    model = create_model(config.model, 10, (1, 8, 8), **config.model_kwargs())
    model.load_state_dict(state["state_dict"])
    return config, model.eval()


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert out == ""
    assert lines[0].startswith("kdtune export: error: "), lines[0]
    return lines[0]


def test_exported_onnx_and_pt2_give_the_students_logits(asha_sweep: SweepRecord, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    _, best = best_finished(asha_sweep)
    config, student = student_from_mlflow(asha_sweep, best["run_id"], tmp_path / "dl")
    data = load_dataset("digits", split_seed=config.split_seed,
                        val_fraction=config.val_fraction)
    batch = data.x_test[:100]  # test images: the export's own check used validation ones
    with torch.no_grad():
        expected = student(batch).numpy()

    out = tmp_path / "out"
    uri = ["--mlflow-uri", asha_sweep.uri]
    assert main(["export", "asha", "--format", "onnx", "--out", str(out / "s.onnx"), *uri]) == 0
    said = capsys.readouterr().out  # the best by validation, by its readable id
    assert said.startswith(f"exported {best['tags.kdtune.id']} of sweep 'asha' (Ray trial "
                           f"{best['trial_id']}, MLflow run {best['run_id']}) to "
                           f"{(out / 's.onnx').resolve()}; ")
    assert main(["export", "asha", "--format", "pt2", "--out", str(out / "s.pt2"), *uri]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["s.onnx", "s.onnx.json", "s.pt2",
                                                      "s.pt2.json"]

    import onnxruntime

    session = onnxruntime.InferenceSession(str(out / "s.onnx"),
                                           providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "x" and inp.shape[1:] == [1, 8, 8]
    for rows in (batch, batch[:1]):  # the batch dimension is dynamic
        got = session.run(None, {"x": rows.numpy()})[0]
        assert np.abs(got - expected[:len(rows)]).max() <= 1e-5
    program = torch.export.load(str(out / "s.pt2")).module()
    with torch.no_grad():
        for rows in (batch, batch[:3]):
            assert np.abs(program(rows).numpy() - expected[:len(rows)]).max() <= 1e-5

    side = json.loads((out / "s.onnx.json").read_text())
    assert side["trial_id"] == best["trial_id"] and side["run_id"] == best["run_id"]
    assert side["id"] == best["tags.kdtune.id"]
    assert side["model_format"] == "onnx" and side["model_file"] == "s.onnx"
    assert side["input"]["shape"] == ["batch", 1, 8, 8] and side["input"]["dtype"] == "float32"
    assert side["config"]["hidden"] == list(config.hidden)
    assert side["metrics"]["val_accuracy"] == pytest.approx(best["metrics.val_accuracy"])
    for metric in ("latency_ms_b256", "latency_ms_b256_iqr"):  # each figure with its spread
        assert side["metrics"][metric] == pytest.approx(best[f"metrics.{metric}"])
    assert side["check"]["max_abs_logit_diff"] <= 1e-5
    # The recorded preprocessing turns raw digits into exactly the tensors the student saw.
    pre = side["preprocessing"]
    raw, _ = _digits_arrays()
    mean = torch.tensor(pre["mean"], dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(pre["std"], dtype=torch.float64).view(1, -1, 1, 1)
    normalised = ((raw.double() / pre["scale"] - mean) / std).float().flatten(1)
    for image in batch[:20].flatten(1):
        assert (normalised - image).abs().amax(1).min() <= 1e-5
    fingerprint = json.loads((out / "s.pt2.json").read_text())["teacher_fingerprint"]
    assert fingerprint and fingerprint in config.teacher  # teacher-mlp-<fingerprint>.pt


def test_register_adds_a_tagged_model_version(asha_sweep: SweepRecord, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    _, best = best_finished(asha_sweep)
    out = tmp_path / "student.pt2"
    assert main(["export", "asha", "--format", "pt2", "--out", str(out), "--register",
                 "asha-student", "--mlflow-uri", asha_sweep.uri]) == 0
    assert "registered as model 'asha-student' version" in capsys.readouterr().out
    client = asha_sweep.tracker().client
    (version,) = client.search_model_versions("name = 'asha-student'")
    teacher = torch.load(client.get_run(best["run_id"]).data.params["teacher"],
                         weights_only=True)
    assert version.run_id == best["run_id"]
    assert version.tags == {"kdtune.sweep": "asha", "kdtune.trial_id": best["trial_id"],
                            "kdtune.id": best["tags.kdtune.id"],
                            "kdtune.teacher_fingerprint": teacher["fingerprint"],
                            "kdtune.format": "pt2"}
    logged = {f.path for f in client.list_artifacts(best["run_id"], "export/pt2")}
    assert logged == {"export/pt2/student.pt2", "export/pt2/student.pt2.json"}
    folder = client.download_artifacts(best["run_id"], "export/pt2", str(tmp_path / "dl"))
    assert (Path(folder) / "student.pt2").read_bytes() == out.read_bytes()


def test_bad_format_trial_or_out_is_one_line(asha_sweep: SweepRecord, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    runs, best = best_finished(asha_sweep)
    others = runs[runs["run_id"] != best["run_id"]]
    out = tmp_path / "out"
    base = ["export", "asha", "--mlflow-uri", asha_sweep.uri]

    assert main([*base, "--format", "tflite", "--out", str(out / "s.tflite")]) == 2
    line = one_error_line(capsys)
    assert "'tflite'" in line and "onnx" in line and "pt2" in line
    assert main([*base, "--format", "pt2", "--out", str(out / "s.onnx")]) == 2
    assert ".pt2" in one_error_line(capsys)
    assert main([*base, "--format", "onnx", "--out", str(out / "s.onnx"), "--trial",
                 "nosuch"]) == 2
    line = one_error_line(capsys)
    assert "'nosuch'" in line and "a readable id such as asha#3" in line
    assert f"its runs: {runs['tags.kdtune.id'].iloc[0]}, " in line
    other = str(others["trial_id"].iloc[0])
    assert main([*base, "--format", "onnx", "--out", str(out / "s.onnx"), "--trial",
                 other]) == 2
    line = one_error_line(capsys)
    assert f"trial '{other}'" in line and "only trials with saved weights can be exported" \
        in line and line.endswith(f": {best['tags.kdtune.id']}")
    assert main(["export", "ahsa", "--format", "onnx", "--out", str(out / "s.onnx"),
                 "--mlflow-uri", asha_sweep.uri]) == 2
    assert "did you mean 'asha'" in one_error_line(capsys)
    assert not out.exists()  # nothing written, not even the folder's temporary files

    # --trial with the best trial's readable id, or its MLflow run id, exports it
    for trial in (best["tags.kdtune.id"], best["run_id"]):
        assert main([*base, "--format", "onnx", "--out", str(out / "s.onnx"), "--trial",
                     trial]) == 0
        assert capsys.readouterr().out.startswith(f"exported {best['tags.kdtune.id']} of ")
        assert sorted(p.name for p in out.iterdir()) == ["s.onnx", "s.onnx.json"]


def test_a_sweep_without_a_trained_student_is_one_line(tmp_path: Path, mlflow_template: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    """A real MLflow store holding a sweep whose one trial ended without saving weights."""
    store = new_store(tmp_path / "store", mlflow_template)
    tracker = Tracker(sqlite_uri(store))
    parent = tracker.start_sweep("unsaved", params={"objective.metrics": "val_accuracy",
                                                    "objective.modes": "max"})
    run = tracker.start_trial(parent, "t0001", params={"method": "none", "hidden": [8]})
    tracker.end_trial(run, "FINISHED", metrics={"val_accuracy": 0.5})
    out = tmp_path / "out"
    assert main(["export", "unsaved", "--format", "onnx", "--out", str(out / "s.onnx"),
                 "--mlflow-uri", sqlite_uri(store)]) == 2
    line = one_error_line(capsys)
    assert "sweep 'unsaved' has no trained student" in line
    assert main(["export", "unsaved", "--format", "pt2", "--out", str(out / "s.pt2"),
                 "--trial", "t0001", "--mlflow-uri", sqlite_uri(store)]) == 2
    assert "none of its trials saved weights" in one_error_line(capsys)
    assert not out.exists()
