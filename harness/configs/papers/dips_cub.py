# DiPS as the thesis trains it on CUB (chapter 2, Sec. 2.4; shared/reference/thesis_dips_tedloc.md §1.6):
# DINO ViT-S/16 weights required and frozen (no fine-tuning), f_r a ResNet-50, batch 32, 50 epochs,
# SGD; the protocol of Choe et al. (the leaderboard's test-threshold preset). Use with
# `--plugin dips --dataset cub --protocol test-threshold --config harness/configs/papers/dips_cub.py`.
classifier = dict(backbone="resnet50")
method = dict(
    backbone=dict(pretrained=True, finetune=False),
    train=dict(epochs=50, batch_size=32),
)
