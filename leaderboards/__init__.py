"""Published result tables as data files (``<paper>/<table id>.toml``); read by harness.leaderboard."""
