# TCAM as the authors' README runs it on YTOv1 (shared/reference colocam_tcam.md D.3,
# refcode_sbelharbi.md 2.6 and 3), where it departs from the paper: seeds from the top 60%
# of the Otsu region (weighted), background from the lowest 10% of the CAM, 3x3 dilation,
# size-constraint weight 0.01, lr step 15 / gamma 0.9, 100 epochs. The README example uses
# CAM seeds; the paper uses LayerCAM (kept here: --cfg-options method.cam_source=cam for the README).
# Use: harness run --plugin tcam --config tcam_code
method = dict(
    pseudo_labels=dict(k=1, fg_draw="multinomial", fg_top_p=0.6, bg="bottom", bg_p=0.1, dilation=3, temporal=1),
    losses=dict(size=dict(weight=0.01), crf=dict(scale="lattice")),  # the weight 2e-9 is for their lattice's W.P
    decoder=dict(epochs=100, lr=0.01, lr_decay_epochs=15, lr_decay=0.9),
)
