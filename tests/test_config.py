import pytest
from mmengine.config import Config

from harness import config as config_mod
from harness.errors import HarnessError
from harness.registry import registry


def _compose(overrides=None, dataset="synth-yto"):
    reg = registry()
    return config_mod.compose(
        reg.get("method", "cam").config,
        reg.get("protocol", "gt-val").config,
        reg.get("dataset", dataset).config,
        overrides,
    )


def test_layers_merge_in_order(tmp_path):
    plugin = tmp_path / "plugin.py"
    plugin.write_text("method = dict(name='x', k=1)\nclassifier = dict(lr=0.5)\neval = dict(iou_threshold=0.3)\n")
    protocol = tmp_path / "protocol.py"
    protocol.write_text("protocol = dict(name='p')\neval = dict(iou_threshold=0.4)\n")
    dataset = {"data": {"name": "d", "a": 1}, "eval": {"iou_threshold": 0.6}}
    cfg = config_mod.compose(plugin, protocol, dataset, {"classifier.lr": 0.25})
    assert cfg.method.k == 1
    assert cfg.classifier.lr == 0.25  # CLI beats plugin
    assert cfg.classifier.epochs == Config.fromfile(str(config_mod.BASE_CONFIG)).classifier.epochs  # base kept
    assert cfg.eval.iou_threshold == 0.6  # dataset beats protocol beats plugin
    assert cfg.protocol.name == "p" and cfg.data.a == 1


def test_data_section_is_replaced_not_merged():
    base = {"data": {"name": "a", "only_in_a": 1}}
    merged = config_mod.merge(base, {"data": {"name": "b"}})
    assert merged["data"] == {"name": "b"}


def test_unknown_key_names_it_and_lists_valid_ones():
    with pytest.raises(HarnessError) as e:
        _compose({"classifier.lrr": 0.1})
    msg = str(e.value)
    assert "classifier.lrr" in msg and "lr" in msg and "epochs" in msg


def test_unknown_top_level_section():
    with pytest.raises(HarnessError, match="no 'nope' under the top level"):
        _compose({"nope.x": 1})


@pytest.mark.parametrize(
    "key,value",
    [("classifier.epochs", "ten"), ("classifier.lr", "fast"), ("eval.multi_contour", 1), ("classifier.epochs", 2.5)],
)
def test_wrong_type_is_an_error(key, value):
    with pytest.raises(HarnessError, match=key.replace(".", r"\.") + ".*expects"):
        _compose({key: value})


def test_int_accepted_for_float_and_none_accepts_anything():
    cfg = _compose({"classifier.lr": 1, "classifier.pretrained": "/some/path.pth"})
    assert cfg.classifier.lr == 1


def test_component_names_need_their_flags():
    with pytest.raises(HarnessError, match="--plugin"):
        _compose({"method.name": "other"})


def test_dump_and_reload_round_trip(tmp_path):
    cfg = _compose({"classifier.epochs": 3})
    (tmp_path / "config.py").write_text(config_mod.dump_text(cfg))
    again = config_mod.load_run_config(tmp_path)
    assert again.to_dict() == cfg.to_dict()


def test_missing_run_config_is_a_clear_error(tmp_path):
    with pytest.raises(HarnessError, match="not a run directory"):
        config_mod.load_run_config(tmp_path)


def test_experiment_files_layer_before_the_command_line(tmp_path):
    from harness import runner

    f = tmp_path / "exp.py"
    f.write_text("classifier = dict(lr=0.2, epochs=7, augment=dict(hflip=False))\n")
    run_dir = runner.prepare("cam", "gt-val", "synth-yto", {"classifier.epochs": 3}, tmp_path / "runs",
                             config_files=[f])
    cfg = config_mod.load_run_config(run_dir)
    assert cfg.classifier.lr == 0.2 and cfg.classifier.augment.hflip is False
    assert cfg.classifier.epochs == 3  # the command line wins


def test_experiment_file_errors_name_the_file(tmp_path):
    from harness import runner

    f = tmp_path / "bad.py"
    f.write_text("classifier = dict(lrr=0.2)\n")
    with pytest.raises(HarnessError, match=r"bad\.py.*classifier\.lrr"):
        runner.prepare("cam", "gt-val", "synth-yto", {}, tmp_path / "runs", config_files=[f])
    with pytest.raises(HarnessError, match="colocam_ytov1_classifier"):
        runner.prepare("cam", "gt-val", "synth-yto", {}, tmp_path / "runs", config_files=["nope"])


def test_shipped_paper_configs_are_valid(tmp_path):
    from harness import runner

    for name in ("colocam_ytov1_classifier", "fcam_cub_cam_baseline"):
        cfg = runner.compose("cam", "gt-val", "synth-yto", config_files=[name])
        assert cfg.classifier.backbone == "resnet50.tv_in1k-wsol"
        # ImageNet weights cannot be had offline: the run is refused before its directory exists
        with pytest.raises(HarnessError, match="resnet50.tv_in1k.*not cached"):
            runner.prepare("cam", "gt-val", "synth-yto", {}, tmp_path / "runs", config_files=[name])
        assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_yaml_and_json_config_files_are_data_never_code(tmp_path):
    """mmengine's YAML loader builds Python objects from `!!python/...` tags; the harness reads
    YAML with yaml.safe_load, so a crafted file is refused instead of run."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f'protocol: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(HarnessError, match="cannot read config file .*evil.yaml"):
        config_mod.read_file(evil)
    assert not marker.exists()
    good = tmp_path / "p.yaml"
    good.write_text("protocol:\n  name: from-yaml\n  supervision: gt\n")
    assert config_mod.read_file(good) == {"protocol": {"name": "from-yaml", "supervision": "gt"}}
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(HarnessError, match="holds a list, not a mapping"):
        config_mod.read_file(listed)
