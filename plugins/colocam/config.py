# CoLo-CAM as in the paper (shared/reference/colocam_tcam.md section A). The authors' code
# differs (harness/configs/papers/colocam_code.py; see docs/fcam-family.md).
method = dict(
    name="colocam",
    cam_source="layercam",  # "LayerCAM in all main results"
    pseudo_labels=dict(
        k=1,  # one FG and one BG pixel per frame per step (Eq. 8)
        fg_draw="multinomial",
        fg_top_p=1.0,
        bg="complement",  # Eq. 7: C- = Omega - C+
        bg_p=0.1,
        dilation=1,
        roi="none",
        temporal=0,  # no temporal pooling of CAMs in CoLo-CAM
    ),
    losses=dict(
        pce=dict(weight=1.0),
        crf=dict(weight=2e-9, sigma_rgb=15.0, sigma_xy=100.0, method="auto", scale="exact", reference_pixels=224 * 224),
        size=dict(weight=1.0, t0=1.0, mult=1.01, tmax=10.0),
        coloc=dict(weight=5.0, sigma_rgb=15.0, adaptive=True, method="auto", scale="exact"),  # lambda_c, best 3-7 (Fig. 3b)
    ),
    clips=dict(n=4, style="adjacent", central_fraction=1.0),  # best n = 4 (Fig. 3a); adjacent is best
    decoder=dict(
        epochs=10,
        batch_size=32,
        lr=0.01,
        momentum=0.9,
        nesterov=True,
        weight_decay=1e-4,
        lr_decay_epochs=1000,
        lr_decay=0.1,
        hflip=True,
        channels=None,
    ),
)
