"""Test helpers for TLS capture (an nginx HTTPS gateway started by hand); importable read-only by any test."""
