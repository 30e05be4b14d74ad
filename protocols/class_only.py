# CL-BV-OT of the realistic-protocol chapter (Fig. 4.1b): the epoch with the best val
# classification accuracy, boxes from each map's own Otsu threshold. Needs no box at all.
protocol = dict(
    name="class-only",
    description="Select the epoch by val classification accuracy; Otsu threshold per map (CL-BV-OT)",
    supervision="cls",
    selection_split="val",
    threshold_source="otsu",
    threshold_scope="global",
    select_metric="corloc",
)
