# Default config of the toy method; `--cfg-options toy.width=32` overrides it.
method = dict(name="toycnn")
toy = dict(
    width=16,  # channels of the first conv layer
    epochs=2,
    batch_size=32,
    lr=0.05,
)
