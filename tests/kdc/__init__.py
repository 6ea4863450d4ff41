"""Tests against a real MIT KDC on loopback and the real kernel keyrings."""
