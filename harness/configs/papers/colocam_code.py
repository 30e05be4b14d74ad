# CoLo-CAM as the authors' README runs it on YTOv1 (shared/reference refcode_sbelharbi.md
# 2.2-2.6, colocam_tcam.md D.3), where it departs from the paper: 1000 seed pixels per
# region from the top 70% of the box of the largest Otsu component (weighted), background
# from the lowest 10% of the CAM, 3x3 dilation; size-constraint weight 0.01; lambda_c 9;
# 2 adjacent frames from the central 60% of each shot; lr step 5 / gamma 0.9.
# Use: harness run --plugin colocam --config colocam_code
method = dict(
    pseudo_labels=dict(k=1000, fg_draw="multinomial", fg_top_p=0.7, bg="bottom", bg_p=0.1, dilation=3,
                       roi="largest-box"),
    losses=dict(size=dict(weight=0.01), crf=dict(scale="lattice"), coloc=dict(weight=9.0, scale="lattice")),
    clips=dict(n=2, style="adjacent", central_fraction=0.6),
    decoder=dict(epochs=10, lr=0.01, lr_decay_epochs=5, lr_decay=0.9),
)
