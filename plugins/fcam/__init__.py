"""F-CAM (Belharbi et al., WACV 2022): a U-Net decoder over the frozen classifier, trained
with pixel pseudo-labels from the classifier's CAM, a dense CRF and an absolute size
constraint; single frames. The shared parts are in harness/fcam/; this folder is its config."""
from __future__ import annotations

from pathlib import Path

from harness.hookspecs import hookimpl
from harness.registry import Entry, lazy


@hookimpl
def harness_register_methods():
    return [Entry("fcam", lazy("harness.fcam.method:FcamFamily"), "F-CAM: U-Net decoder on the frozen classifier; pseudo-labels + CRF + size",
                  config=Path(__file__).parent / "config.py")]
