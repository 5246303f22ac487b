"""The settings tree (hap/settings.py): hap/defaults.yaml is the only place a default lives, every
source applies in its order and is reported, and a bad key or value is refused with its name, the
nearest valid keys, the value and what is allowed."""
import json
import os

import pytest
import yaml

from hap import settings, tree
from hap.models.trainer_module import TrainerSettings
from hap.serving.cascade import CascadeSettings
from hap.serving.routing import RoutingPolicy

NO_ENV = {}


def test_the_defaults_file_is_the_tree_and_nothing_else():
    """Every key of hap/defaults.yaml is a setting and every setting has its default there: the
    tree made of the file alone, written back, is the file."""
    assert tree.to_plain(settings.defaults()) == tree.defaults_tree()


def test_classes_take_their_defaults_from_the_file():
    raw = tree.defaults_tree()
    assert tree.to_plain(TrainerSettings()) == raw["light"]["trainer"]
    assert tree.to_plain(RoutingPolicy()) == raw["cascade"]["routing"]
    assert tree.to_plain(CascadeSettings()) == raw["cascade"]
    # The heavy trainer shares the light one's defaults except where the file says otherwise.
    heavy = settings.defaults().heavy.trainer
    assert heavy.model == "heavy" and heavy.model_config == raw["heavy"]["trainer"]["model_config"]
    assert heavy.learning_rate == settings.defaults().light.trainer.learning_rate


def test_sources_apply_in_order_and_each_value_says_where_it_came_from(tmp_path):
    config = tmp_path / "team.yaml"
    config.write_text(yaml.safe_dump({"cascade": {"routing": {"fraction": 0.2, "cutoff": 50}},
                                      "light": {"trainer": {"loss": "mixed_bce"}}}))
    env = {"HAP_SET": "cascade.routing.fraction=0.25 data.window_days=7"}
    loaded = settings.load(str(config), ["cascade.routing.fraction=0.3"], env=env,
                           options=[("warm_start", True, "--warm-start")])
    s = loaded.settings
    assert (s.cascade.routing.fraction, s.cascade.routing.cutoff, s.data.window_days) == (0.3, 50, 7)
    assert s.light.trainer.loss == "mixed_bce" and s.warm_start is True
    assert loaded.source_of("cascade.routing.fraction") == "--set"
    assert loaded.source_of("cascade.routing.cutoff") == f"file {config}"
    assert loaded.source_of("data.window_days") == "environment (HAP_SET)"
    assert loaded.source_of("warm_start") == "--warm-start"
    assert loaded.source_of("cascade.k_out") == "default"
    lines = {line.split(":", 1)[0]: line for line in settings.show_lines(loaded)}
    assert set(lines) == set(settings.all_keys())
    assert lines["cascade.routing.fraction"].startswith("cascade.routing.fraction: 0.3 ")
    assert lines["cascade.routing.fraction"].endswith("# --set")
    assert lines["cascade.routing.cutoff"].endswith(f"# file {config}")
    assert lines["cascade.k_out"].endswith("# default")


def test_hap_config_names_a_settings_file_for_the_airflow_dag(tmp_path):
    config = tmp_path / "airflow.yaml"
    config.write_text("airflow:\n  schedule: '0 3 * * *'\n")
    loaded = settings.load(env={"HAP_CONFIG": str(config)})
    assert loaded.settings.airflow.schedule == "0 3 * * *"
    assert loaded.source_of("airflow.schedule") == f"environment (HAP_CONFIG={config})"
    # --config wins over the environment's file.
    other = tmp_path / "other.yaml"
    other.write_text("airflow: {schedule: '@hourly'}\n")
    assert settings.load(str(other), env={"HAP_CONFIG": str(config)}).settings.airflow.schedule == "@hourly"


def test_mappings_merge_and_an_empty_one_replaces():
    s = settings.load(sets=["heavy.trainer.model_config.embedding_dim=4"], env=NO_ENV).settings
    assert s.heavy.trainer.model_config == {**settings.defaults().heavy.trainer.model_config, "embedding_dim": 4}
    s = settings.load(sets=["heavy.trainer.model_config={}", "drift.comparators={}"], env=NO_ENV).settings
    assert s.heavy.trainer.model_config == {} and s.drift.comparators == {}
    loaded = settings.load(sets=["light.auc_floors.EN=0.5", "light.trainer.model_config.embedding_dim=4"], env=NO_ENV)
    s = loaded.settings
    assert s.light.auc_floors == {**settings.defaults().light.auc_floors, "EN": 0.5}
    # The file shares the floors and the trainer between the models (YAML anchors), not the values.
    assert s.heavy.auc_floors == settings.defaults().heavy.auc_floors and loaded.source_of("heavy.auc_floors") == "default"
    assert s.heavy.trainer.model_config == settings.defaults().heavy.trainer.model_config


@pytest.mark.parametrize("pair, message", [
    ("cascade.routing.fractoin=0.3",
     "unknown setting 'cascade.routing.fractoin'; did you mean cascade.routing.fraction"),
    ("cascade.fraction=0.3", "unknown setting 'cascade.fraction'; did you mean cascade.routing.fraction"),
    ("lite.trainer.loss=ghcl", "unknown setting 'lite'; did you mean light"),
    ("light.trainer.max_epochs=ten", "setting light.trainer.max_epochs: 'ten' is not an integer"),
    ("light.trainer.max_epochs=0", "setting light.trainer: max_epochs must be an integer >= 1, got 0"),
    ("warm_start=maybe", "setting warm_start: 'maybe' is not true or false"),
    ("data.window_days=[1]", "setting data.window_days: [1] is not an integer or null"),
    ("cascade.routing.fraction=1.5", "route fraction must be in (0, 1], got 1.5"),
    ("cascade.routing.kind=random", "routing policy must be one of ('top_k', 'band', 'adaptive', 'learned', "
                                    "'light_only')"),
    ("light.trainer.loss=ghcl_fast", "loss must be one of"),
    ("light.auc_floors.EN=2", "auc_floors.EN must be a number in [0, 1], got 2.0"),
    ("drift.comparators.click.comparator=l2", "comparator must be one of ('infinity_norm', "),
    ("metadata.backend=postgres", "backend must be one of ('sqlite', 'mysql'), got 'postgres'"),
    ("serving.port=70000", "port must be a port number (0-65535), got 70000"),
    ("light.trainer.model=heavy", "light.trainer.model must be 'light', got 'heavy'"),
    ("heavy.trainer.model_config.depth=3", "unknown heavy model hyper-parameter(s) ['depth']"),
    ("fraction", "'fraction' is not KEY=VALUE"),
])
def test_a_bad_key_or_value_is_refused_naming_it(pair, message):
    with pytest.raises(settings.SettingsError) as raised:
        settings.load(sets=[pair], env=NO_ENV)
    assert message in str(raised.value)


def test_a_bad_settings_file_names_the_file_and_the_key(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("cascade:\n  routng: {fraction: 0.3}\n")
    with pytest.raises(settings.SettingsError, match=rf"file {config}: unknown setting 'cascade.routng'; "
                                                     "did you mean cascade.routing"):
        settings.load(str(config), env=NO_ENV)
    config.write_text("- a list\n")
    with pytest.raises(settings.SettingsError, match="expected a mapping of settings"):
        settings.load(str(config), env=NO_ENV)
    with pytest.raises(settings.SettingsError, match="no such file"):
        settings.load(str(tmp_path / "missing.yaml"), env=NO_ENV)


def test_the_tree_round_trips_through_json_as_components_receive_it():
    s = settings.load(sets=["cascade.routing.fraction=0.3", "data.window_days=2"], env=NO_ENV).settings
    assert settings.HapSettings.from_json(s.to_json()) == s
    assert tree.parse(CascadeSettings, json.loads(json.dumps(tree.to_plain(s.cascade))), "cascade") == s.cascade


def test_override_checks_as_load_does():
    s = settings.override(settings.defaults(), {"light.trainer.max_epochs": 2})
    assert s.light.trainer.max_epochs == 2 and s.heavy.trainer.max_epochs == settings.defaults().heavy.trainer.max_epochs
    with pytest.raises(settings.SettingsError, match="did you mean light.trainer.max_epochs"):
        settings.override(settings.defaults(), {"light.trainer.max_epoch": 2})


def test_every_key_has_a_meaning_in_the_reference():
    reference = settings.reference_markdown()
    rows = [line for line in reference.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == settings.all_keys()
    missing = [row.split("`")[1] for row in rows if row.rstrip().endswith("|  |")]
    assert missing == [], f"keys without a comment in hap/defaults.yaml: {missing}"


def test_the_settings_reference_is_generated_from_the_tree():
    with open(settings.REFERENCE, encoding="utf-8") as f:
        assert f.read() == settings.reference_markdown(), \
            "docs/settings.md is stale: run `.venv/bin/python -m hap.settings --reference`"


def test_no_front_end_writes_a_default_of_its_own():
    """The literals the old configs module held are gone; what reads them reads the tree."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert not os.path.exists(os.path.join(repo, "pipeline", "configs.py"))
    import inspect

    from hap.pipeline import pipeline

    assert len(inspect.signature(pipeline.create_pipeline).parameters) <= 5


def test_a_routed_share_set_on_the_command_line_is_the_pushed_cascades_own(pipeline_run, e2e_data, e2e_requests,
                                                                          tmp_path):
    """`hap run --set cascade.routing.fraction=0.3` pushes a cascade whose graph routes 30% of each
    request, and which records the whole effective tree and the source commit. The run continues
    the session's pipeline run (its ML Metadata copied), so only the cascade is assembled anew."""
    import math
    import shutil

    import tensorflow as tf

    from conftest import quick_keys
    from hap import cli
    from hap.components.cascade_assembler import executor
    from hap.serving import cascade, model_versions

    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(os.path.join(pipeline_run, "metadata.sqlite"), out / "metadata.sqlite")
    sets = [f"{key}={json.dumps(value)}" for key, value in quick_keys(0.0).items()]
    sets += ["cascade.routing.fraction=0.3", "cascade.tolerance=1"]
    assert cli.main(["run", "--data", e2e_data, "--out", str(out), *(a for s in sets for a in ("--set", s))]) == 0
    version = model_versions.newest_complete_version(str(out / "serving" / "hap"))
    model = tf.saved_model.load(version)
    for request in e2e_requests:
        n = int(tf.shape(request["item_id"])[0])
        routed = model.signatures["cascade"](**request)["routed"]
        assert int(tf.reduce_sum(tf.cast(routed, tf.int32))) == math.ceil(0.3 * n), n
    with open(os.path.join(version, "assets.extra", cascade.INFO_FILE)) as f:
        info = json.load(f)
    assert info["settings"]["routing"]["fraction"] == 0.3
    recorded = settings.HapSettings.from_json(json.dumps(info["hap_settings"]))
    assert recorded.cascade.routing.fraction == 0.3 and recorded.light.trainer.max_epochs == 2
    assert info["source_commit"] == executor.source_commit()
