"""Pure checks of one step at a time: no mail server, no relay, no daemon."""
