# F-CAM as in the paper (WACV 2022, Sec. 3 and 4.1; shared/reference/fcam.md). The authors'
# code differs (harness/configs/papers/fcam_code.py; see docs/fcam-family.md).
method = dict(
    name="fcam",
    cam_source="layercam",  # the CAM the pseudo-labels come from (any registered CAM source)
    pseudo_labels=dict(
        k=1,  # one pixel per region per frame per step (Eq. 2)
        fg_draw="uniform",  # "a uniformly sampled pixel from C+"
        fg_top_p=1.0,  # C+: every pixel above Otsu
        bg="bottom",  # C-: the lowest n- of the CAM's pixels
        bg_p=0.1,  # n-, chosen on val in [.1, .7] in the paper (value not reported; the code's 0.1)
        dilation=1,
        roi="none",  # "largest" / "largest-box": the largest Otsu component (or its box); "densest"
        temporal=0,  # previous frames max-pooled into the CAM (TCAM); 0 for F-CAM
    ),
    losses=dict(
        pce=dict(weight=1.0),  # alpha, searched in {1, .1}
        crf=dict(weight=2e-9, sigma_rgb=15.0, sigma_xy=100.0, method="auto", scale="exact", reference_pixels=224 * 224),
        size=dict(weight=1.0, t0=1.0, mult=1.01, tmax=10.0),  # no weight in Eq. 3
        coloc=dict(weight=0.0),
    ),
    clips=dict(n=1),  # single frames
    decoder=dict(
        epochs=10,  # 50 on CUB, 10 on OpenImages in the paper; 10 for the synthetic data
        batch_size=32,
        lr=0.01,  # "SGD, lr = .01 in all experiments"
        momentum=0.9,
        nesterov=True,
        weight_decay=1e-4,
        lr_decay_epochs=1000,  # no decay (the code's step 1000)
        lr_decay=0.1,
        hflip=True,
        channels=None,  # None: (256, 128, 64, 32, 16) as the authors' ResNet decoder
    ),
)
