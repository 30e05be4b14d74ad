# CoLo-CAM's code on YouTube-Objects: epoch on val with GT boxes, one CAM threshold per class
# chosen on the test split (shared/reference/refcode_sbelharbi.md section 6).
protocol = dict(
    name="test-threshold-per-class",
    description="Select the epoch on val with GT boxes; a CAM threshold per class chosen on test (CoLo-CAM code)",
    supervision="gt",
    selection_split="val",
    threshold_source="test",
    threshold_scope="per-class",
    select_metric="corloc",
)
