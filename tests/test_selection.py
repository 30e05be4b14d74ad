import numpy as np
import pytest

from harness.errors import HarnessError
from harness.protocol import Protocol
from harness.selection import select

GT_VAL = Protocol(name="gt-val")


class _Curves:
    def __init__(self, rows):
        self.rows = np.asarray(rows, dtype=float)

    def curves(self, iou):
        return self.rows


def _curves(table):
    """{(split, epoch): rows of per-class accuracy per threshold} -> boxes(split, epoch, target)."""
    def boxes(split, epoch, target):
        assert target == "gt"
        return _Curves(table[(split, epoch)])
    return boxes


def test_epoch_with_best_val_score_and_its_val_threshold():
    table = {
        ("val", 1): [[10, 40, 20], [10, 40, 20]],  # best 40 at tau 1
        ("val", 2): [[50, 60, 10], [70, 30, 10]],  # means 60, 45, 10 -> best 60 at tau 0
        ("test", 2): [[0, 0, 100], [0, 0, 100]],  # test prefers tau 2, must not matter
    }
    sel = select(GT_VAL, [1, 2], _curves(table), 0.5)
    assert sel.epoch == 2
    assert sel.tau_index.tolist() == [0, 0]
    assert sel.epoch_scores == {1: 40.0, 2: 60.0}


def test_ties_go_to_the_earliest_epoch():
    table = {("val", 1): [[30, 50]], ("val", 2): [[50, 30]]}
    assert select(GT_VAL, [2, 1], _curves(table), 0.5).epoch == 1


def test_threshold_from_test_and_per_class_scope():
    proto = Protocol(name="tt", threshold_source="test", threshold_scope="per-class")
    table = {
        ("val", 1): [[50, 10, 0], [0, 10, 50]],  # per-class best: 50 and 50 -> 50
        ("val", 2): [[20, 20, 20], [20, 20, 20]],
        ("test", 1): [[0, 90, 0], [0, 0, 80]],
    }
    sel = select(proto, [1, 2], _curves(table), 0.5)
    assert sel.epoch == 1
    assert sel.tau_index.tolist() == [1, 2]
    assert sel.taus(np.array([0.0, 0.5, 0.9])) == [0.5, 0.9]


def test_selection_on_test_split_can_pick_another_epoch():
    table = {
        ("val", 1): [[60]], ("val", 2): [[40]],
        ("test", 1): [[30]], ("test", 2): [[70]],
    }
    assert select(GT_VAL, [1, 2], _curves(table), 0.5).epoch == 1
    oracle = Protocol(name="bt-tt", selection_split="test", threshold_source="test")
    assert select(oracle, [1, 2], _curves(table), 0.5).epoch == 2


def test_no_epoch_is_an_error():
    with pytest.raises(HarnessError, match="no trained epoch"):
        select(GT_VAL, [], _curves({}), 0.5)


def test_protocol_from_config_validates_keys_and_values():
    p = Protocol.from_config({"name": "x", "threshold_scope": "per-class", "aliases": ["y"]})
    assert p.aliases == ("y",) and p.to_dict()["aliases"] == ["y"]
    assert Protocol.from_config({"name": "x", "supervision": "pseudo:clip"}).supervision == "pseudo:clip"
    with pytest.raises(HarnessError, match="unknown protocol key.*threshold_scop"):
        Protocol.from_config({"name": "x", "threshold_scop": "global"})
    with pytest.raises(HarnessError, match="threshold_scope='per-image'"):
        Protocol.from_config({"name": "x", "threshold_scope": "per-image"})
    with pytest.raises(HarnessError, match="pseudo:<annotator>"):
        Protocol.from_config({"name": "x", "supervision": "pseudo:"})
    with pytest.raises(HarnessError, match="needs a `name`"):
        Protocol.from_config({})


def test_user_protocol_file(tmp_path):
    from harness import runner

    f = tmp_path / "my_protocol.py"
    f.write_text("protocol = dict(name='mine', threshold_scope='per-class')\n")
    assert runner._protocol_layer(str(f)) == {"protocol": {"name": "mine", "threshold_scope": "per-class"}}
    g = tmp_path / "empty.py"
    g.write_text("x = 1\n")
    with pytest.raises(HarnessError, match="defines no"):
        runner._protocol_layer(str(g))
