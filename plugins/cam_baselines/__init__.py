"""CAM baselines: a trained classifier read through a CAM source, one small file per method.

Every source is registered twice: as a CAM source (other methods take it by name, e.g. the
F-CAM family's pseudo-labels) and as a method plugin (`harness run --plugin gradcam`) that
trains, or reuses, the shared classifier stage and evaluates the source's maps.
"""
from __future__ import annotations

import importlib
import inspect

from harness.hookspecs import hookimpl
from harness.registry import Entry

# name -> (module, class)
SOURCES = {
    "cam": ("cam", "CAM"),
    "gradcam": ("gradcam", "GradCAM"),
    "gradcampp": ("gradcampp", "GradCAMPlusPlus"),
    "smoothgradcampp": ("smoothgradcampp", "SmoothGradCAMPlusPlus"),
    "xgradcam": ("xgradcam", "XGradCAM"),
    "layercam": ("layercam", "LayerCAM"),
    "scorecam": ("scorecam", "ScoreCAM"),
}


def source_class(name: str) -> type:
    module, cls = SOURCES[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def source_options(cls: type) -> dict:
    """The constructor's keyword defaults: they become the method's `method.options` config."""
    return {
        p.name: p.default
        for p in inspect.signature(cls).parameters.values()
        if p.default is not inspect.Parameter.empty
    }


def _summary(cls: type) -> str:
    return (inspect.getdoc(cls) or cls.__name__).splitlines()[0]


@hookimpl
def harness_register_cam_sources():
    return [Entry(name, source_class(name), _summary(source_class(name))) for name in SOURCES]


@hookimpl
def harness_register_methods():
    from .method import CamMethod

    entries = []
    for name in SOURCES:
        cls = source_class(name)
        config = {"method": {"name": name, "cam_source": name, "options": source_options(cls)}}
        entries.append(Entry(name, CamMethod, f"Classifier + {_summary(cls)}", config=config))
    return entries
