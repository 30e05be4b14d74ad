# The realistic protocol (Murtaza et al., WACV 2025; thesis ch. 4, BV-VT with pseudo-boxes):
# epoch, configuration and CAM threshold all chosen on val against pseudo-boxes an annotator
# made from class labels only; test GT is read once, to report.
protocol = dict(
    name="pseudo-box-val",
    aliases=["realistic"],
    description="Select epoch and one CAM threshold on val with cam-pg pseudo-boxes; apply to test (recommended)",
    supervision="pseudo:cam-pg",
    selection_split="val",
    threshold_source="val",
    threshold_scope="global",
    select_metric="corloc",
)
