import os
import re

import pytest

from hap import cli
from hap.data import contract as c
from hap.data import simulator, writer


def test_simulate_then_validate(tmp_path, capsys):
    out = str(tmp_path / "d")
    assert cli.main(["data", "simulate", "--out", out, "--requests", "20", "--funnel-requests", "1",
                     "--format", "tfrecord", "--quiet"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == sorted([c.FEATURES_FILE, c.FUNNEL_DIR, c.SAMPLES_DIR, simulator.RECORD_FILE])
    assert all(name.endswith(".tfrecord.gz") for name in os.listdir(os.path.join(out, c.SAMPLES_DIR)))
    assert cli.main(["data", "validate", out]) == 0
    assert "OK:" in capsys.readouterr().out


def test_simulate_refuses_to_overwrite_without_the_flag(tmp_path, capsys):
    out = tmp_path / "d"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli.main(["data", "simulate", "--out", str(out), "--requests", "5", "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert os.listdir(out) == ["keep.txt"]
    assert cli.main(["data", "simulate", "--out", str(out), "--requests", "5", "--funnel-requests", "0",
                     "--quiet", "--overwrite"]) == 0
    assert sorted(os.listdir(out)) == sorted([c.FEATURES_FILE, c.SAMPLES_DIR, simulator.RECORD_FILE])


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    out = tmp_path / "d"
    with pytest.raises(RuntimeError):
        with writer.atomic_directory(str(out)) as tmp:
            with open(os.path.join(tmp, "half.csv"), "w") as f:
                f.write("request_id\n")
            raise RuntimeError("disk full")
    assert os.listdir(tmp_path) == []


def test_a_failed_overwrite_keeps_the_old_dataset(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "old.csv").write_text("x")
    with pytest.raises(RuntimeError):
        with writer.atomic_directory(str(out), overwrite=True):
            raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == ["d"] and os.listdir(out) == ["old.csv"]


@pytest.mark.parametrize("floors, message", [
    ("{light", r"--auc-floors: not JSON"),
    ('{"medium": {"EN": 0.5}}', r"unknown setting 'medium'"),
    ('{"heavy": {"EP": 0.5}}', r"auc_floors needs one floor for each contrast of the heavy model.*'EP'"),
    ('{"light": {"EN": 1.5}}', r"auc_floors.EN must be a number in \[0, 1\], got 1.5"),
])
def test_run_refuses_bad_auc_floors_before_running(tmp_path, capsys, floors, message):
    assert cli.main(["run", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
                     "--auc-floors", floors]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_the_demo_runs_the_pipeline_with_hap_runs_defaults(tmp_path, monkeypatch):
    from hap import settings

    monkeypatch.delenv("HAP_CONFIG", raising=False)
    monkeypatch.delenv("HAP_SET", raising=False)
    parser = cli.build_parser()
    demo = cli._settings(parser.parse_args(["demo", "--out", str(tmp_path)])).settings
    run = cli._settings(parser.parse_args(["run", "--data", "d", "--out", "o"])).settings
    assert demo == run == settings.defaults()
    assert demo.data.window_days is None and demo.warm_start is False and demo.drift.accept is False


def test_run_takes_every_loss_of_the_loss_module_and_names_a_wrong_one(tiny_csv, tmp_path, capsys):
    from hap.models import losses
    from hap.pipeline import local_runner

    assert "ghcl_pcgrad" in losses.LOSS_NAMES
    args = cli.build_parser().parse_args(["run", "--data", tiny_csv, "--out", str(tmp_path / "run"),
                                          "--light-loss", "ghcl_pcgrad"])
    pipeline = local_runner.build(tiny_csv, str(tmp_path / "run"), cli._settings(args).settings)
    trainer = next(node for node in pipeline.components if node.id == "Trainer_light")
    assert '"loss": "ghcl_pcgrad"' in trainer.exec_properties["custom_config"]
    assert cli.main(["run", "--data", tiny_csv, "--out", str(tmp_path / "bad"), "--light-loss", "ghcl_fast"]) == 2
    err = capsys.readouterr().err
    assert "ghcl_fast" in err and "ghcl_pcgrad" in err
    assert not os.path.exists(tmp_path / "bad" / "pipeline_root")
