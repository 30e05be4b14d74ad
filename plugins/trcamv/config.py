# TrCAM-V (Murtaza et al., thesis Appendix II; shared/reference/thesis_protocol_trcamv.md §5).
# Choices the paper leaves open are marked "choice"; docs/trcamv.md lists each one.
method = dict(
    name="trcamv",
    backbone=dict(
        arch="vit_small_patch16_224.dino",  # DeiT-S/16 with DINO weights
        pretrained=None,  # None: the cached weights, else random init (warned); True: cached, required;
        # False: random init; or a state_dict checkpoint path
        depth=None,  # None: the architecture's own; tests build tiny ViTs with these three
        embed_dim=None,
        num_heads=None,
    ),
    decoder_channels=(256, 128, 64, 32),  # choice: localization head G, four x2 blocks (16x upsampling)
    # Where the pseudo-label maps come from: "clip-es" (the paper) or a CAM source over the shared
    # classifier. layercam by default so that a run works offline, where no CLIP weights exist;
    # harness/configs/papers/trcamv_paper.py sets clip-es.
    map_source="layercam",
    # map_source="clip-es": the clip-es plugin's settings (plugins/clip_es/config.py), None = its default
    clip_es=dict(model=None, pretrained=None, checkpoint=None, random_init=None, templates=None, background=None,
                 class_names=None, gradcam_target=None, tau_caa=None, attn_layers=None, sinkhorn_iters=None,
                 input_size=None, backend=None),
    pseudo_labels=dict(
        roi="densest",  # the densest connected Otsu region (choice: highest mean activation)
        fg_top_p=0.1,  # choice: n = 10% -- the top n% of that region ...
        bg="bottom",
        bg_p=0.1,  # ... and the bottom n% of the map
        k=3,  # choice: "a few pixels" per region per frame per step
        fg_draw="multinomial",  # as DiPS: foreground weighted by activation, background uniform
        dilation=1,
    ),
    losses=dict(
        cls=dict(weight=1.0),  # cross-entropy on the video label (class token head)
        pce=dict(weight=1.0),  # lambda_PAL (choice in [0, 1]: 1)
        crf=dict(weight=2e-9, sigma_rgb=15.0, sigma_xy=100.0, method="auto", scale="exact", reference_pixels=224 * 224),
        size=dict(weight=1.0, t0=1.0, mult=1.01, tmax=10.0),  # lambda_ASL (choice: 1), F-CAM's log barrier
    ),
    train=dict(
        epochs=10,  # 100 in the paper; 10 for the synthetic data
        batch_size=32,
        lr=0.001,  # choice within the paper's search range [1e-5, 0.1]
        momentum=0.9,
        weight_decay=1e-4,
        lr_decay_epochs=1000,
        lr_decay=0.1,
        hflip=True,
    ),
)
