"""Is it working: configuration preflight, status and verdicts, integrity, and the notifications they send."""
