"""The IMAP load benchmark's parts: the seeded mailbox generator (mailgen), a minimal asyncio IMAP client,
the servers under test (targets).  Run it with `python -m bench.load_imap` (see bench/README.md)."""
