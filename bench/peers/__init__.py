"""Peer servers the load benchmark compares fastmail with (the ones not installed as programs)."""
