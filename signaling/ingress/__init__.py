"""Media in without an SDK: WHIP ingest (whip.py)."""
