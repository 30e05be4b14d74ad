"""The leaderboard and report commands on damaged records, and what they say they wrote.

Every case goes through ``harness.cli.main``: a damaged record is a one-line error naming the
file (exit 2), or, where the command passes over it, a warning naming it (exit 0); never a
traceback.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main

from test_leaderboards import _fake_run


def _damage(path: Path, how: str) -> None:
    record = json.loads(path.read_text())
    if how == "list":
        path.write_text(json.dumps([record]))
    elif how == "string":
        record["metrics"]["test"]["corloc"] = "85.0"
        path.write_text(json.dumps(record))
    elif how == "no-metrics":
        del record["metrics"]
        path.write_text(json.dumps(record))
    else:
        path.write_text("{not json")


DAMAGE = ["list", "string", "no-metrics", "not-json"]
# what the error or warning says for each, beside the file's path
PROBLEM = {"list": "it holds a list, not an object", "string": "metrics.test.corloc is '85.0', expected a number",
           "no-metrics": "no metrics", "not-json": "JSONDecodeError"}


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("command", ["table", "match", "report-run", "report-index"])
def test_a_damaged_result_is_an_error_naming_the_file(tmp_path, capsys, how, command):
    root = tmp_path / "runs"
    _fake_run(root, "good")
    bad = _fake_run(root, "bad")
    _damage(bad / "result.json", how)
    argv = {"table": ["leaderboard", "--table", "colocam-t1-ytov1", "--runs", str(root)],
            "match": ["leaderboard", "--match", "--runs", str(bad)],
            "report-run": ["report", "--run", str(bad), "--no-progress"],
            "report-index": ["report", "--index", str(tmp_path / "index.html"), "--runs", str(root),
                             "--no-progress"]}[command]
    code, out, err = _run(argv, capsys)
    assert code == 2
    [line] = err.splitlines()
    assert line.startswith(f"harness: error: {bad / 'result.json'} ") and PROBLEM[how] in line
    assert not (tmp_path / "index.html").exists()


@pytest.mark.parametrize("how", DAMAGE)
def test_the_run_root_leaderboard_leaves_a_damaged_result_out_and_says_so(tmp_path, capsys, how):
    _fake_run(tmp_path, "good")
    bad = _fake_run(tmp_path, "bad")
    _damage(bad / "result.json", how)
    code, out, err = _run(["leaderboard", "--run-root", str(tmp_path)], capsys)
    assert code == 0
    [warning] = [ln for ln in err.splitlines() if ln.strip()]
    assert warning.startswith(f"harness: left out of the leaderboard: {bad / 'result.json'} ")
    assert PROBLEM[how] in warning
    assert "| good " in out and "| bad " not in out
    assert out.splitlines()[-1] == (f"wrote {tmp_path / 'leaderboard.md'} (1 run; 1 damaged record left out, "
                                    "named above)")


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_reevaluation_among_good_ones_is_left_out_with_a_warning(tmp_path, capsys, how):
    """--protocol takes the good one; a select-coded table (which reads every re-evaluation), in
    a terminal or on the index page, passes the bad one over; asking for the protocol only the
    bad one had is an error."""
    run = _fake_run(tmp_path, "r", evaluations={"test-threshold-per-class": ("gt", "val", "test", 5.0),
                                                "oracle": ("gt", "test", "test", 7.0)})
    broken = run / "evaluations" / "oracle.json"
    _damage(broken, how)
    named = f"{broken} is not a"

    code, out, err = _run(["leaderboard", "--table", "colocam-t1-ytov1", "--runs", str(run), "--protocol",
                           "test-threshold-per-class"], capsys)
    assert code == 0 and "| 15.0 " in out  # the good re-evaluation's numbers
    assert err.startswith(f"harness: left out {named}") and PROBLEM[how] in err

    code, out, err = _run(["leaderboard", "--table", "realistic-t4.2", "--runs", str(run)], capsys)
    assert code == 0 and named in err

    code, out, err = _run(["report", "--index", str(tmp_path / "site" / "index.html"), "--runs", str(run),
                           "--tables", "realistic-t4.2", "--no-progress"], capsys)
    assert code == 0 and named in err and (tmp_path / "site" / "index.html").is_file()

    code, out, err = _run(["leaderboard", "--table", "colocam-t1-ytov1", "--runs", str(run), "--protocol",
                           "oracle"], capsys)
    assert code == 2 and "has no evaluation under protocol 'oracle' (left out as damaged: " in err
    assert named in err and len(err.splitlines()) == 1


def test_written_files_are_named_and_created_folders_too(tmp_path, capsys):
    _fake_run(tmp_path / "runs", "a")
    _fake_run(tmp_path / "runs", "b")
    code, out, _ = _run(["leaderboard", "--run-root", str(tmp_path / "runs")], capsys)
    assert code == 0 and out.splitlines()[-1] == f"wrote {tmp_path / 'runs' / 'leaderboard.md'} (2 runs)"

    target = tmp_path / "new" / "deeper" / "t.md"
    code, out, _ = _run(["leaderboard", "--table", "fcam-t1", "--out", str(target)], capsys)
    assert code == 0 and out == f"created folder {target.parent}; wrote {target}\n"
    assert target.read_text().startswith("**F-CAM Table 1**")
    code, out, _ = _run(["leaderboard", "--table", "fcam-t1", "--out", str(target)], capsys)
    assert out == f"wrote {target}\n"

    code, _, err = _run(["leaderboard", "--table", "fcam-t1", "--out", str(target / "x.md")], capsys)
    assert code == 2 and err == f"harness: error: cannot write {target / 'x.md'}: {target} is a file, not a folder; " \
                                "choose another path\n"


def test_an_unfinished_run_among_the_runs_is_left_out_with_a_warning(tmp_path, capsys):
    root = tmp_path / "runs"
    good = _fake_run(root, "good")
    unfinished = root / "20261203-120000-cam-gt-val"  # killed, or still training
    unfinished.mkdir()
    (unfinished / "config.py").write_text("seed = 0\n")
    code, out, err = _run(["leaderboard", "--table", "colocam-t1-ytov1", "--runs", str(good), str(unfinished)],
                          capsys)
    assert code == 0 and "colocam (resnet18, synth-yto" in out
    assert f"left out {unfinished}: the run has not finished" in err
    code, _, err = _run(["leaderboard", "--table", "colocam-t1-ytov1", "--runs", str(unfinished)], capsys)
    assert code == 2 and "harness run --resume" in err


def test_a_run_with_a_swapped_cam_source_is_named_by_method_and_source(tmp_path, capsys):
    run = _fake_run(tmp_path / "runs", "swapped")
    record = json.loads((run / "result.json").read_text())
    (run / "result.json").write_text(json.dumps({**record, "plugin": "cam", "method_label": "cam+eigencam"}))
    code, out, _ = _run(["leaderboard", "--table", "colocam-t1-ytov1", "--runs", str(run)], capsys)
    assert code == 0 and "cam+eigencam (resnet18, synth-yto" in out
    code, out, _ = _run(["leaderboard", "--run-root", str(tmp_path / "runs")], capsys)
    assert code == 0 and "| swapped | cam+eigencam |" in out.replace("  ", " ").replace("  ", " ")
