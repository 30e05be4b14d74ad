# CLIP-ES (GT-Known) as TeD-Loc's Table 3.1 reports it: the map of the true class (privileged
# information); CLIP's own zero-shot top-1 predicts the class for Top-1 Loc.
# Use with `--plugin clip-es --config harness/configs/papers/clip_es_tedloc_gt.py`.
method = dict(class_input="gt", predictor="clip")
