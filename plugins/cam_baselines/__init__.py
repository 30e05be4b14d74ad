"""CAM baselines: a trained classifier read through a CAM source, one small file per method.

Every source is registered twice: as a CAM source (other methods take it by name, e.g. the
F-CAM family's pseudo-labels) and as a method plugin (`harness run --plugin gradcam`) that
trains, or reuses, the shared classifier stage and evaluates the source's maps.
"""
from __future__ import annotations

import importlib
import inspect

from harness.hookspecs import hookimpl
from harness.registry import Entry, lazy

# name -> (module, class, one-line description); the descriptions are written here so that
# registering (and `harness list`) imports no model code.
SOURCES = {
    "cam": ("cam", "CAM", "CAM: M_c = sum_k w_ck A_k, no ReLU (Zhou et al., CVPR 2016)"),
    "gradcam": ("gradcam", "GradCAM", "Grad-CAM: spatially averaged gradients as channel weights (Selvaraju et al., ICCV 2017)"),
    "gradcampp": ("gradcampp", "GradCAMPlusPlus", "Grad-CAM++: higher-order gradient weights (Chattopadhay et al., WACV 2018)"),
    "smoothgradcampp": ("smoothgradcampp", "SmoothGradCAMPlusPlus",
                        "Smooth Grad-CAM++: Grad-CAM++ averaged over noisy inputs (Omeiza et al., 2019)"),
    "xgradcam": ("xgradcam", "XGradCAM", "XGrad-CAM: activation-normalized gradient weights (Fu et al., BMVC 2020)"),
    "layercam": ("layercam", "LayerCAM", "LayerCAM: positive gradients as per-pixel weights (Jiang et al., TIP 2021)"),
    "scorecam": ("scorecam", "ScoreCAM", "Score-CAM: channel weights from masked-input scores (Wang et al., CVPRW 2020)"),
}


def source_class(name: str) -> type:
    module, cls, _ = SOURCES[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def source_options(cls: type) -> dict:
    """The constructor's keyword defaults: they become the method's `method.options` config."""
    return {
        p.name: p.default
        for p in inspect.signature(cls).parameters.values()
        if p.default is not inspect.Parameter.empty
    }


def _method_config(name: str):
    return lambda: {"method": {"name": name, "cam_source": name, "options": source_options(source_class(name))}}


@hookimpl
def harness_register_cam_sources():
    return [Entry(name, lazy(f"{__name__}.{module}:{cls}"), text) for name, (module, cls, text) in SOURCES.items()]


@hookimpl
def harness_register_methods():
    return [Entry(name, lazy(f"{__name__}.method:CamMethod"), f"Classifier + {text}", config=_method_config(name))
            for name, (_, _, text) in SOURCES.items()]
