"""POP3 (RFC 1939 and extensions): the sans-I/O server core lives in `server`, responses in
`codes`."""
