"""Cross-cutting tests that mirror no single module: architecture and dialect rules, docs, install paths
(packaging, Docker, systemd, scaling), the operator's monitoring stack, the native EA, parity and the demo."""
