# DiPS, the WACV-W 2022 variant (thesis Appendix I): the first four heads plus their mean, a U-Net
# localizer with L_CLS, 50 epochs with the learning rate x0.1 every 15. Use with
# `--plugin dips --dataset cub --config harness/configs/papers/dips_wacvw.py`.
classifier = dict(backbone="resnet50")
method = dict(
    variant="wacvw",
    heads="first4",
    backbone=dict(pretrained=True, finetune=False),
    losses=dict(pce=dict(weight=0.384), cls=dict(weight=0.669)),  # the repo's ILSVRC search result
    train=dict(epochs=50, batch_size=32, lr_decay_epochs=15, lr_decay=0.1),
)
