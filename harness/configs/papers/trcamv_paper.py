# TrCAM-V as the paper trains it (thesis App. II §3-4): CLIP-ES pseudo-labels, DINO DeiT-S
# weights required (not the random fallback), 100 epochs, batch 32, 256 -> 224 crops are the
# loader's business. Use with `--plugin trcamv --config harness/configs/papers/trcamv_paper.py`.
method = dict(
    map_source="clip-es",
    backbone=dict(pretrained=True),
    train=dict(epochs=100),
)
