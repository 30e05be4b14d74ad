# BT-TT of the realistic-protocol chapter: epoch and CAM threshold both chosen on test with
# its GT boxes. An upper bound, never a result to report as such.
protocol = dict(
    name="oracle",
    description="Select the epoch and one CAM threshold on test with GT boxes (BT-TT, an upper bound)",
    supervision="gt",
    selection_split="test",
    threshold_source="test",
    threshold_scope="global",
    select_metric="corloc",
)
