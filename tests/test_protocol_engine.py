"""The selection engine on constructed box counts where the right choice is known."""
from __future__ import annotations

import re

import numpy as np
import pytest

from harness.errors import HarnessError
from harness.evalstore import split_metrics
from harness.evaluation import BoxAccumulator
from harness.protocol import Protocol, grid
from harness.selection import needs, select, tau_target

THRESHOLDS = np.arange(0, 1, 0.25)  # 4 thresholds
C = 2


def counts(correct_by_class_and_tau, n=10, cls_top1=None, otsu=None) -> BoxAccumulator:
    """An accumulator whose CorLoc@0.5 curve of class c at threshold t is correct[c][t] / n."""
    acc = BoxAccumulator(C, THRESHOLDS, (0.5,))
    correct = np.asarray(correct_by_class_and_tau)
    acc.correct[:, 0, :] = correct
    acc.iou_sum[:] = correct * 0.1  # mean IoU follows CorLoc in these fixtures
    acc.count[:] = n
    acc.cls_count[:] = n
    acc.cls_top1[:] = cls_top1 if cls_top1 is not None else 0
    if otsu is not None:
        acc.otsu_correct[:, 0] = otsu
        acc.otsu_iou_sum[:] = np.asarray(otsu) * 0.1
    return acc


def proto(**kw) -> Protocol:
    base = dict(name="p", supervision="gt", selection_split="val", threshold_source="val", threshold_scope="global")
    return Protocol(**{**base, **kw})


class Store:
    """boxes(split, epoch, target) from a table; records what was read."""

    def __init__(self, table):
        self.table = table
        self.read = []

    def __call__(self, split, epoch, target):
        self.read.append((split, epoch, target))
        return self.table[split, epoch, target]


def two_epoch_store():
    # val prefers epoch 1 (8/10 at tau index 1), test prefers epoch 2.
    return Store({
        ("val", 1, "gt"): counts([[2, 8, 3, 0], [2, 8, 3, 0]], cls_top1=[3, 3], otsu=[5, 5]),
        ("val", 2, "gt"): counts([[2, 4, 6, 0], [2, 4, 6, 0]], cls_top1=[9, 9], otsu=[7, 7]),
        ("test", 1, "gt"): counts([[1, 5, 2, 0], [1, 5, 2, 0]], otsu=[2, 2]),
        ("test", 2, "gt"): counts([[1, 2, 9, 0], [1, 2, 9, 0]], otsu=[6, 6]),
        # pseudo-boxes on val disagree with GT about the best epoch
        ("val", 1, "ann"): counts([[1, 2, 2, 0], [1, 2, 2, 0]]),
        ("val", 2, "ann"): counts([[1, 2, 1, 7], [1, 2, 1, 7]]),
        ("test", 1, "ann"): counts([[9, 0, 0, 0], [9, 0, 0, 0]]),
        ("test", 2, "ann"): counts([[1, 0, 0, 0], [1, 0, 0, 0]]),
    })


def test_best_validation_and_best_test_pick_different_epochs():
    store = two_epoch_store()
    bv = select(proto(), [1, 2], store, 0.5)
    bt = select(proto(selection_split="test", threshold_source="test"), [1, 2], store, 0.5)
    assert (bv.epoch, int(bv.tau_index[0]), bv.score) == (1, 1, 80.0)
    assert (bt.epoch, int(bt.tau_index[0]), bt.score) == (2, 2, 90.0)
    assert bv.epoch_scores == {1: 80.0, 2: 60.0}


def test_test_threshold_is_chosen_on_test_gt_at_the_val_selected_epoch():
    store = two_epoch_store()
    s = select(proto(threshold_source="test"), [1, 2], store, 0.5)
    assert s.epoch == 1 and int(s.tau_index[0]) == 1 and s.tau_target == "gt"
    assert ("test", 1, "gt") in store.read and ("test", 2, "gt") not in store.read


def test_pseudo_box_supervision_selects_on_the_annotator_boxes():
    store = two_epoch_store()
    s = select(proto(supervision="pseudo:ann"), [1, 2], store, 0.5)
    assert s.epoch == 2 and int(s.tau_index[0]) == 3  # what the pseudo-boxes prefer, not GT
    assert s.epoch_target == "ann" and s.tau_target == "ann"
    assert all(t == "ann" for _, _, t in store.read)  # GT never read to select
    # BT with pseudo-boxes scores test against its pseudo-boxes; TT still reads test GT
    s = select(proto(supervision="pseudo:ann", selection_split="test", threshold_source="test"), [1, 2], store, 0.5)
    assert s.epoch == 1 and s.tau_target == "gt" and int(s.tau_index[0]) == 1


def test_class_only_selects_by_classification_and_thresholds_each_map_with_otsu():
    store = two_epoch_store()
    s = select(proto(supervision="cls", threshold_source="otsu"), [1, 2], store, 0.5)
    assert s.epoch == 2 and s.tau_index is None and s.score == 90.0 and s.epoch_target == "cls"
    assert s.taus(THRESHOLDS) is None


def test_otsu_threshold_source_scores_epochs_by_otsu_corloc():
    store = two_epoch_store()
    s = select(proto(threshold_source="otsu"), [1, 2], store, 0.5)
    assert s.epoch == 2 and s.score == 70.0  # epoch 1 has the better best-tau CorLoc (80) but worse Otsu


def test_per_class_and_global_thresholds_differ():
    # class 0 peaks at tau index 0, class 1 at index 2; the mean peaks at index 1.
    acc = counts([[9, 8, 0, 0], [0, 7, 9, 0]])
    store = Store({("val", 1, "gt"): acc, ("test", 1, "gt"): acc})
    g = select(proto(), [1], store, 0.5)
    pc = select(proto(threshold_scope="per-class"), [1], store, 0.5)
    assert g.tau_index.tolist() == [1, 1] and g.score == 75.0
    assert pc.tau_index.tolist() == [0, 2] and pc.score == 90.0


def test_mean_iou_selection_metric():
    acc_a = counts([[9, 0, 0, 0], [9, 0, 0, 0]])
    acc_b = counts([[0, 0, 0, 0], [0, 0, 0, 0]])
    acc_b.iou_sum[:] = 0.0
    acc_b.iou_sum[:, 3] = 9.5  # mean IoU 0.95 at the last threshold, CorLoc 0 everywhere
    store = Store({("val", 1, "gt"): acc_a, ("val", 2, "gt"): acc_b})
    assert select(proto(), [1, 2], store, 0.5).epoch == 1
    s = select(proto(select_metric="mean_iou"), [1, 2], store, 0.5)
    assert s.epoch == 2 and int(s.tau_index[0]) == 3 and s.score == pytest.approx(95.0)


def test_ties_go_to_the_earliest_epoch():
    acc = counts([[5, 5, 0, 0], [5, 5, 0, 0]])
    store = Store({("val", e, "gt"): acc for e in (3, 4, 5)})
    assert select(proto(), [5, 3, 4], store, 0.5).epoch == 3


def test_split_metrics_with_otsu_reads_the_otsu_counts():
    acc = counts([[2, 8, 3, 0], [4, 8, 3, 0]], otsu=[5, 7])
    m = split_metrics({"boxes": acc.state_dict(), "masks": None}, None, 0.5)
    assert m["corloc"] == 60.0 and m["corloc_per_class"] == [50.0, 70.0]
    assert m["box_acc"]["0.5"] == 60.0 and m["mean_iou"] == pytest.approx((0.5 + 0.7) / 20)
    assert m["top1_loc"] is None
    m = split_metrics({"boxes": acc.state_dict(), "masks": None}, np.array([1, 1]), 0.5)
    assert m["corloc"] == 80.0


def test_protocol_axes_are_validated_with_the_fix_named():
    with pytest.raises(HarnessError, match="threshold_source='otsu'"):
        Protocol.from_config(dict(name="x", supervision="cls", threshold_source="val"))
    with pytest.raises(HarnessError, match="threshold_scope must be 'global'"):
        Protocol.from_config(dict(name="x", threshold_source="otsu", threshold_scope="per-class"))
    with pytest.raises(HarnessError, match="supervision='pseudo:' is not one of"):
        Protocol.from_config(dict(name="x", supervision="pseudo:"))
    with pytest.raises(HarnessError, match="unknown protocol key"):
        Protocol.from_config(dict(name="x", threshold="val"))


def test_setting_codes_and_needs():
    assert proto().code == "BV-VT"
    assert proto(supervision="cls", threshold_source="otsu").code == "CL-BV-OT"
    assert proto(selection_split="test", threshold_source="test").code == "BT-TT"
    p = proto(supervision="pseudo:cam-pg", threshold_source="test")
    assert needs(p) == [("val", "cam-pg"), ("test", "gt")]
    assert tau_target(proto(supervision="pseudo:a", selection_split="test", threshold_source="val")) == "a"


def test_grid_has_every_meaningful_cell_once():
    cells = grid(["a", "b"])
    names = [p.name for p in cells]
    assert len(names) == len(set(names))
    # 6 settings for gt and each annotator, 4 for class labels (no threshold from val)
    assert len(cells) == 6 * 3 + 4
    assert {p.code for p in cells if p.supervision == "cls"} == {"CL-BT-TT", "CL-BV-TT", "CL-BT-OT", "CL-BV-OT"}


@pytest.mark.parametrize("key, value, needle", [
    ("supervision", 3, r"protocol 'x': supervision=3 is a int; expected a string, one of gt, cls, pseudo:<annotator>"),
    ("selection_split", None, r"selection_split=None is a NoneType; expected a string, one of val, test"),
    ("threshold_scope", ["global"], r"threshold_scope=\['global'\] is a list; expected a string"),
    ("select_metric", 1.5, r"select_metric=1.5 is a float"),
    ("description", 7, r"description=7 is a int; expected a string$"),
    ("name", 5, r"protocol: name=5 is a int; expected a string"),
    ("aliases", "x", r"aliases='x' \(str\) must be a list of names, e.g. aliases=\['x'\]"),
    ("aliases", ["ok", 2], r"aliases holds 2 \(int\): expected a list of names"),
    ("aliases", {"a": 1}, r"aliases=\{'a': 1\} \(dict\) must be a list"),
])
def test_protocol_values_of_the_wrong_type_are_named(key, value, needle):
    with pytest.raises(HarnessError, match=needle):
        Protocol.from_config({"name": "x", key: value})
    if key != "aliases":  # built directly, the same check runs at validate()
        with pytest.raises(HarnessError, match=needle):
            proto(**{"name": "x", key: value}).validate()


@pytest.mark.parametrize("name, why", [
    ("../../x", r"holds '/'"),
    ("a/b", r"holds '/'"),
    ("a\\b", r"holds '\\\\'"),
    ("a..b", r"holds '\.\.'"),
    ("..", r"holds '\.\.'"),
    (".hidden", r"starts with '\.'"),
    ("-rf", r"starts with '-'"),
    ("", r"is empty"),
    ("my protocol", r"holds ' '"),
    ("BT-TT.cam:pg", r"holds ':'"),
    ("caf\u00e9", r"holds '\u00e9'"),
    ("x" * 101, r"is too long"),
])
def test_unsafe_protocol_names_are_refused_with_the_allowed_characters(name, why):
    rule = r"use letters, digits and \. _ - \+ only, starting with a letter or digit"
    with pytest.raises(HarnessError, match=rf"protocol name={re.escape(repr(name))} {why}: .*evaluations/<name>\.json.*{rule}"):
        Protocol.from_config({"name": name})
    with pytest.raises(HarnessError, match=rf"protocol 'x': alias={re.escape(repr(name))} {why}"):
        Protocol.from_config({"name": "x", "aliases": ["fine", name]})


def test_every_shipped_preset_and_grid_name_is_a_safe_name(fresh_registry):
    from pathlib import Path

    import harness.protocols as presets
    from harness.config import read_file
    from harness.protocol import check_name
    from harness.registry import registry

    files = [p for p in Path(presets.__file__).parent.glob("*.py") if not p.name.startswith("_")]
    assert len(files) >= 6
    names = []
    for path in files:
        p = Protocol.from_config(read_file(path)["protocol"])
        names += [p.name, *p.aliases]
    assert {"gt-val", "pseudo-box-val", "realistic", "test-threshold-per-class"} <= set(names)
    annotators = registry().names("annotator")
    assert "cam-pg" in annotators
    cells = grid(annotators + ["ext_v1.2+x"])
    assert "BT-TT.cam-pg" in {c.name for c in cells}
    for name in names + [c.name for c in cells] + ["a", "A.b_c-d+e", "x" * 100]:
        assert check_name(name) == name
    with pytest.raises(HarnessError, match=r"protocol name='BT-TT\.my annotator' holds ' '"):
        grid(["my annotator"])
