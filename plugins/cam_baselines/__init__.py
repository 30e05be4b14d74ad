"""CAM baselines: a trained classifier read through a CAM source."""
from __future__ import annotations

from pathlib import Path

from harness.hookspecs import hookimpl
from harness.registry import Entry

_HERE = Path(__file__).parent


@hookimpl
def harness_register_cam_sources():
    from .cam import CAM

    return [Entry("cam", CAM, "Class activation map: head weights over the last features (Zhou et al. 2016)")]


@hookimpl
def harness_register_methods():
    from .method import CamMethod

    return [
        Entry(
            "cam",
            CamMethod,
            "Classifier + CAM, the WSOL baseline (maps of the true class, min-max normalized)",
            config=_HERE / "config.py",
        )
    ]
