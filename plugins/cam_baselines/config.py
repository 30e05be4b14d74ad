# Default config of the CAM baselines: the classifier stage (harness base config) plus the
# CAM source that reads maps from it.
method = dict(
    name="cam",
    cam_source="cam",  # any registered CAM source (`harness list`)
)
