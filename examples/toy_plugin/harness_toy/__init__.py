"""A third-party plugin for wsol-harness: a method (a tiny CNN trained on the frame labels,
whose class activation map is the localization map; method.py) and a CAM source (Eigen-CAM,
eigencam.py) that any CAM method can read the shared classifier through.

This module only registers them: `lazy("module:attr")` names what is imported when a run
builds it, so `harness list` (which loads every plugin) does not pay for torch here.
"""
from __future__ import annotations

from pathlib import Path

from harness.hookspecs import hookimpl
from harness.registry import Entry, lazy


@hookimpl
def harness_register_methods():
    return [Entry("toycnn", lazy("harness_toy.method:ToyMethod"), "Tiny 3-layer CNN + CAM (example third-party plugin)",
                  config=Path(__file__).parent / "config.py")]


@hookimpl
def harness_register_cam_sources():
    return [Entry("eigencam", lazy("harness_toy.eigencam:EigenCAM"),
                  "Eigen-CAM: first principal component of the features (example third-party source)")]
