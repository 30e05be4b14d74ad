# CLIP-ES (Lin et al., CVPR 2023) as a training-free WSOL method: softmax Grad-CAM on CLIP,
# refined with class-aware attention affinity (shared/reference/refcode_eval_cam_clipes.md §3).
# Every value below is the authors' unless marked; docs/clip-es.md says how to use real weights.
method = dict(
    name="clip-es",
    backbone="clip",  # what leaderboards match columns on: CLIP's image tower, not the classifier
    model="ViT-B-16",  # an open_clip model name, or a model-config JSON path
    pretrained="openai",  # an open_clip pretrained tag, read from the local open_clip cache
    checkpoint=None,  # or an open_clip state-dict file for `model` (overrides the cache look-up)
    random_init=False,  # random weights: for tests only
    templates=["a clean origami {}."],  # the paper's prompt, for classes and background alike
    background="voc",  # the 25 VOC words; a list name in names.toml or a list of words
    class_names=None,  # None: names.toml / the dataset's names cleaned up; or one name per class
    class_input="gt",  # which class is localized: "gt" (GT-known) or "predicted"
    predictor="clip",  # who predicts (for "predicted" and Top-1 Loc): "clip" zero-shot or "classifier"
    gradcam_target="softmax",  # the Grad-CAM score: the softmax over class + background, or "logit"
    tau_caa=0.4,  # CAM box threshold of CAA (0.4 VOC, 0.7 COCO in the paper)
    attn_layers=8,  # attention maps averaged: the last 8 blocks
    sinkhorn_iters=3,  # rounds of column-then-row normalization
    input_size=None,  # None: the served frame, rounded up to a multiple of the patch; or int / [h, w]
    backend="auto",  # CAA: "auto" (Triton on CUDA, else torch), "torch" or "triton"
)
