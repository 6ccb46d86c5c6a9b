"""The SMTP load benchmark's parts: /proc accounting, the servers under test (targets), the report.
Run it with `python -m bench.load_smtp` (see bench/README.md)."""
