"""Outbound callbacks: what an Originate's outcome means (the dialer builds on this)."""
