"""The ``clip`` pseudo-box annotator: CLIP Grad-CAM maps for the frame's class, Otsu, largest box.

For each validation frame: a CLIP text-conditioned localization map for the frame's class label
(Grad-CAM of the cosine similarity between the image embedding and the label's prompt-ensembled
text embedding), upsampled to the frame, min-max normalized, binarized with the evaluator's Otsu
threshold, and the box of the largest 8-connected component. A CLIP-ES refinement can plug in on
top of :func:`clip_gradcam` later; this module is plain Grad-CAM.

Pieces:

- :func:`load_clip`: an open_clip model (pretrained tag from the local cache, a checkpoint file,
  or random weights for tests), its normalization mean/std and its tokenizer;
- :func:`class_text_features`: ``(C, D)`` L2-normalized, prompt-ensembled class embeddings;
- :func:`clip_gradcam`: ``(B, h, w)`` Grad-CAM maps at token-grid resolution;
- :func:`otsu_largest_box`: the Otsu / largest-component box of one map;
- :func:`clip_boxes`: the whole annotator over a list of RGB uint8 frames.

Grad-CAM target layer. For open_clip ViTs the map is Grad-CAM on the *input tokens of the last
transformer block, after its first LayerNorm* (``visual.transformer.resblocks[-1].ln_1``), the
layer CLIP-ES and pytorch-grad-cam use for CLIP ViTs. The literal output of the last block does not
work with class-token pooling: the image embedding reads only the class token of that output
(``ln_post`` is per token), so the gradient on every patch token there is exactly zero and so is
the map. For ModifiedResNet (RN50-style) towers the target is ``visual.layer4`` (the last conv
stage, before attention pooling). The activations are captured with a forward hook; gradients are
taken with :func:`torch.autograd.grad` on that captured activation only, so nothing accumulates
into parameters' ``.grad`` and no ``requires_grad`` flag is changed.
"""
from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlparse

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from harness.errors import HarnessError
from harness.evaluation.box_accuracy import otsu_level
from harness.evaluation.boxes import check_map

__all__ = [
    "DEFAULT_TEMPLATES",
    "load_clip",
    "class_text_features",
    "clip_gradcam",
    "otsu_largest_box",
    "clip_boxes",
]

log = logging.getLogger(__name__)

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)

_CHECKPOINT_KEY = "annotators.clip.checkpoint"
# Model-config JSON files this process registered with open_clip: model name -> resolved path.
_REGISTERED_CONFIGS: dict[str, str] = {}


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _offline() -> bool:
    """HF offline mode, read from the environment now (huggingface_hub reads it once, at import)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - huggingface_hub is an open_clip dependency
        return False


def _hf_cache_dir(cache_dir: str | None) -> str:
    if cache_dir:
        return str(cache_dir)
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover
        return os.path.expanduser("~/.cache/huggingface/hub")


def _url_cache_dir(cache_dir: str | None) -> str:
    # open_clip.pretrained.download_pretrained_from_url's default.
    return str(cache_dir) if cache_dir else os.path.expanduser("~/.cache/clip")


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Can a TCP connection to ``url``'s host be opened within ``timeout`` seconds?

    A cheap probe before a download: with no network, huggingface_hub retries a HEAD request
    with back-off for ~23 s per file, and open_clip tries two files per tag. Behind an HTTP(S)
    proxy a direct connection says nothing, so the probe answers True and the download decides.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")):
        return True
    parsed = urlparse(url)
    host = parsed.hostname
    if not host:
        return False
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _resolve_model_name(model: str) -> str:
    """An open_clip model name; a path to a model-config JSON is registered under its file stem."""
    import open_clip

    if not isinstance(model, (str, os.PathLike)) or not str(model):
        raise HarnessError(f"CLIP model must be an open_clip model name or a model-config JSON path, got {model!r}")
    text = str(model)
    if text.startswith(("hf-hub:", "local-dir:")):
        return text
    path = Path(text).expanduser()
    if text.endswith(".json") or path.is_file():
        if not path.is_file():
            raise HarnessError(f"CLIP model config file not found: {path}")
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise HarnessError(f"CLIP model config {path} is not readable JSON: {e}") from e
        if not isinstance(cfg, dict) or not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
            raise HarnessError(
                f"CLIP model config {path} must be an open_clip model config with top-level keys "
                "'embed_dim', 'vision_cfg' and 'text_cfg' (like open_clip/model_configs/*.json)"
            )
        name = path.stem
        resolved = str(path.resolve())
        if name in open_clip.list_models() and _REGISTERED_CONFIGS.get(name) is None:
            if open_clip.get_model_config(name) != cfg:
                raise HarnessError(
                    f"CLIP model config {path}: its file name {name!r} is a built-in open_clip model "
                    "with a different config; rename the file (open_clip names configs by file stem)"
                )
        if open_clip.get_model_config(name) != cfg or _REGISTERED_CONFIGS.get(name) != resolved:
            # add_model_config rescans every registered path in order, so the latest one wins a
            # name clash; re-adding a path moves its config to the front again.
            open_clip.add_model_config(path)
            _REGISTERED_CONFIGS[name] = resolved
        if open_clip.get_model_config(name) != cfg:  # pragma: no cover - defensive
            raise HarnessError(f"could not register CLIP model config {path} with open_clip")
        return name
    name = text.replace("/", "-")  # open_clip's own cleaning: 'ViT-B/16' -> 'ViT-B-16'
    if open_clip.get_model_config(name) is None:
        raise HarnessError(
            f"unknown open_clip model {text!r}. List the valid names with "
            "`python -c \"import open_clip; print(open_clip.list_models())\"` "
            "(and their pretrained tags with `open_clip.list_pretrained()`), or pass the path of a "
            "model-config JSON file"
        )
    return name


def _weights_help(name: str, tag: str | None, cache_dir: str | None, hf_hub: str = "",
                  option: str = _CHECKPOINT_KEY) -> str:
    how = (
        f"To supply weights: (1) on a machine with internet, pre-download them into the open_clip "
        f"cache with `python -c \"import open_clip; open_clip.create_model('{name}', "
        f"pretrained='{tag}')\"` and copy the cache here: Hugging Face Hub weights live in "
        f"{_hf_cache_dir(cache_dir)} (set HF_HOME, or HF_HUB_CACHE, to choose it; default "
        f"~/.cache/huggingface/hub), weights fetched by URL in {_url_cache_dir(cache_dir)}; or "
        f"(2) pass {option}=/path/to/weights.pt, an open_clip state dict for {name!r}"
    )
    if hf_hub:
        how += f" (e.g. the open_clip_pytorch_model.bin of the hf-hub repo {hf_hub.rstrip('/')})"
    return how + ". random_init=True builds the architecture with random weights and exists only for tests."


def _cached_tag_file(cfg: dict, cache_dir: str | None) -> str | None:
    """The local file of a pretrained tag's weights, looked up without any network access."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    if cfg.get("file"):
        return cfg["file"] if os.path.isfile(cfg["file"]) else None
    hf_hub = cfg.get("hf_hub", "")
    if hf_hub:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            repo_id, filename = os.path.split(hf_hub)
            filename = filename or HF_WEIGHTS_NAME
            candidates = []
            # open_clip prefers a .safetensors alternative (pretrained._get_safe_alternatives).
            if filename == HF_WEIGHTS_NAME:
                candidates.append(HF_SAFE_WEIGHTS_NAME)
            elif filename.endswith((".bin", ".pth")):
                candidates.append(filename[:-4] + ".safetensors")
            candidates.append(filename)
            for fn in candidates:
                try:
                    found = try_to_load_from_cache(repo_id, fn, cache_dir=cache_dir)
                except Exception:
                    found = None
                if isinstance(found, str) and os.path.isfile(found):
                    return found
    url = cfg.get("url", "")
    if url:
        target = os.path.join(_url_cache_dir(cache_dir), os.path.basename(url))
        if os.path.isfile(target):
            return target
    return None


def _tag_weights(name: str, tag: str, cache_dir: str | None, allow_download: bool,
                 option: str = _CHECKPOINT_KEY) -> str:
    """Path of the weights of ``tag``: the local cache, else a download when online."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(name, tag)
    found = _cached_tag_file(cfg, cache_dir)
    if found:
        return found
    hf_hub = cfg.get("hf_hub", "")
    help_ = _weights_help(name, tag, cache_dir, hf_hub, option)
    where = f"CLIP weights for model {name!r}, pretrained tag {tag!r}"
    if not allow_download or _offline():
        why = "downloads are disabled (allow_download=False)" if not allow_download else "HF_HUB_OFFLINE is set"
        raise HarnessError(f"{where} are not in the local cache and {why}. {help_}")
    from huggingface_hub import constants

    source = constants.ENDPOINT if hf_hub else cfg.get("url", "")
    if not source or not _reachable(source):
        raise HarnessError(f"{where} are not in the local cache and {source or 'their source'} cannot be reached (offline?). {help_}")
    try:
        path = open_clip.download_pretrained(cfg, cache_dir=cache_dir)
    except Exception as e:
        raise HarnessError(f"{where} could not be downloaded ({type(e).__name__}: {str(e)[:300]}). {help_}") from e
    if not path or not os.path.isfile(path):
        raise HarnessError(f"{where}: open_clip returned no weights file. {help_}")
    return path


def _load_weights(model: torch.nn.Module, path: str, name: str, tag: str | None, cache_dir: str | None,
                  option: str = _CHECKPOINT_KEY) -> None:
    import open_clip

    try:
        open_clip.load_checkpoint(model, path, strict=True, weights_only=True)
    except Exception as e:
        raise HarnessError(
            f"CLIP checkpoint {path} could not be loaded into model {name!r}: {type(e).__name__}: "
            f"{str(e)[:500]}. It must be an open_clip state dict (.pt/.bin/.safetensors; TorchScript "
            f"archives are not read) for exactly this architecture. "
            + _weights_help(name, tag or "<tag>", cache_dir, option=option)
        ) from e


def load_clip(
    model: str = "ViT-B-16",
    pretrained: str | None = "openai",
    checkpoint: str | os.PathLike | None = None,
    random_init: bool = False,
    device: str | torch.device = "cpu",
    *,
    cache_dir: str | None = None,
    allow_download: bool = True,
    option: str = _CHECKPOINT_KEY,
) -> tuple[torch.nn.Module, tuple[tuple[float, ...], tuple[float, ...]], Any]:
    """An open_clip CLIP model in eval mode, its normalization ``(mean, std)`` and its tokenizer.

    ``model`` is an open_clip model name (``open_clip.list_models()``; ``'ViT-B/16'`` is cleaned
    to ``'ViT-B-16'`` as open_clip does), ``hf-hub:``/``local-dir:`` names passed through, or the
    path of a model-config JSON (registered with ``open_clip.add_model_config`` under its file
    stem; a stem that is a built-in model with a different config is refused).

    Weights, in order of precedence:

    - ``random_init=True``: the architecture with random weights (for tests only);
    - ``checkpoint``: a state-dict file loaded strictly into ``create_model(model, pretrained=None)``;
      when ``pretrained`` is also a known tag for the model, the tag still sets QuickGELU and the
      preprocessing (the checkpoint replaces only the cache look-up);
    - ``pretrained``: an open_clip pretrained tag, read from the local cache (HF Hub cache, or
      ``~/.cache/clip`` for URL weights; ``cache_dir`` overrides both) without network access;
      if absent and ``allow_download`` and not offline (``HF_HUB_OFFLINE``), downloaded after a
      quick reachability probe. A file path is accepted as ``pretrained`` too (as open_clip).

    A tag whose weights were trained with QuickGELU (the ``openai`` tags) builds the model with
    QuickGELU: open_clip 3.x only *warns* about that mismatch for plain names like ``ViT-B-16``.
    No usable weights raise :class:`HarnessError` saying how to supply them; ``option`` is the
    config key the messages tell the user to set.
    """
    import open_clip

    name = _resolve_model_name(model)
    tag_cfg: dict = {}
    tag = None if pretrained in (None, "") else str(pretrained)
    if name.startswith(("hf-hub:", "local-dir:")):
        tag = None  # the schema names its own weights; open_clip ignores `pretrained` for it
    if tag is not None and not random_init:
        tag_cfg = open_clip.get_pretrained_cfg(name, tag)
        if not tag_cfg:
            if checkpoint is None and os.path.isfile(tag):
                checkpoint, tag = tag, None
            elif checkpoint is None:
                tags = open_clip.list_pretrained_tags_by_model(name)
                raise HarnessError(
                    f"unknown pretrained tag {tag!r} for CLIP model {name!r}; its tags are "
                    f"{tags or 'none (a custom config: pass a checkpoint)'} "
                    "(all pairs: `python -c \"import open_clip; print(open_clip.list_pretrained())\"`). "
                    + _weights_help(name, tag, cache_dir, option=option)
                )
            else:
                tag = None
    if checkpoint is not None and not random_init:
        ck = Path(checkpoint).expanduser()
        if not ck.is_file():
            raise HarnessError(
                f"CLIP checkpoint not found: {ck} (given as {option} for model {name!r}). "
                "Pass the path of an existing open_clip state-dict file."
            )
        weights: str | None = str(ck)
    elif random_init:
        weights = None
        if tag is not None or checkpoint is not None:
            log.info("load_clip(random_init=True): ignoring pretrained=%r / checkpoint=%r", pretrained, checkpoint)
    elif tag is not None:
        weights = _tag_weights(name, tag, cache_dir, allow_download, option)
    elif name.startswith(("hf-hub:", "local-dir:")):
        weights = None  # create_model loads the schema's own weights
    else:
        raise HarnessError(f"no weights given for CLIP model {name!r}. " + _weights_help(name, "<tag>", cache_dir, option=option))

    kwargs: dict[str, Any] = dict(device=device, pretrained_image=False, pretrained_text=False)
    if tag_cfg:
        if tag_cfg.get("quick_gelu"):
            kwargs["force_quick_gelu"] = True
        pp = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if tag_cfg.get(k) is not None}
        if pp:
            kwargs["force_preprocess_cfg"] = pp
    try:
        net = open_clip.create_model(name, pretrained=None, cache_dir=cache_dir, **kwargs)
    except Exception as e:
        raise HarnessError(f"could not build CLIP model {name!r}: {type(e).__name__}: {str(e)[:500]}") from e
    if weights is not None:
        _load_weights(net, weights, name, tag, cache_dir, option)
    net.eval()

    pp_cfg = getattr(net.visual, "preprocess_cfg", None) or {}
    mean = tuple(float(v) for v in pp_cfg.get("mean", getattr(net.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN))
    std = tuple(float(v) for v in pp_cfg.get("std", getattr(net.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD))
    try:
        tokenizer = open_clip.get_tokenizer(name, cache_dir=cache_dir)
    except Exception as e:
        raise HarnessError(f"could not build the tokenizer of CLIP model {name!r}: {type(e).__name__}: {e}") from e
    return net, (mean, std), tokenizer


# --------------------------------------------------------------------------------------------
# Text and Grad-CAM
# --------------------------------------------------------------------------------------------


def _model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


@torch.no_grad()
def class_text_features(
    model: torch.nn.Module,
    tokenizer: Any,
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    device: str | torch.device | None = "cpu",
    batch_size: int = 256,
) -> torch.Tensor:
    """``(C, D)`` float32 class embeddings on ``device``: per class, the mean of the L2-normalized
    text embeddings of ``template.format(name)`` over ``templates``, L2-normalized again (CLIP's
    prompt ensembling). Runs on the model's device; the model is put in eval mode for the call."""
    if isinstance(templates, str):
        templates = (templates,)
    names = list(class_names)
    if not names:
        raise HarnessError("class_text_features: class_names is empty")
    templates = list(templates)
    if not templates or not all(isinstance(t, str) and "{}" in t for t in templates):
        raise HarnessError(f"prompt templates must be strings containing '{{}}', got {templates!r}")
    mdev, _ = _model_device_dtype(model)
    prompts = [t.format(n) for n in names for t in templates]
    was_training = model.training
    model.eval()
    try:
        chunks = []
        for i in range(0, len(prompts), batch_size):
            tokens = tokenizer(prompts[i : i + batch_size]).to(mdev)
            chunks.append(F.normalize(model.encode_text(tokens).float(), dim=-1))
    finally:
        model.train(was_training)
    emb = torch.cat(chunks).reshape(len(names), len(templates), -1).mean(dim=1)
    out = F.normalize(emb, dim=-1)
    return out.to(device) if device is not None else out


def _gradcam_target(visual: torch.nn.Module) -> tuple[str, torch.nn.Module]:
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.transformer import VisionTransformer

    if isinstance(visual, VisionTransformer):
        return "vit", visual.transformer.resblocks[-1].ln_1
    if isinstance(visual, ModifiedResNet):
        return "rn", visual.layer4
    raise HarnessError(
        f"clip_gradcam supports open_clip VisionTransformer and ModifiedResNet image towers, "
        f"not {type(visual).__name__}"
    )


def _input_hw(visual: torch.nn.Module) -> tuple[int, int]:
    size = getattr(visual, "image_size", None)
    if size is None:
        raise HarnessError(f"cannot tell the input size of {type(visual).__name__}; pass input_size")
    if isinstance(size, (tuple, list)):
        return int(size[0]), int(size[1])
    return int(size), int(size)


def clip_gradcam(
    model: torch.nn.Module,
    images: torch.Tensor,
    text_features: torch.Tensor,
    labels: torch.Tensor | Sequence[int],
) -> torch.Tensor:
    """``(B, h, w)`` non-negative float32 Grad-CAM maps (token-grid resolution, model's device).

    ``images``: ``(B, 3, S, S)``, already normalized, at the model's input size.
    ``text_features``: ``(C, D)`` from :func:`class_text_features`; ``labels``: ``(B,)`` in ``[0, C)``.
    The score of image ``b`` is the cosine similarity of its image embedding with
    ``text_features[labels[b]]`` (renormalized). With ``A`` the target activation (see the module
    docstring: ViT ``resblocks[-1].ln_1`` patch tokens, RN ``layer4``) and ``G = d score / d A``:
    channel weights ``w = mean of G over tokens (ViT patch tokens) or positions (RN)``,
    map ``= ReLU(sum_c w_c A_c)``.

    Only the captured activation gets a gradient: the forward runs under ``torch.no_grad`` and the
    hook switches grad mode on from the target layer on, with the activation detached as a leaf,
    so no graph is recorded through the layers before it, nothing accumulates into parameters'
    ``.grad`` and no ``requires_grad`` flag changes. The model is in eval mode during the call
    (its previous mode is restored), so each image's map depends on that image alone.
    """
    visual = getattr(model, "visual", None)
    if visual is None:
        raise HarnessError("clip_gradcam needs an open_clip CLIP model (with .visual)")
    kind, target = _gradcam_target(visual)
    mdev, mdtype = _model_device_dtype(model)
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise HarnessError(f"clip_gradcam: images must be a (B, 3, S, S) tensor, got {getattr(images, 'shape', type(images))}")
    hw = _input_hw(visual)
    if tuple(images.shape[-2:]) != hw:
        raise HarnessError(f"clip_gradcam: images are {tuple(images.shape[-2:])} but the model takes {hw}; resize first")
    B = images.shape[0]
    labels_t = torch.as_tensor(labels, dtype=torch.long).reshape(-1).to(mdev)
    if labels_t.numel() != B:
        raise HarnessError(f"clip_gradcam: {labels_t.numel()} labels for {B} images")
    tf = torch.as_tensor(text_features).to(mdev, torch.float32)
    if tf.ndim != 2:
        raise HarnessError(f"clip_gradcam: text_features must be (C, D), got {tuple(tf.shape)}")
    if B and (int(labels_t.min()) < 0 or int(labels_t.max()) >= tf.shape[0]):
        raise HarnessError(f"clip_gradcam: labels must lie in [0, {tf.shape[0]}), got {labels_t.tolist()}")
    tf = F.normalize(tf, dim=-1)
    images = images.to(mdev, mdtype)

    captured: list[torch.Tensor] = []

    def hook(module, inputs, output):
        leaf = output.detach().requires_grad_(True)
        captured.append(leaf)
        torch.set_grad_enabled(True)  # from here on; the no_grad block below restores the mode
        return leaf

    was_training = model.training
    model.eval()
    handle = target.register_forward_hook(hook)
    try:
        with torch.no_grad():
            feats = model.encode_image(images)
            if isinstance(feats, (tuple, list)):  # output_tokens=True towers
                feats = feats[0]
            if len(captured) != 1:
                raise HarnessError(f"clip_gradcam: the target layer ran {len(captured)} times in one forward, expected once")
            act = captured[0]
            score = (F.normalize(feats.float(), dim=-1) * tf[labels_t]).sum(dim=-1)
            (grads,) = torch.autograd.grad(score.sum(), act)
    finally:
        handle.remove()
        model.train(was_training)

    act = act.detach().float()
    grads = grads.float()
    if kind == "vit":
        if not getattr(visual.transformer, "batch_first", False):  # seq-first (L, B, D) layout
            act, grads = act.transpose(0, 1), grads.transpose(0, 1)
        gh, gw = visual.grid_size
        prefix = act.shape[1] - gh * gw  # the class token (open_clip has exactly one)
        if prefix < 0:
            raise HarnessError(f"clip_gradcam: {act.shape[1]} tokens for a {gh}x{gw} grid")
        a, g = act[:, prefix:], grads[:, prefix:]
        w = g.mean(dim=1, keepdim=True)
        cam = (a * w).sum(dim=-1).reshape(B, gh, gw)
    else:
        w = grads.mean(dim=(2, 3), keepdim=True)
        cam = (act * w).sum(dim=1)
    return F.relu(cam)


# --------------------------------------------------------------------------------------------
# Boxes
# --------------------------------------------------------------------------------------------


def otsu_largest_box(score_map: np.ndarray) -> tuple[int, int, int, int]:
    """Inclusive ``(x0, y0, x1, y1)`` box of the largest 8-connected component of the Otsu mask.

    ``score_map``: ``(H, W)`` in ``[0, 1]`` (validated by the evaluator's ``check_map``). It is
    quantized as the evaluator does, ``q = (map * 255).astype(uint8)``, binarized with the
    evaluator's Otsu level as ``q > otsu_level(q)``, and labeled with
    ``cv2.connectedComponentsWithStats(connectivity=8)``. The largest component is the one with
    the most pixels; among equally large ones the first label wins (OpenCV numbers components in
    raster order of their first pixel, top row first, then left to right). An empty mask (a
    constant map) gives the full image box ``(0, 0, W - 1, H - 1)``.
    """
    s = check_map(score_map)
    height, width = s.shape
    q = (s * 255).astype(np.uint8)
    mask = (q > otsu_level(q)).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return 0, 0, width - 1, height - 1
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x0, y0 = int(stats[k, cv2.CC_STAT_LEFT]), int(stats[k, cv2.CC_STAT_TOP])
    return x0, y0, x0 + int(stats[k, cv2.CC_STAT_WIDTH]) - 1, y0 + int(stats[k, cv2.CC_STAT_HEIGHT]) - 1


def _to_chw_float(frame: Any, i: int) -> torch.Tensor:
    arr = np.asarray(frame)
    if arr.dtype != np.uint8:
        raise HarnessError(f"frame {i}: expected an RGB uint8 image, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise HarnessError(f"frame {i}: expected an (H, W, 3) RGB uint8 image, got shape {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float().div_(255.0)


def _minmax(m: torch.Tensor) -> torch.Tensor:
    lo, hi = m.min(), m.max()
    if not torch.isfinite(hi - lo) or float(hi - lo) <= 0.0:
        return torch.zeros_like(m)
    return ((m - lo) / (hi - lo)).clamp_(0.0, 1.0)


def clip_boxes(
    model: torch.nn.Module,
    mean_std: tuple[Sequence[float], Sequence[float]],
    tokenizer: Any,
    images_uint8: Sequence[np.ndarray],
    labels: Sequence[int],
    class_names: Sequence[str],
    *,
    input_size: int | tuple[int, int] | None = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    batch_size: int = 32,
    device: str | torch.device | None = "cpu",
    progress: bool = False,
    cam_fn: Any = None,
) -> tuple[list[tuple[int, int, int, int]], list[np.ndarray]]:
    """One box per frame from its class label: ``(boxes, maps)``.

    Each RGB uint8 ``(H, W, 3)`` frame (sizes may differ) is resized to the model's input size
    (``input_size`` overrides, ``int`` or ``(h, w)``; bicubic with antialiasing, the whole frame
    squashed, no center crop, so the map covers the whole frame), normalized with ``mean_std``;
    its Grad-CAM map for ``labels[i]`` (:func:`clip_gradcam`) is upsampled bilinearly
    (``align_corners=False``) to ``(H, W)`` and min-max normalized (a constant map becomes
    zeros). ``cam_fn(model, images, text_features, labels) -> (B, h, w)`` replaces
    :func:`clip_gradcam` (the CLIP-ES maps use it). The box is :func:`otsu_largest_box` of that map, inclusive pixel coordinates in the
    frame's grid. ``maps`` are the ``(H, W)`` float32 maps in ``[0, 1]``. The model is moved to
    ``device`` (``None``: where it already is).
    """
    frames = list(images_uint8)
    labels = [int(v) for v in labels]
    if len(frames) != len(labels):
        raise HarnessError(f"clip_boxes: {len(frames)} frames but {len(labels)} labels")
    if any(not 0 <= v < len(class_names) for v in labels):
        raise HarnessError(f"clip_boxes: labels must lie in [0, {len(class_names)})")
    if int(batch_size) < 1:
        raise HarnessError(f"clip_boxes: batch_size must be >= 1, got {batch_size}")
    if device is not None:
        model.to(device)
    mdev, _ = _model_device_dtype(model)
    if input_size is None:
        size = _input_hw(model.visual)
    elif isinstance(input_size, int):
        size = (int(input_size), int(input_size))
    else:
        size = (int(input_size[0]), int(input_size[1]))
    mean = torch.tensor([float(v) for v in mean_std[0]], device=mdev).view(1, 3, 1, 1)
    std = torch.tensor([float(v) for v in mean_std[1]], device=mdev).view(1, 3, 1, 1)
    text = class_text_features(model, tokenizer, class_names, templates, device=mdev)

    boxes: list[tuple[int, int, int, int]] = []
    maps: list[np.ndarray] = []
    starts = range(0, len(frames), int(batch_size))
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="clip boxes", unit="batch")
    for s in starts:
        chunk = frames[s : s + int(batch_size)]
        batch = []
        for j, f in enumerate(chunk):
            x = _to_chw_float(f, s + j).to(mdev)[None]
            if tuple(x.shape[-2:]) != size:
                x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp_(0.0, 1.0)
            batch.append(x)
        x = (torch.cat(batch) - mean) / std
        cams = (cam_fn or clip_gradcam)(model, x, text, labels[s : s + len(chunk)])
        for cam, f in zip(cams, chunk):
            h, w = np.asarray(f).shape[:2]
            up = F.interpolate(cam[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
            m = _minmax(up).cpu().numpy().astype(np.float32)
            maps.append(m)
            boxes.append(otsu_largest_box(m))
    return boxes, maps
