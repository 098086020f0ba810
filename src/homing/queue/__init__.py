"""The outbound queue: the spool of messages for remote domains, and when to retry them
(`schedule`)."""
