"""The real servers and tools at the gateway's edges: IMAP, SMTP, gpg, the databases and the CLI."""
