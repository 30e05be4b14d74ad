# The baseline CAM classifier of the F-CAM code's CUB / ResNet50 README example
# (shared/reference/fcam.md): SGD lr 0.0017, step 15, gamma 0.1, 50 epochs, batch 32.
# Note: that code multiplies the head's lr by 10 (Choe et al.'s lr_classifier_ratio); the
# harness's classifier stage uses one lr for all parameters.
classifier = dict(
    backbone="resnet50.tv_in1k-wsol",
    pretrained=True,
    feature_index=None,
    epochs=50,
    batch_size=32,
    lr=0.0017,
    momentum=0.9,
    weight_decay=1e-4,
    lr_decay_epochs=15,
    lr_decay=0.1,
)
