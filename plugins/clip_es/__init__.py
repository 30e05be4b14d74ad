"""CLIP-ES (Lin et al., CVPR 2023): training-free localization with CLIP. Softmax Grad-CAM of
the class prompt against background prompts, refined by class-aware attention affinity (CAA);
batched over images, one class each. Model code in model.py, the CAA kernel in caa.py and
_caa_triton.py, prompts in text.py and names.toml."""
from __future__ import annotations

from pathlib import Path

from harness.hookspecs import hookimpl
from harness.registry import Entry, lazy


@hookimpl
def harness_register_methods():
    return [Entry("clip-es", lazy("harness.plugins.clip_es.method:ClipEsMethod"),
                  "CLIP-ES: training-free softmax Grad-CAM on CLIP + attention-affinity refinement (Lin et al., CVPR 2023)",
                  config=Path(__file__).parent / "config.py")]
