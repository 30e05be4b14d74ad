# CLIP-ES as the DiPS thesis chapter reports it (Table 2.4): "class labels are obtained from
# pre-trained models", i.e. the map of the class a trained classifier predicts. Use with
# `--plugin clip-es --config harness/configs/papers/clip_es_dips.py`.
method = dict(class_input="predicted", predictor="classifier")
