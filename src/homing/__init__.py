"""Homing: a complete mail system (SMTP receive/submit/relay, local delivery, IMAP, POP3)."""

__version__ = "0.1.0"
