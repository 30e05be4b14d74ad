"""DiPS (Murtaza et al., IVC 2023 / WACV-W 2022; thesis chapter 2): a frozen DINO ViT-S/16 whose
last-layer class-token attention maps give box proposals, scored by an external classifier on
images blurred outside each box (Algorithm 2.1, proposals.py); pixels sampled from the chosen
proposals train a localization head (method.py). Also ``dino-attn``, the attention baselines of
the thesis' Table 2.4: each head's binarized map, the one whose background-blurred image the
classifier scores highest."""
from __future__ import annotations

from pathlib import Path

from harness.hookspecs import hookimpl
from harness.registry import Entry, lazy


@hookimpl
def harness_register_methods():
    return [Entry("dips", lazy("harness.plugins.dips.method:DipsMethod"),
                  "DiPS: DINO class-token proposals scored by a classifier, sampled pixels train a localization head",
                  config=Path(__file__).parent / "config.py"),
            Entry("dino-attn", lazy("harness.plugins.dips.attn:DinoAttnMethod"),
                  "DINO attention baseline (DiPS Table 2.4): the head map whose blurred-background image scores highest",
                  config=Path(__file__).parent / "config_attn.py")]
