"""The proxy benchmark: peers, load generators, process accounting and the report (see ../README.md)."""
