"""CLIP-ES as a method plugin: nothing to train (or only the shared classifier, when it is the
class predictor); the protocol chooses the CAM threshold, ``harness sweep`` the prompt, the
background list, ``tau_caa`` and ``attn_layers``."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.errors import HarnessError
from harness.method import Method, NoTrainingStage, Prediction

from .model import check_visual, clip_es_maps
from .text import background_words, prompt_names, text_features, weights_identity

CLASS_INPUTS = ("gt", "predicted")
PREDICTORS = ("clip", "classifier")


class ClipEsMethod(Method):
    """``method.class_input``: ``gt`` localizes the image's label (GT-known), ``predicted`` the
    class the predictor names. ``method.predictor``: ``clip`` (zero-shot over the dataset's class
    prompts) or ``classifier`` (the shared classifier stage, trained or taken from the stage
    cache). The predictor's scores are the run's logits, so Top-1 Loc always uses its class.
    Checkpoints hold the classifier only: CLIP's weights come from where ``method.pretrained``
    or ``method.checkpoint`` says, every time."""

    def __init__(self, cfg, num_classes: int):
        super().__init__(cfg, num_classes)
        m = cfg.method
        if m.class_input not in CLASS_INPUTS:
            raise HarnessError(f"method.class_input={m.class_input!r}: use one of {CLASS_INPUTS}")
        if m.predictor not in PREDICTORS:
            raise HarnessError(f"method.predictor={m.predictor!r}: use one of {PREDICTORS}")
        self.background = background_words(m.background)
        self.templates = [m.templates] if isinstance(m.templates, str) else list(m.templates)
        from harness.annotators.clip_maps import load_clip

        self.clip, (mean, std), self.tokenizer = load_clip(
            m.model, m.pretrained, m.checkpoint, m.random_init, device="cpu", allow_download=False,
            option="method.checkpoint")
        self.clip.requires_grad_(False)  # only the Grad-CAM activation gets a gradient
        self.patch = check_visual(self.clip).patch_size[0]
        self.weights_id = weights_identity(m.model, m.pretrained, m.checkpoint, m.random_init)
        self._normalization = (tuple(mean), tuple(std))
        self._text: tuple[torch.Tensor, torch.Tensor] | None = None
        self.classifier = None
        if m.predictor == "classifier":
            from harness.models.classifier import shared_classifier

            self.classifier, stage = shared_classifier(cfg, num_classes)
            self._stages = [stage, NoTrainingStage()]
        else:
            self._stages = [NoTrainingStage()]

    @property
    def normalization(self):
        return self._normalization

    @property
    def stages(self):
        return self._stages

    def modules(self):
        return {"classifier": self.classifier} if self.classifier is not None else {}

    def to(self, device):
        self.clip.to(device)
        self._text = None
        return super().to(device)

    def eval_mode(self) -> None:
        self.clip.eval()
        super().eval_mode()

    def text(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(class prompts (C, D), background prompts (K, D)), embedded once per run (and cached
        on disk across runs)."""
        if self._text is None:
            from harness.runner import load_dataset

            m = self.cfg.method
            dataset = load_dataset(self.cfg, progress=False)  # the run's own, already loaded
            names = prompt_names(dataset.name, dataset.classes, m.get("class_names"))
            classes = text_features(self.clip, self.tokenizer, names, self.templates, self.weights_id, device)
            background = text_features(self.clip, self.tokenizer, self.background, self.templates, self.weights_id,
                                       device)
            self._text = (classes, background)
        return self._text

    def clip_input(self, images: torch.Tensor) -> torch.Tensor:
        """The frames at ``method.input_size``, or rounded up to multiples of the patch size."""
        size = self.cfg.method.get("input_size")
        h, w = images.shape[-2:]
        if size is None:
            target = (-(-h // self.patch) * self.patch, -(-w // self.patch) * self.patch)
        else:
            target = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
            if target[0] % self.patch or target[1] % self.patch or min(target) < self.patch:
                raise HarnessError(f"method.input_size={size!r}: each side must be a positive multiple of the "
                                   f"patch size {self.patch}")
        if target == (h, w):
            return images
        return F.interpolate(images, size=target, mode="bicubic", align_corners=False)

    def _classifier_logits(self, images: torch.Tensor) -> torch.Tensor:
        # the frames come normalized for CLIP; the classifier wants its own normalization
        mean, std = (torch.tensor(v, device=images.device).view(1, 3, 1, 1) for v in self._normalization)
        cmean, cstd = (torch.tensor(v, device=images.device).view(1, 3, 1, 1) for v in self.classifier.normalization)
        logits, _ = self.classifier((images * std + mean - cmean) / cstd)
        return logits

    def predict(self, images, classes):
        m = self.cfg.method
        class_text, background_text = self.text(images.device)
        logits = self._classifier_logits(images) if self.classifier is not None else None
        if m.class_input == "gt":
            target = classes
        else:
            target = logits.argmax(dim=1) if logits is not None else None  # None: CLIP's own top-1
        out = clip_es_maps(self.clip, self.clip_input(images), target, class_text, background_text,
                           attn_layers=m.attn_layers, tau_caa=m.tau_caa, sinkhorn_iters=m.sinkhorn_iters,
                           target=m.gradcam_target, backend=m.backend)
        return Prediction(maps=out.maps, logits=logits if logits is not None else out.logits)
