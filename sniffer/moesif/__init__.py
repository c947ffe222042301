"""Moesif stage: identification, masks, body encoding, event building, sampling, batching, transport."""
