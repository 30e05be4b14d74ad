"""CoLo-CAM (Belharbi et al., 2023): F-CAM's decoder and per-frame losses plus the
multi-frame colour-only CRF over n frames of a shot, with clip-aware batches. Only the
configuration is CoLo-CAM's own; the parts are harness/fcam/."""
from __future__ import annotations

from pathlib import Path

from harness.hookspecs import hookimpl
from harness.registry import Entry, lazy


@hookimpl
def harness_register_methods():
    return [Entry("colocam", lazy("harness.fcam.method:FcamFamily"), "CoLo-CAM: F-CAM + colour co-localization CRF over frames of a shot",
                  config=Path(__file__).parent / "config.py")]
