"""Capture stage: packet sources (capture files now; AF_PACKET ring and eBPF later) yielding raw frames."""
