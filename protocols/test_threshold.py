# What the video papers' numbers use (TCAM / F-CAM code): the epoch chosen on val with its GT
# boxes, the CAM threshold chosen on the test split itself (an oracle threshold), global.
protocol = dict(
    name="test-threshold",
    description="Select the epoch on val with GT boxes; one CAM threshold chosen on test (papers' practice)",
    supervision="gt",
    selection_split="val",
    threshold_source="test",
    threshold_scope="global",
    select_metric="corloc",
)
