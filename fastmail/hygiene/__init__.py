"""Inbound checks and outbound signing (issue #7): SPF, DKIM, DMARC, ARC, DNSBL, filters (rspamd, ClamAV).

One module per check, each async over aiodns with its own timeout; none of them touches a socket of a
client session or decides a reply — the SMTP layer turns their results into an Authentication-Results
header (RFC 8601) and, by configured policy, into a reply.
"""
