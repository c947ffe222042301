"""TLS plaintext capture: eBPF uprobes on the gateway's OpenSSL (`SSL_read`/`SSL_write`) report what the
gateway reads and writes through each SSL object, so HTTPS calls are seen as if they were plaintext.

`TlsTap` (tap.py) is the entry point; the records it yields are in records.py."""

from sniffer.capture.tls.probe_loader import ProbeConfig
from sniffer.capture.tls.records import TlsBound, TlsData, TlsFreed, TlsRecord, TlsUnavailable
from sniffer.capture.tls.tap import TlsTap

__all__ = ["ProbeConfig", "TlsBound", "TlsData", "TlsFreed", "TlsRecord", "TlsTap", "TlsUnavailable"]
