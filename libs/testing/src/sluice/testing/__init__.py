"""Test harness: real servers for a test session, isolated per test (see plugin.py)."""
