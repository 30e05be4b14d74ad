"""The plugin contract, pytest's standard: a broken plugin is reported by `harness list` and
skipped, never fatal; a method that cannot be built is named before any run directory exists."""
import importlib
import json
import subprocess
import sys

import pytest
import torch

from harness import results, runner
from harness.cam import build_source, run_source
from harness.cli import main
from harness.errors import HarnessError
from harness.hookspecs import hookimpl
from harness.registry import Entry, build_registry, registry

from conftest import TINY_YTO
from plugin_fixtures import fake_distribution

HEAD = "from harness.hookspecs import hookimpl\nfrom harness.registry import Entry\n"


def _registry_with(tmp_path, monkeypatch, source, module="third_mod", dist="third-plugin"):
    fake_distribution(tmp_path, dist, module, HEAD + source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)  # each test's own module, not a cached one
    importlib.invalidate_caches()
    registry.cache_clear()
    return registry()


@pytest.fixture(autouse=True)
def _fresh_registry():
    registry.cache_clear()
    yield
    registry.cache_clear()


@pytest.mark.parametrize("source, problem", [
    ("@hookimpl\ndef harness_register_methods():\n    return [('x', None, 'd')]\n",
     "item 0: returned a tuple"),
    ("@hookimpl\ndef harness_register_methods():\n    return Entry('x', object, 'd')\n",
     "returned a Entry, not a list of Entry"),
    ("@hookimpl\ndef harness_register_methods():\n    return 'x'\n",
     "returned a str, not a list of Entry"),
    ("@hookimpl\ndef harness_register_methods():\n    return [Entry('../evil', object, 'd')]\n",
     "method name='../evil' holds '/'"),
    ("@hookimpl\ndef harness_register_methods():\n    return [Entry('x', 42, 'd')]\n",
     "factory must be callable"),
    ("@hookimpl\ndef harness_register_methods():\n    return [Entry('x', object, 'd', config='/no/such.py')]\n",
     "config file /no/such.py does not exist"),
    ("@hookimpl\ndef harness_register_methods():\n    return [Entry('x', object, 'd', aliases=('ok', 'no way'))]\n",
     "alias of 'x'='no way' holds ' '"),
    ("@hookimpl\ndef harness_register_protocols():\n    return [Entry('p', None, 'd')]\n",
     "protocol 'p' has no config"),
])
def test_a_hook_that_returns_the_wrong_shape_is_reported_and_skipped(source, problem, tmp_path, monkeypatch,
                                                                      capsys):
    reg = _registry_with(tmp_path, monkeypatch, source)
    [failure] = [f for f in reg.failures if f.plugin == "third_mod"]
    assert problem in failure.error and failure.distribution == "third-plugin 0.1"
    assert "cam" in reg.names("method") and "x" not in reg.names("method")
    assert main(["list"]) == 0  # the CLI stays up, built-in methods included
    out = capsys.readouterr().out
    assert "third_mod (third-plugin 0.1)" in out and problem in out and "synth-yto" in out


def test_a_good_entry_beside_a_bad_one_is_kept(tmp_path, monkeypatch):
    reg = _registry_with(tmp_path, monkeypatch, "@hookimpl\ndef harness_register_methods():\n"
                                                "    return [Entry('good', object, 'd'), 'junk']\n")
    assert "good" in reg.names("method")
    assert any("item 1: returned a str" in f.error for f in reg.failures)


def test_a_misspelled_hook_is_a_warning_with_the_right_name(tmp_path, monkeypatch, capsys):
    reg = _registry_with(tmp_path, monkeypatch, "@hookimpl\ndef harness_register_method():\n    return []\n")
    [warning] = [w for w in reg.warnings if w.plugin == "third_mod"]
    assert "'harness_register_method'" in warning.error and "did you mean harness_register_methods" in warning.error
    assert main(["list"]) == 0
    assert "plugin warnings" in capsys.readouterr().out


def test_a_module_without_hookimpl_is_a_warning(tmp_path, monkeypatch):
    reg = _registry_with(tmp_path, monkeypatch, "def harness_register_methods():\n    return []\n")
    [warning] = [w for w in reg.warnings if w.plugin == "third_mod"]
    assert "registers nothing" in warning.error and "lack the @hookimpl decorator" in warning.error


def test_a_hook_with_unknown_arguments_is_reported(tmp_path, monkeypatch):
    reg = _registry_with(tmp_path, monkeypatch, "@hookimpl\ndef harness_register_methods(config):\n    return []\n")
    assert any(f.plugin == "third_mod" and "config" in f.error for f in reg.failures)
    assert "cam" in reg.names("method")


# ------------------------------------------------------------------------ methods that cannot be built

BROKEN_METHODS = """
from harness.method import Method

def raises(cfg, num_classes):
    raise RuntimeError("the weights are on another machine")

class Incomplete(Method):  # misses predict, stages, modules
    pass

def not_a_method(cfg, num_classes):
    return "a string"

@hookimpl
def harness_register_methods():
    return [Entry("raises", raises, "d", config={"method": {"name": "raises"}}),
            Entry("incomplete", Incomplete, "d", config={"method": {"name": "incomplete"}}),
            Entry("notamethod", not_a_method, "d", config={"method": {"name": "notamethod"}}),
            Entry("typo", raises, "d", config={"method": {"name": "typo"}, "classifier": {"epoch": 1}})]
"""


@pytest.mark.parametrize("plugin, message", [
    ("raises", "method 'raises' (third-plugin 0.1) failed to build: RuntimeError: the weights are on another machine"),
    ("incomplete", "method 'incomplete' (third-plugin 0.1) failed to build: TypeError: Can't instantiate abstract"),
    ("notamethod", "method 'notamethod' (third-plugin 0.1) failed to build: its factory returned a str"),
    ("typo", "plugin 'typo' (third-plugin 0.1)'s default config: unknown config key 'classifier.epoch'"),
])
def test_a_method_that_cannot_be_built_is_named_and_leaves_no_run_directory(plugin, message, tmp_path, monkeypatch,
                                                                           capsys):
    _registry_with(tmp_path / "site", monkeypatch, BROKEN_METHODS)
    argv = ["run", "--plugin", plugin, "--run-root", str(tmp_path / "runs"), "--no-progress", "--cfg-options",
            *[f"{k}={v}" for k, v in TINY_YTO.items()]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    # no half-made run directory is left behind for `harness leaderboard --runs runs/*` to trip on
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []


def test_a_stage_with_a_bad_name_or_epochs_is_named():
    from harness.method import Method, Stage

    class S(Stage):
        name, epochs, batch_size = "../x", 1, 4

        def parameters(self):
            return []

        def optimizer(self):
            return None, None

        def loss(self, batch):
            return None, {}

    class M(Method):
        stages = property(lambda self: [S()])

        def modules(self):
            return {}

        def predict(self, images, classes):
            return None

    entry = Entry("m", M, "d", kind="method", distribution="x 1")
    with pytest.raises(HarnessError, match=r"stage name '\.\./x' is not a valid name"):
        runner.build_method({}, 3, entry)
    S.name, S.epochs = "ok", 0
    with pytest.raises(HarnessError, match="stage 'ok' has epochs=0"):
        runner.build_method({}, 3, entry)


# ------------------------------------------------------------------------ the CAM-source contract


def test_build_source_names_bad_options_and_broken_factories(tmp_path, monkeypatch):
    _registry_with(tmp_path, monkeypatch, """
class Boom:
    def __init__(self, k=1):
        raise ValueError("k must be odd")

@hookimpl
def harness_register_cam_sources():
    return [Entry("boom", Boom, "d"), Entry("notcallable", lambda: 3, "d")]
""")
    with pytest.raises(HarnessError, match=r"CAM source 'cam' \(wsol-harness .*\) has no option sigma; its options: "
                                           r"variant='gradcam', channels_last=None"):
        build_source("cam", {"sigma": 1})
    with pytest.raises(HarnessError, match=r"CAM source 'boom' \(third-plugin 0.1\) failed to build with options "
                                           r"\{'k': 2\}: ValueError: k must be odd"):
        build_source("boom", {"k": 2})
    with pytest.raises(HarnessError, match="returned a int, not a callable source"):
        build_source("notcallable")
    assert type(build_source("gradcam", {"variant": "torchcam"})).__name__ == "GradCAM"


def test_run_source_checks_what_a_source_returns():
    images = torch.zeros(2, 3, 8, 8)
    good = lambda model, x, c: (torch.zeros(2, 4, 4), torch.zeros(2, 5))  # noqa: E731
    maps, logits = run_source(good, None, images, torch.tensor([0, 1]))
    assert maps.shape == (2, 4, 4) and logits.shape == (2, 5)
    for bad, why in [(lambda m, x, c: torch.zeros(2, 4, 4), "returned Tensor; a source returns the tuple"),
                     (lambda m, x, c: (torch.zeros(2, 4, 4),), "returned tuple of 1"),
                     (lambda m, x, c: (torch.zeros(4, 4), torch.zeros(2, 5)), r"returned maps \(4, 4\)"),
                     (lambda m, x, c: (torch.zeros(3, 4, 4), torch.zeros(3, 5)), "for 2 images")]:
        with pytest.raises(HarnessError, match=why):
            run_source(bad, None, images, torch.tensor([0, 1]))


def test_swapping_the_cam_source_resets_the_options_to_the_new_source():
    cfg = runner.compose("cam", "gt-val", "synth-yto", {"method.cam_source": "smoothgradcampp",
                                                        "method.options.n": 2})
    assert cfg.method.options.to_dict() == {"variant": "gradcam", "channels_last": None, "n": 2, "sigma": 0.3,
                                            "seed": 0}
    assert runner.method_label(cfg) == "cam+smoothgradcampp"
    assert runner.method_label(runner.compose("gradcam", "gt-val", "synth-yto")) == "gradcam"
    with pytest.raises(HarnessError, match="unknown config key 'method.options.n'"):
        runner.compose("cam", "gt-val", "synth-yto", {"method.options.n": 2})


def test_the_record_names_the_distribution_and_git_revision_of_the_plugin(tmp_path, monkeypatch):
    site = tmp_path / "checkout"
    reg = _registry_with(site, monkeypatch, "@hookimpl\ndef harness_register_cam_sources():\n"
                                            "    return [Entry('mine', object, 'd')]\n")
    subprocess.run(["git", "init", "-q", str(site)], check=True)
    subprocess.run(["git", "-C", str(site), "-c", "user.email=a@b", "-c", "user.name=a", "add", "."], check=True)
    subprocess.run(["git", "-C", str(site), "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "x"],
                   check=True)
    head = subprocess.run(["git", "-C", str(site), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    prov = results.distribution_provenance(reg.get("cam_source", "mine"))
    assert prov == {"plugin": "third_mod", "distribution": "third-plugin", "version": "0.1", "git_revision": head}


# ------------------------------------------------------------------------ speed of the everyday commands


@pytest.mark.parametrize("argv", [["list"], ["leaderboard", "--list"]])
def test_list_and_leaderboard_import_no_model_code(argv):
    """`harness list` / `harness leaderboard` must not pay for torch, cv2 or numba (seconds of
    CPU per call); the registry registers everything lazily."""
    code = ("import sys\nfrom harness.cli import main\nrc = main(%r)\n"
            "heavy = [m for m in ('torch', 'cv2', 'numba', 'timm', 'matplotlib') if m in sys.modules]\n"
            "print('HEAVY', heavy, rc)\n" % (argv,))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "HEAVY [] 0"


# ------------------------------------------------------------------------ a plugin's own code at run time

RUNTIME = '''
import sys
import torch
from harness.method import Method, Prediction, Stage

class Net(torch.nn.Module):
    def __init__(self, n):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=4, padding=1)
        self.head = torch.nn.Linear(4, n)
        self.extra = None

    def forward(self, x):
        a = self.conv(x)
        return self.head(a.mean(dim=(2, 3))), a

class Fit(Stage):
    name, epochs, batch_size = "fit", 1, 16
    def __init__(self, net, how):
        self.net, self.how = net, how
    def parameters(self):
        return self.net.parameters()
    def optimizer(self):
        if self.how == "optimnone":
            return None
        return torch.optim.SGD(self.net.parameters(), lr=0.01), None
    def loss(self, batch):
        logits, _ = self.net(batch["image"])
        loss = torch.nn.functional.cross_entropy(logits, batch["label"])
        if self.how == "lossscalar":
            return loss
        if self.how == "raises":
            raise ZeroDivisionError("the plugin divided by zero")
        return loss, {}

class Tiny(Method):
    def __init__(self, cfg, n):
        super().__init__(cfg, n)
        self.how = cfg.method.name
        self.net = Net(n)
        self._stages = [Fit(self.net, self.how)]
    @property
    def stages(self):
        return self._stages
    def modules(self):
        return {"net": self.net}
    def state_dict(self):
        state = super().state_dict()
        if self.how == "stateobj":
            state["extra"] = object()
        return state
    def predict(self, images, classes):
        logits, a = self.net(images)
        maps = a.mean(1)
        if self.how == "predtuple":
            return maps, logits
        if self.how == "predshape":
            return Prediction(maps=a, logits=logits)
        return Prediction(maps=maps, logits=logits)

def boom(cfg):
    raise RuntimeError("the dataset server is down")

def notadataset(cfg, progress=True):
    return [1, 2, 3]

def methods():
    names = ["lossscalar", "raises", "optimnone", "stateobj", "predtuple", "predshape", "fine"]
    return [Entry(n, Tiny, "d", config={"method": {"name": n}}) for n in names] + [
        Entry("noconfig", Tiny, "a method with no config at all"),
        Entry("listconfig", Tiny, "d", config=lambda: [1, 2])]

@hookimpl
def harness_register_methods():
    return methods()

@hookimpl
def harness_register_cam_sources():
    return [Entry("gone", lazy("no_such_module_here:Source"), "d")]

@hookimpl
def harness_register_protocols():
    return [Entry("noprotokey", None, "d", config={"selection": "val"})]

@hookimpl
def harness_register_datasets():
    return [Entry("boomdata", lambda cfg, progress=True: boom(cfg), "d", config={"data": {"name": "boomdata"}}),
            Entry("listdata", notadataset, "d", config={"data": {"name": "listdata"}})]
'''

TINY_DATA = [f"{k}={v}" for k, v in TINY_YTO.items() if k.startswith(("data.", "eval.", "run."))]


@pytest.mark.slow
@pytest.mark.parametrize("plugin, message", [
    ("lossscalar", "stage 'fit' loss() returned Tensor; it returns (loss, scalars)"),
    ("raises", "stage 'fit' loss() raised ZeroDivisionError: the plugin divided by zero (HARNESS_DEBUG=1"),
    ("optimnone", "stage 'fit' optimizer() returned NoneType; it returns (torch.optim.Optimizer"),
    ("stateobj", "the state of stage 'fit' cannot be checkpointed: it holds more than tensors and plain data"),
    ("predtuple", "predict() returned tuple; it returns harness.method.Prediction"),
    ("predshape", "expected maps (B, h, w) and logits (B, C)"),
    ("listconfig", "its config is a list, not a file or a dict of sections"),
])
def test_a_plugin_that_breaks_its_contract_at_run_time_is_named(plugin, message, tmp_path, monkeypatch, capsys):
    _registry_with(tmp_path / "site", monkeypatch, "from harness.registry import lazy\n" + RUNTIME, "rt_mod")
    argv = ["run", "--plugin", plugin, "--run-root", str(tmp_path / "runs"), "--no-progress", "--cfg-options",
            *TINY_DATA]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    if plugin == "raises":
        monkeypatch.setenv("HARNESS_DEBUG", "1")  # plugin authors get their traceback back
        with pytest.raises(ZeroDivisionError):
            main(argv)


@pytest.mark.slow
def test_a_plugin_method_needs_no_config(tmp_path, monkeypatch):
    _registry_with(tmp_path / "site", monkeypatch, "from harness.registry import lazy\n" + RUNTIME, "rt_mod")
    argv = ["run", "--plugin", "noconfig", "--run-root", str(tmp_path / "runs"), "--no-progress", "--cfg-options",
            *TINY_DATA]
    assert main(argv) == 0
    [run_dir] = (tmp_path / "runs").glob("*-noconfig-gt-val")
    assert json.loads((run_dir / "result.json").read_text())["plugin"] == "noconfig"


@pytest.mark.parametrize("argv, message", [
    (["run", "--plugin", "cam", "--cfg-options", "method.cam_source=gone"],
     "lazy('no_such_module_here:Source') cannot be imported: ModuleNotFoundError"),
    (["run", "--plugin", "cam", "--protocol", "noprotokey"], "protocol 'noprotokey' (third-plugin 0.1): its config "
                                                            "sets no protocol"),
    (["run", "--plugin", "cam", "--dataset", "boomdata"],
     "dataset 'boomdata' (third-plugin 0.1) failed to load: RuntimeError: the dataset server is down"),
    (["run", "--plugin", "cam", "--dataset", "listdata"], "its factory returned a list, not a harness.data.base"),
    (["data", "show", "--name", "boomdata"], "failed to load: RuntimeError"),
    (["data", "prepare", "listdata"], "its factory returned a list"),
])
def test_a_broken_plugin_component_is_named(argv, message, tmp_path, monkeypatch, capsys):
    _registry_with(tmp_path / "site", monkeypatch, "from harness.registry import lazy\n" + RUNTIME)
    monkeypatch.chdir(tmp_path)
    assert main(argv + ["--no-progress"] if argv[0] != "data" or argv[1] == "prepare" else argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


@pytest.mark.parametrize("where", ["import", "hook"])
def test_a_plugin_that_calls_sys_exit_is_reported_not_obeyed(where, tmp_path, monkeypatch, capsys):
    source = "import sys\nsys.exit(3)\n" if where == "import" else \
        "import sys\n@hookimpl\ndef harness_register_methods():\n    sys.exit(7)\n"
    reg = _registry_with(tmp_path, monkeypatch, source)
    [failure] = [f for f in reg.failures if f.plugin == "third_mod"]
    assert f"called sys.exit({3 if where == 'import' else 7})" in failure.error
    assert main(["list"]) == 0 and "cam" in capsys.readouterr().out


def test_a_config_file_that_calls_sys_exit_is_named(tmp_path, capsys):
    cfg = tmp_path / "exits.py"
    cfg.write_text("import sys\nsys.exit(3)\n")
    assert main(["run", "--plugin", "cam", "--config", str(cfg)]) == 2
    assert f"cannot read config file {cfg}: it called sys.exit(3)" in capsys.readouterr().err


def test_a_methods_provenance_is_kept_when_plain_json_and_left_out_with_a_warning_otherwise(caplog):
    cfg = runner.compose("cam", "gt-val", "synth-yto")

    class Facts:
        def __init__(self, facts):
            self.facts = facts

        def provenance(self):
            return self.facts

    assert runner._method_provenance(Facts({"encoder": "fine-tuned", "heads": [0, 1]}), cfg) == {
        "encoder": "fine-tuned", "heads": [0, 1]}
    for bad in ([("encoder", 1)], {"w": torch.zeros(1)}, {"x": float("nan")}):
        caplog.clear()
        assert runner._method_provenance(Facts(bad), cfg) == {}
        assert "provenance() returned" in caplog.text and "written without it" in caplog.text
