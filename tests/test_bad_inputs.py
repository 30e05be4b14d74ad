"""Bad input to every command, as a newcomer types it: each is one named error line and a
non-zero exit, never a traceback, and fails before any data is generated or anything trained."""
from __future__ import annotations

import json

import pytest

from harness.cli import main


@pytest.fixture
def files(tmp_path):
    """Malformed inputs on disk: `{name}` in a case's argv is replaced by the path."""
    out = {}

    def put(name, text):
        out[name] = tmp_path / name
        out[name].write_text(text)

    put("list.json", "[1, 2]")
    put("broken.json", "{")
    put("traversal.json", json.dumps({"protocol": {"name": "../../x", "supervision": "gt"}}))
    put("number.json", json.dumps({"protocol": {"name": "p", "supervision": 3}}))
    put("unknown-key.json", json.dumps({"protocol": {"name": "p", "supervison": "gt"}}))
    put("noproto.json", json.dumps({"classifier": {"lr": 0.1}}))
    put("pseudo-unknown.json", json.dumps({"protocol": {"name": "p", "supervision": "pseudo:nosuch"}}))
    put("pseudo-file.json", json.dumps({"protocol": {"name": "p", "supervision": "pseudo:file"}}))
    put("syntax.py", "classifier = dict(lr=\n")
    put("typo.py", "classifier = dict(lrr=0.1)\n")
    put("evil.yaml", "protocol: !!python/object/apply:os.system ['true']\n")
    put("notarun.txt", "hello")
    (tmp_path / "emptydir").mkdir()
    out["emptydir"] = tmp_path / "emptydir"
    out["tmp"] = tmp_path
    out["missing"] = tmp_path / "missing"
    return out


CASES = {
    # run
    "run without --plugin": (["run"], "--plugin is required"),
    "run an unknown plugin": (["run", "--plugin", "nonesuch"], "unknown method 'nonesuch'"),
    "run an unknown protocol": (["run", "--plugin", "cam", "--protocol", "nonesuch"], "unknown protocol 'nonesuch'"),
    "run a missing protocol file": (["run", "--plugin", "cam", "--protocol", "{missing}/p.py"], "does not exist"),
    "run a protocol folder": (["run", "--plugin", "cam", "--protocol", "{emptydir}/"], "does not exist"),
    "run a protocol that is a list": (["run", "--plugin", "cam", "--protocol", "{list.json}"], "not a mapping"),
    "run a protocol that is not JSON": (["run", "--plugin", "cam", "--protocol", "{broken.json}"], "cannot read config"),
    "run a protocol named ../../x": (["run", "--plugin", "cam", "--protocol", "{traversal.json}"], "holds '/'"),
    "run a protocol with a number": (["run", "--plugin", "cam", "--protocol", "{number.json}"], "supervision=3"),
    "run a protocol with a typo": (["run", "--plugin", "cam", "--protocol", "{unknown-key.json}"], "supervison"),
    "run a file without a protocol": (["run", "--plugin", "cam", "--protocol", "{noproto.json}"], "defines no"),
    "run a YAML file that runs code": (["run", "--plugin", "cam", "--protocol", "{evil.yaml}"], "cannot read config"),
    "run an unknown dataset": (["run", "--plugin", "cam", "--dataset", "nonesuch"], "unknown dataset 'nonesuch'"),
    "run an unknown key": (["run", "--plugin", "cam", "--cfg-options", "classifier.lrr=1"], "unknown config key"),
    "run an unknown section": (["run", "--plugin", "cam", "--cfg-options", "model.lr=1"], "unknown config key"),
    "run a string for a number": (["run", "--plugin", "cam", "--cfg-options", "classifier.lr=fast"], "expects float"),
    "run a negative lr": (["run", "--plugin", "cam", "--cfg-options", "classifier.lr=-0.1"], "out of range"),
    "run batch size 0": (["run", "--plugin", "cam", "--cfg-options", "classifier.batch_size=0"], "out of range"),
    "run -1 workers": (["run", "--plugin", "cam", "--cfg-options", "loader.num_workers=-1"], "out of range"),
    "run 0 epochs": (["run", "--plugin", "cam", "--cfg-options", "classifier.epochs=0"], "out of range"),
    "run a negative seed": (["run", "--plugin", "cam", "--cfg-options", "seed=-1"], "out of range"),
    "run an unknown interpolation": (["run", "--plugin", "cam", "--cfg-options", "eval.interpolation=nearest"],
                                     "eval.interpolation"),
    "run an unknown save_maps": (["run", "--plugin", "cam", "--cfg-options", "eval.save_maps=some"], "eval.save_maps"),
    "run a threshold step of 2": (["run", "--plugin", "cam", "--cfg-options", "eval.threshold_step=2.0"],
                                  "threshold_step"),
    "run an IoU level not accumulated": (["run", "--plugin", "cam", "--cfg-options", "eval.iou_threshold=0.4"],
                                         "iou_threshold"),
    "run on a TPU": (["run", "--plugin", "cam", "--device", "tpu"], "not a torch device"),
    "run on CUDA without CUDA": (["run", "--plugin", "cam", "--device", "cuda:7"], "CUDA is not available"),
    "run a reserved key": (["run", "--plugin", "cam", "--cfg-options", "method.name=x"], "--plugin flag"),
    "run lr None": (["run", "--plugin", "cam", "--cfg-options", "classifier.lr=None"], "cannot be None"),
    "run workers None": (["run", "--plugin", "cam", "--cfg-options", "loader.num_workers=None"], "cannot be None"),
    "run a section None": (["run", "--plugin", "cam", "--cfg-options", "eval=None"], "'eval' cannot be None"),
    "run device None": (["run", "--plugin", "cam", "--cfg-options", "device=None"], "cannot be None"),
    "run a word among IoU levels": (["run", "--plugin", "cam", "--cfg-options", "eval.iou_thresholds=[0.5,abc]"],
                                    "eval.iou_thresholds' expects list"),
    "run a swapped source's foreign option": (["run", "--plugin", "cam", "--cfg-options",
                                               "method.cam_source=scorecam", "method.options.n=3"],
                                              "method.options.n"),
    "run an unknown CAM source": (["run", "--plugin", "cam", "--cfg-options", "method.cam_source=nope"],
                                  "unknown cam source 'nope'"),
    "run a missing config file": (["run", "--plugin", "cam", "--config", "{missing}/c.py"], "does not exist"),
    "run a config with a syntax error": (["run", "--plugin", "cam", "--config", "{syntax.py}"], "cannot read config"),
    "run a config with a typo": (["run", "--plugin", "cam", "--config", "{typo.py}"], "classifier.lrr"),
    "run a run root that is a file": (["run", "--plugin", "cam", "--run-root", "{notarun.txt}",
                                       "--cfg-options", "data.image_size=32"], "is a file; pass --run-root"),
    "resume a missing directory": (["run", "--resume", "{missing}"], "not a run directory"),
    "resume a file": (["run", "--resume", "{notarun.txt}"], "not a run directory"),
    "resume with --plugin": (["run", "--resume", "{tmp}", "--plugin", "cam"], "drop --plugin"),
    "resume with options": (["run", "--resume", "{tmp}", "--cfg-options", "seed=1"], "drop --cfg-options"),
    "resume with a protocol": (["run", "--resume", "{tmp}", "--protocol", "oracle"], "drop --protocol"),
    "run an unknown annotator": (["run", "--plugin", "cam", "--protocol", "{pseudo-unknown.json}"],
                                 "unknown annotator 'nosuch'"),
    "run the file annotator without a file": (["run", "--plugin", "cam", "--protocol", "{pseudo-file.json}"],
                                              "the file annotator needs a path"),
    "run a bad setting of an unused annotator": (["run", "--plugin", "cam", "--cfg-options",
                                                  "annotators.noisy-gt.noise=-1.0"], "noise=-1.0 must be"),
    "run a bad setting of the realistic annotator": (["run", "--plugin", "cam", "--protocol", "realistic",
                                                      "--cfg-options", "annotators.cam-pg.filter_fraction=2.0"],
                                                     "filter_fraction=2.0 must be in (0, 1]"),
    # eval
    "eval a missing run": (["eval", "--run", "{missing}"], "not a run directory"),
    "eval an empty folder": (["eval", "--run", "{emptydir}"], "not a run directory"),
    "eval annotators without the grid": (["eval", "--run", "{emptydir}", "--annotators", "cam-pg"],
                                         "add --protocol grid"),
    # sweep
    "sweep without --plugin": (["sweep"], "--plugin is required"),
    "sweep nothing": (["sweep", "--plugin", "cam"], "nothing to sweep"),
    "sweep an eval key": (["sweep", "--plugin", "cam", "--grid", "eval.threshold_step=0.01,0.1"], "cannot sweep"),
    "sweep a space without trials": (["sweep", "--plugin", "cam", "--space", "classifier.lr=uniform:0.1:1"],
                                     "--trials"),
    "sweep an inverted range": (["sweep", "--plugin", "cam", "--space", "classifier.lr=uniform:1:0.1",
                                 "--trials", "2"], "lower bound"),
    "sweep -1 trials": (["sweep", "--plugin", "cam", "--space", "classifier.lr=uniform:0.1:1", "--trials", "-1"],
                        "--trials -1"),
    "sweep loguniform from 0": (["sweep", "--plugin", "cam", "--space", "classifier.lr=loguniform:0:1",
                                 "--trials", "2"], "> 0"),
    "sweep an unknown distribution": (["sweep", "--plugin", "cam", "--space", "classifier.lr=normal:0:1",
                                       "--trials", "2"], "distribution must be"),
    "sweep resume a non-sweep": (["sweep", "--resume", "{emptydir}"], "not a sweep directory"),
    "sweep a bad grid value": (["sweep", "--plugin", "cam", "--grid", "classifier.lr=-1,0.1"], "out of range"),
    "sweep a word for epochs": (["sweep", "--plugin", "cam", "--grid", "classifier.epochs=1,abc"], "expects int"),
    "sweep one key two ways": (["sweep", "--plugin", "cam", "--grid", "classifier.lr=0.1,0.2", "--space",
                                "classifier.lr=uniform:0.1:0.2", "--trials", "2"], "in --grid and in --space"),
    "sweep a negative seed": (["sweep", "--plugin", "cam", "--space", "classifier.lr=uniform:0.1:0.2", "--trials",
                               "2", "--seed", "-1"], "--seed -1"),
    "sweep resume with a grid": (["sweep", "--resume", "{emptydir}", "--grid", "classifier.lr=0.1"], "drop --grid"),
    # annotate
    "annotate with an unknown annotator": (["annotate", "--annotator", "nope"], "unknown annotator 'nope'"),
    "annotate an unknown dataset": (["annotate", "--dataset", "nope"], "unknown dataset 'nope'"),
    "annotate with a run option": (["annotate", "--cfg-options", "classifier.lr=0.1"], "annotators.* and data.*"),
    # data
    "data prepare an unknown dataset": (["data", "prepare", "nope"], "unknown dataset 'nope'"),
    "data prepare without a root": (["data", "prepare", "cub"], "data.root"),
    "data prepare a missing root": (["data", "prepare", "ytov1", "--root", "{missing}"], "no such folder"),
    "data synth a bad size": (["data", "synth", "--cfg-options", "data.image_size=3"], "image_size"),
    "data show an unknown dataset": (["data", "show", "--name", "nope"], "unknown dataset 'nope'"),
    # leaderboard
    "leaderboard an unknown table": (["leaderboard", "--table", "nope"], "nope"),
    "leaderboard missing runs": (["leaderboard", "--table", "fcam-t1", "--runs", "{missing}"], "no such directory"),
    "leaderboard runs that are no runs": (["leaderboard", "--table", "fcam-t1", "--runs", "{emptydir}"],
                                          "neither a finished run"),
    "leaderboard a missing run root": (["leaderboard", "--run-root", "{missing}"], "does not exist"),
    "leaderboard --match without runs": (["leaderboard", "--match"], "--match needs --runs"),
    "leaderboard --runs without a table": (["leaderboard", "--runs", "{tmp}"], "go with --table"),
    "leaderboard --list with runs": (["leaderboard", "--list", "--runs", "{tmp}"], "--list takes no --runs"),
    "leaderboard two commands": (["leaderboard", "--match", "--check"], "are different commands"),
    # report
    "report without a target": (["report"], "give --run RUN_DIR"),
    "report a missing run": (["report", "--run", "{missing}"], "does not exist"),
    "report an unfinished run": (["report", "--run", "{emptydir}"], "not a finished run"),
    "report 0 frames": (["report", "--run", "{emptydir}", "--frames", "0"], "--frames 0"),
    "report an index without runs": (["report", "--index", "{tmp}/i.html"], "--index needs --runs"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_named_error(case, files, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HARNESS_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)  # runs/ of a case that got too far would land here
    argv, expected = CASES[case]
    for name, path in files.items():
        argv = [a.replace("{" + name + "}", str(path)) for a in argv]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert "Traceback" not in out + err
    assert err.startswith("harness: error: ") and expected in err, err
    assert not (tmp_path / "runs").exists()  # nothing was created for a refused command
    home = tmp_path / "home"
    assert not home.exists() or not list(home.glob("*synth*"))  # no data was generated either


def test_a_malformed_key_value_pair_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["run", "--plugin", "cam", "--cfg-options", "classifier.epochs"])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "--cfg-options takes KEY=VALUE pairs" in err and "'classifier.epochs' has no '='" in err
    assert "Traceback" not in err


def test_none_is_taken_where_it_means_something():
    from harness import runner

    cfg = runner.compose("cam", "gt-val", "synth-yto", {"classifier.feature_index": None, "classifier.pretrained": None})
    assert cfg.classifier.feature_index is None  # the encoder's last stage
