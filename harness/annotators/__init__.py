"""Pseudo-box annotators: one box per validation frame from class labels only (the
realistic-protocol chapter's annotator, o-hat). Computed once per dataset and annotator
settings and cached on disk; each reports its quality against GT where GT exists."""
