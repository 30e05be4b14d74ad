"""First-party datasets and protocol presets, registered through the same entry point
group (``wsol_harness``) a third-party plugin uses."""
from __future__ import annotations

import importlib
from pathlib import Path

from harness.hookspecs import hookimpl
from harness.registry import Entry, lazy


@hookimpl
def harness_register_datasets():
    # Configs are computed when a run needs them: registering imports no data code.
    return [
        Entry(
            "synth-yto",
            _synth("yto"),
            "Synthetic YouTube-Objects: 10 classes, videos of shots, sparse GT boxes on val/test",
            config=lambda: _synth_config("synth-yto", "SYNTH_YTO_DEFAULTS"),
        ),
        Entry(
            "synth-cub",
            _synth("cub"),
            "Synthetic CUB-style images: one object each, a small fully-annotated val split",
            config=lambda: _synth_config("synth-cub", "SYNTH_CUB_DEFAULTS"),
        ),
        *_real_entries(),
    ]


def _synth_config(name: str, defaults: str) -> dict:
    from harness.data import synth

    return {"data": {"name": name, **getattr(synth, defaults)}}


# The real benchmarks: (name, module, reader object, description).
REAL_DATASETS = [
    ("ytov1", "harness.data.youtube_objects", "YTOV1",
     "YouTube-Objects v1.0 (Prest et al. 2012): 10 classes, 155 videos; data.root=PATH"),
    ("ytov2.2", "harness.data.youtube_objects", "YTOV2_2",
     "YouTube-Objects v2.2 (Kalogeiton et al. 2016): 10 classes, 2,667 test boxes; data.root=PATH"),
    ("cub", "harness.data.wsol_metadata", "CUB",
     "CUB-200-2011 in Choe et al.'s metadata format (CUBV2 val); data.root=PATH"),
    ("ilsvrc", "harness.data.wsol_metadata", "ILSVRC",
     "ILSVRC 2012 in Choe et al.'s metadata format (ImageNetV2 val); data.root=PATH"),
    ("openimages", "harness.data.wsol_metadata", "OPENIMAGES",
     "OpenImages30k (Choe et al.): 100 classes, instance masks for PxAP; data.root=PATH"),
]


def real_reader(module: str, attr: str):
    import importlib

    return getattr(importlib.import_module(module), attr)


def _real(module: str, attr: str):
    def build(data_cfg: dict, progress: bool = True):
        from harness.data.real import load_real

        return load_real(real_reader(module, attr), data_cfg, progress=progress)

    build.reader = lambda: real_reader(module, attr)  # `harness data prepare` checks through the reader
    return build


# Frames of each train shot a real video dataset trains on per epoch, drawn anew each epoch
# (loader.train_frames_per_shot): TrCAM-V "randomly selected a few frames for each shot for each
# gradient descent step". The index keeps every train frame (the readers' default).
VIDEO_FRAMES_PER_SHOT = 10


def _real_config(name: str, module: str, attr: str):
    def config() -> dict:
        from harness.data.real import COMMON_DEFAULTS

        reader = real_reader(module, attr)
        loader = {"num_workers": 2}  # JPEG decoding: keep both cores busy
        if reader.kind == "video":
            loader["train_frames_per_shot"] = VIDEO_FRAMES_PER_SHOT
        return {"data": {"name": name, **COMMON_DEFAULTS, **reader.defaults}, "loader": loader}

    return config


def _real_entries() -> list:
    return [Entry(name, _real(module, attr), text, config=_real_config(name, module, attr))
            for name, module, attr, text in REAL_DATASETS]


def _synth(kind: str):
    def build(data_cfg: dict, progress: bool = True):
        from harness.data.synth import load_synth

        params = {k: v for k, v in dict(data_cfg).items() if k != "name"}
        return load_synth(kind, params, progress=progress)

    return build


@hookimpl
def harness_register_protocols():
    from harness.protocol import Protocol
    from harness.config import read_file
    import harness.protocols as presets

    entries = []
    for path in sorted(Path(presets.__file__).parent.glob("*.py")):
        if path.name.startswith("_"):
            continue
        proto = Protocol.from_config(read_file(path)["protocol"])
        entries.append(Entry(proto.name, None, f"{proto.description} [{proto.axes}]", config=path, aliases=proto.aliases))
    return entries


@hookimpl
def harness_register_annotators():
    def entry(name, target, description, settings):
        return Entry(name, lazy(target), description, config=lambda: {"annotators": {name: settings()}})

    def module_defaults(module):
        return lambda: dict(importlib.import_module(module).DEFAULTS)

    def proposal_defaults(which):
        return lambda: getattr(importlib.import_module("harness.annotators.proposals"), which)()

    return [
        entry("cam-pg", "harness.annotators.proposals:CamPg",
              "Selective Search proposals, top 20% by classifier score, CAM pointing game, top classifier score",
              proposal_defaults("cam_pg_defaults")),
        entry("rpn", "harness.annotators.proposals:Rpn",
              "Faster R-CNN RPN proposals, top 20% by objectness, CAM pointing game, top classifier score",
              proposal_defaults("rpn_defaults")),
        entry("clip", "harness.annotators.clip:ClipAnnotator",
              "CLIP Grad-CAM for the class prompt, Otsu, box of the largest component",
              module_defaults("harness.annotators.clip")),
        entry("file", "harness.annotators.from_file:FileBoxes",
              "boxes read from a file (localization.txt lines or JSON)", module_defaults("harness.annotators.from_file")),
        entry("noisy-gt", "harness.annotators.noisy_gt:NoisyGt",
              "GT boxes perturbed (scale, shift, aspect) at a noise level", module_defaults("harness.annotators.noisy_gt")),
    ]
