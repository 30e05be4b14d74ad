# The DINO attention baseline of DiPS's Table 2.4 (thesis L2162-2176): binarize each class-token map of
# the last block, blur the image outside it, and keep the map whose image f_r scores highest for the class.
method = dict(
    name="dino-attn",
    backbone=dict(
        arch="vit_small_patch16_224.dino",
        pretrained=None,  # as in plugins/dips/config.py
        finetune=None,
        depth=None,
        embed_dim=None,
        num_heads=None,
    ),
    heads="all",
    encoder_train=dict(epochs=5, batch_size=32, lr=0.01, momentum=0.9, weight_decay=1e-4, lr_decay_epochs=1000,
                       lr_decay=0.1, hflip=True),
    blur_sigma=0.045,  # as the DiPS proposals: fraction of the shorter side
    batch_size=64,  # composites per f_r forward
)
