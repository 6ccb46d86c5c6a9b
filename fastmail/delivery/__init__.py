"""Outbound delivery (issue #6): the delivery process (runner), routing (dns), the SMTP client's asyncio
glue (outbound), queue state changes (queue), bounces (dsn) and the wake-up signal (wake)."""
