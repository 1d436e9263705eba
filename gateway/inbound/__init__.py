"""Where mail comes in: the IMAP watcher over the secure mailbox, and the optional SMTP listener."""
