# TCAM as in the paper (WACV 2023; shared/reference/colocam_tcam.md section B). The authors'
# code differs (harness/configs/papers/tcam_code.py; see docs/fcam-family.md).
method = dict(
    name="tcam",
    cam_source="layercam",  # "LayerCAM in all experiments"
    pseudo_labels=dict(
        k=1,  # one FG and one BG pixel per frame per step (Eq. 3)
        fg_draw="multinomial",  # M: weighted by activation
        fg_top_p=1.0,
        bg="complement",  # C-: outside the Otsu region
        bg_p=0.1,
        dilation=1,
        roi="none",
        temporal=1,  # n previous frames in CAM-TMP (Eq. 1): best n = 1 on validation (Fig. 3)
    ),
    losses=dict(
        pce=dict(weight=1.0),
        crf=dict(weight=2e-9, sigma_rgb=15.0, sigma_xy=100.0, method="auto", scale="exact", reference_pixels=224 * 224),  # bandwidths from CoLo-CAM
        size=dict(weight=1.0, t0=1.0, mult=1.01, tmax=10.0),
        coloc=dict(weight=0.0),
    ),
    clips=dict(n=1),
    decoder=dict(
        epochs=10,  # 100 in the paper; 10 for the synthetic data
        batch_size=32,
        lr=0.01,  # searched in {0.1, 0.01, 0.001}
        momentum=0.9,
        nesterov=True,
        weight_decay=1e-4,
        lr_decay_epochs=1000,
        lr_decay=0.1,
        hflip=True,
        channels=None,
    ),
)
