# F-CAM as the authors' code runs it (fcam-wsol README, CUB / ResNet50; shared/reference
# fcam.md 1.4-1.6 and refcode_sbelharbi.md 4), where it departs from the paper:
# CAM (not LayerCAM) seeds, 3x3 dilated seeds, size-constraint weight 0.1, 50 epochs.
# Not reproduced: the code's 11x11 erosion of the foreground region before sampling.
# Use: harness run --plugin fcam --config fcam_code [--config fcam_cub_cam_baseline]
method = dict(
    cam_source="cam",
    pseudo_labels=dict(k=1, fg_draw="uniform", bg="bottom", bg_p=0.1, dilation=3),
    losses=dict(size=dict(weight=0.1), crf=dict(scale="lattice")),  # the weight 2e-9 is for their lattice's W.P
    decoder=dict(epochs=50, lr=0.01, lr_decay_epochs=1000, lr_decay=0.1),
)
