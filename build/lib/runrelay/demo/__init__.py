"""The demo agents shipped with runrelay (`agents.yaml`) and their tools."""
