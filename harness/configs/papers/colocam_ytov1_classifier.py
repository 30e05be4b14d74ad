# The classifier stage of the CoLo-CAM / TCAM code's YTOv1 example (shared/reference
# colocam_tcam.md D.3): ResNet50 with the WSOL 28x28 modification, ImageNet weights,
# SGD lr 0.001, step 15, gamma 0.9, weight decay 1e-4, batch 32, 100 epochs.
# Use: harness run --plugin layercam --dataset ytov1 --config colocam_ytov1_classifier
classifier = dict(
    backbone="resnet50.tv_in1k-wsol",
    pretrained=True,
    feature_index=None,
    epochs=100,
    batch_size=32,
    lr=0.001,
    momentum=0.9,
    weight_decay=1e-4,
    lr_decay_epochs=15,
    lr_decay=0.9,
)
