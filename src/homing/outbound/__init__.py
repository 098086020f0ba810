"""Outbound delivery: choosing where mail for a remote domain goes (`route`), then talking
SMTP to it."""
