"""CLIP-ES's text side: the name each class is prompted with, the background words, and the
text embeddings, cached on disk by model and prompts.

The embeddings themselves come from the ``clip`` annotator's
:func:`harness.annotators.clip_maps.class_text_features` (CLIP's prompt ensembling), so the
annotator and the plugin embed text the same way.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import torch

from harness import io
from harness.errors import HarnessError
from harness.paths import harness_home

log = logging.getLogger(__name__)

NAMES_FILE = Path(__file__).with_name("names.toml")


@lru_cache(maxsize=1)
def _table() -> dict:
    with NAMES_FILE.open("rb") as f:
        return tomllib.load(f)


def clean_name(raw: str) -> str:
    """A dataset's class name as a prompt word: ``"001.Black_footed_Albatross"`` -> ``"black
    footed albatross"``, ``"ellipse-stripes"`` -> ``"ellipse stripes"``."""
    name = re.sub(r"^\d+[._ -]*", "", str(raw))
    return " ".join(re.sub(r"[_\-]+", " ", name).split()).lower() or str(raw)


def prompt_names(dataset: str, classes: Sequence[str], override: Sequence[str] | None = None) -> list[str]:
    """The name each class of ``dataset`` fills the prompt template with, in label order.

    ``override`` (``method.class_names``), when given, is used as is; it must name every class.
    Otherwise: the dataset's list in names.toml (YouTube-Objects: the VOC names with synonyms),
    ILSVRC's WordNet ids through open_clip's ImageNet class names, else the cleaned class names.
    """
    classes = list(classes)
    if override:
        names = [str(n) for n in override]
        if len(names) != len(classes):
            raise HarnessError(f"method.class_names has {len(names)} names but {dataset} has {len(classes)} classes; "
                               f"give one prompt name per class, in label order")
        return names
    table = _table()
    listed = table["datasets"].get(dataset)
    if listed is not None:
        known = table["names"][listed]
        missing = [c for c in classes if c not in known]
        if missing:
            raise HarnessError(f"names.toml lists {dataset} under [names.{listed}], which lacks {missing}")
        return [known[c] for c in classes]
    if dataset == "ilsvrc" and len(classes) == 1000 and all(re.fullmatch(r"n\d{8}", c) for c in classes):
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        if list(classes) != sorted(classes):
            raise HarnessError("ILSVRC classes are not in WordNet-id order, so open_clip's ImageNet names "
                               "cannot be matched to them; pass method.class_names")
        return list(IMAGENET_CLASSNAMES)
    return [clean_name(c) for c in classes]


def background_words(spec: str | Sequence[str]) -> list[str]:
    """``method.background``: a list name of names.toml's [background] table, or the words."""
    table = _table()["background"]
    if isinstance(spec, str):
        if spec not in table:
            raise HarnessError(f"method.background={spec!r} is not a known list; use one of {sorted(table)} "
                               f"or a list of words, e.g. ['sky', 'grass']")
        return list(table[spec])
    words = [str(w) for w in spec]
    if not words or not all(w.strip() for w in words):
        raise HarnessError(f"method.background={list(spec)!r}: give a non-empty list of words, or one of {sorted(table)}")
    return words


def _cache_path(weights_id: str, names: Sequence[str], templates: Sequence[str]) -> Path:
    key = json.dumps({"weights": weights_id, "names": list(names), "templates": list(templates)}, sort_keys=True)
    return harness_home() / "clip-es" / "text" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.pt"


def text_features(model: torch.nn.Module, tokenizer: Any, names: Sequence[str], templates: Sequence[str],
                  weights_id: str | None, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(len(names), D)`` L2-normalized prompt embeddings on ``device``.

    Cached under ``$HARNESS_HOME/clip-es/text/`` keyed by ``weights_id`` (which weights: the tag
    or the checkpoint file, see :func:`weights_identity`), the names and the templates. Random
    weights (``weights_id=None``) are never cached. A damaged or mismatched cache file is
    recomputed and replaced."""
    from harness.annotators.clip_maps import class_text_features

    names, templates = list(names), list(templates)
    path = _cache_path(weights_id, names, templates) if weights_id else None
    if path is not None and path.is_file():
        try:
            saved = io.load_tensors(path, what="CLIP-ES text cache")
            feats = saved["features"]
            if saved.get("names") == names and saved.get("templates") == templates and feats.shape[0] == len(names):
                return feats.to(device)
            log.warning("CLIP-ES text cache %s does not match its key; recomputing it", path)
        except (HarnessError, KeyError, TypeError, AttributeError) as exc:
            log.warning("CLIP-ES text cache %s is unreadable (%s); recomputing it", path, exc)
    feats = class_text_features(model, tokenizer, names, templates, device=device)
    if path is not None:
        io.save_tensors(path, {"features": feats.detach().cpu(), "names": names, "templates": templates})
    return feats


def weights_identity(model: str, pretrained: str | None, checkpoint: str | None, random_init: bool) -> str | None:
    """What identifies the CLIP weights in cache keys: the model and tag, or the checkpoint's
    resolved path, size and modification time (hashing ~600 MB on every run is not worth it);
    None for random weights."""
    if random_init:
        return None
    if checkpoint:
        p = Path(checkpoint).expanduser().resolve()
        st = p.stat()
        return f"{model}|file:{p}|{st.st_size}|{st.st_mtime_ns}"
    return f"{model}|tag:{pretrained}"
