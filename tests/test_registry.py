import os
import subprocess
import sys

import pytest

from harness.errors import HarnessError
from harness.hookspecs import hookimpl
from harness.registry import Entry, build_registry

from plugin_fixtures import fake_distribution


def test_first_party_items_come_through_entry_points():
    reg = build_registry()
    assert "cam" in reg.names("method")
    assert "cam" in reg.names("cam_source")
    assert "gt-val" in reg.names("protocol")
    assert {"synth-yto", "synth-cub"} <= set(reg.names("dataset"))
    entry = reg.get("method", "cam")
    assert entry.distribution.startswith("wsol-harness")
    assert entry.plugin == "cam_baselines"
    assert entry.config is not None


def test_unknown_name_lists_the_valid_ones():
    reg = build_registry()
    with pytest.raises(HarnessError) as e:
        reg.get("method", "no-such-method")
    assert "no-such-method" in str(e.value) and "cam" in str(e.value)


def test_broken_plugin_is_reported_and_skipped(tmp_path, monkeypatch):
    fake_distribution(tmp_path, "broken-plugin", "broken_mod", "raise ImportError('needs libfoo')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = build_registry()
    [failure] = [f for f in reg.failures if f.plugin == "broken_mod"]
    assert "needs libfoo" in failure.error and failure.distribution.startswith("broken-plugin")
    assert "cam" in reg.names("method")  # everything else still works
    with pytest.raises(HarnessError, match="broken_mod"):
        reg.get("method", "whatever")  # the error points at the failed plugin


def test_hook_that_raises_is_reported_and_skipped():
    class Bad:
        @hookimpl
        def harness_register_methods(self):
            raise RuntimeError("boom")

    reg = build_registry(plugins=[("bad", "bad-dist 1.0", Bad())])
    assert any(f.plugin == "bad" and "boom" in f.error for f in reg.failures)
    assert "cam" in reg.names("method")


def test_name_clash_keeps_first_party_and_reports_the_newcomer():
    class Clash:
        @hookimpl
        def harness_register_methods(self):
            return [Entry("cam", object, "impostor")]

    reg = build_registry(plugins=[("clash", "clash-dist 1.0", Clash())])
    assert reg.get("method", "cam").plugin == "cam_baselines"
    assert any(f.plugin == "clash" and "already registered" in f.error for f in reg.failures)

    class AliasClash:
        @hookimpl
        def harness_register_protocols(self):
            return [Entry("mine", None, "d", config={"protocol": {"name": "mine"}}, aliases=("realistic",))]

    reg = build_registry(plugins=[("clash", "clash 1", AliasClash())])
    assert "mine" not in reg.names("protocol")
    assert any("'realistic' is already registered" in f.error for f in reg.failures)


def test_aliases_resolve():
    class Aliased:
        @hookimpl
        def harness_register_protocols(self):
            return [Entry("pseudo-x", None, "d", config={"protocol": {"name": "pseudo-x"}}, aliases=("px",))]

    reg = build_registry(plugins=[("aliased", "a 1", Aliased())])
    assert reg.get("protocol", "px").name == "pseudo-x"


def test_cli_list_shows_everything_and_the_broken_plugin(tmp_path):
    fake_distribution(tmp_path, "broken-plugin", "broken_mod", "raise ImportError('needs libfoo')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "harness.cli", "list"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for name in ("cam", "gt-val", "synth-yto", "synth-cub", "wsol-harness"):
        assert name in out.stdout
    assert "broken_mod" in out.stdout and "needs libfoo" in out.stdout
