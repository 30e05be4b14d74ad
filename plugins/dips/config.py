# DiPS (Murtaza et al., IVC 2023; thesis chapter 2; shared/reference/thesis_dips_tedloc.md §1).
# Choices the paper leaves open are marked "choice"; docs/dips.md lists each one.
method = dict(
    name="dips",
    variant="ivc",  # "ivc": f_l a CNN decoder over the token embedding (IVC 2023); "wacvw": a U-Net over
    # the image (the frozen f_r's features) plus L_CLS (WACV-W 2022)
    backbone=dict(
        arch="vit_small_patch16_224.dino",  # DINO ViT-S/16 ("DeiT-S" in the tables)
        pretrained=None,  # None: the cached DINO weights, else random init (warned); True: cached, required;
        # False: random init; or a state_dict checkpoint path
        finetune=None,  # fine-tune the ViT on the class labels first: None = only without DINO weights
        # (the thesis allows "fine-tune it on the corresponding dataset"); True / False
        depth=None,  # None: the architecture's own; tests build tiny ViTs with these three
        embed_dim=None,
        num_heads=None,
    ),
    heads="all",  # class-token maps used: "all" heads (6) + their mean; "first4" + mean (WACV-W); or indices
    # f_c, the classification head on the class token (and the ViT when fine-tuned), cross-entropy
    encoder_train=dict(epochs=5, batch_size=32, lr=0.01, momentum=0.9, weight_decay=1e-4, lr_decay_epochs=1000,
                       lr_decay=0.1, hflip=True),
    proposals=dict(  # Algorithm 2.1 (plugins/dips/proposals.py)
        top_k=3,  # choice: K, not given (repo: top_n_head_for_sampling 2)
        min_area=0.01,  # choice: a component must cover 1% of the image
        min_score=0.1,  # choice: f_r's probability of the true class a proposal must reach
        blur_sigma=0.045,  # choice: Gaussian blur sigma, fraction of the shorter side (10 px at 224)
        connectivity=8,
        batch_size=64,  # composites per f_r forward
    ),
    pseudo_labels=dict(
        k=3,  # choice: "a few" pixels per region per image per step
        fg_top_p=0.1,  # choice: n+ = top 10% of the proposal's box, by its head's map
        bg_p=0.1,  # choice: n- = lowest 10% of the pixels outside every proposal box
        fg_draw="multinomial",  # weighted by activation (thesis); background uniform
        dilation=1,
    ),
    decoder_channels=(256, 128, 64, 32),  # variant ivc: f_l over the tokens (harness TokenDecoder)
    unet_channels=None,  # variant wacvw: the F-CAM U-Net decoder over f_r's features (None: its default)
    losses=dict(
        pce=dict(weight=1.0),  # lambda_1 (searched in the thesis; choice: 1)
        crf=dict(weight=2e-9, sigma_rgb=15.0, sigma_xy=100.0, method="auto", scale="exact", reference_pixels=224 * 224),
        cls=dict(weight=0.669),  # wacvw only: L_CLS, the foreground-masked image through the frozen f_c
        # (the repo's ILSVRC config: lmda_clsloss 0.669; its lmda_seed_loss 0.384 would be pce's weight)
    ),
    train=dict(
        epochs=10,  # 50 for CUB, 10 for ILSVRC and OpenImages in the thesis
        batch_size=32,
        lr=0.01,  # choice within the thesis' search range [1e-4, 0.1]
        momentum=0.9,
        weight_decay=1e-4,
        lr_decay_epochs=1000,  # 15 in the WACV-W paper's 50-epoch runs
        lr_decay=0.1,
        hflip=True,
    ),
)
