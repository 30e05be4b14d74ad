"""TrCAM-V (Murtaza et al., ANNPR 2024; thesis Appendix II): a DeiT-S with a classification head
and a localization head, trained from CLIP-ES (or CAM) pseudo-pixels with the F-CAM family's
losses; frames are processed independently. Network in model.py, pseudo-label maps in maps.py,
the composition of the shared parts in method.py."""
from __future__ import annotations

from pathlib import Path

from harness.hookspecs import hookimpl
from harness.registry import Entry, lazy


@hookimpl
def harness_register_methods():
    return [Entry("trcamv", lazy("harness.plugins.trcamv.method:TrcamvMethod"),
                  "TrCAM-V: DeiT-S + localization head trained from CLIP-ES/CAM pseudo-pixels, PAL + size + CRF",
                  config=Path(__file__).parent / "config.py")]
