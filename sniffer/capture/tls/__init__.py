"""TLS plaintext capture: eBPF uprobes on the gateway's OpenSSL (`SSL_read`/`SSL_write`) report what the
gateway reads and writes through each SSL object, so HTTPS calls are seen as if they were plaintext."""
