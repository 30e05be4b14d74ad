# Choe et al.'s validation (CVPR 2020): epoch and CAM threshold chosen on the val split
# with its GT boxes, then applied once to test.
protocol = dict(
    name="gt-val",
    description="Select epoch and one CAM threshold on val with GT boxes; apply to test",
    supervision="gt",
    selection_split="val",
    threshold_source="val",
    threshold_scope="global",
    select_metric="corloc",
)
