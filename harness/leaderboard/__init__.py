"""The papers' result tables as data (``leaderboards/``), checked, and rendered with the
user's runs beside the published rows. See docs/leaderboards.md."""
from harness.leaderboard.tables import PAPERS, Table, all_tables, get

__all__ = ["PAPERS", "Table", "all_tables", "get"]
