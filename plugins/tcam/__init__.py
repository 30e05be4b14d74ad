"""TCAM (Belharbi et al., WACV 2023): F-CAM's decoder and losses with pseudo-labels from
CAM-TMP, the pixel-wise max of the classifier CAMs of a frame and its n previous frames of
the same shot. Only the configuration is TCAM's own; the parts are harness/fcam/."""
from __future__ import annotations

from pathlib import Path

from harness.hookspecs import hookimpl
from harness.registry import Entry, lazy


@hookimpl
def harness_register_methods():
    return [Entry("tcam", lazy("harness.fcam.method:FcamFamily"), "TCAM: F-CAM with CAM temporal max-pooling (CAM-TMP) pseudo-labels",
                  config=Path(__file__).parent / "config.py")]
