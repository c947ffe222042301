"""Hostile-traffic test kit: fast frame builders, streaming capture writers, attack generators, and a
child-process harness that replays a capture under budgets and reports its peak RSS and counters."""
