//! The kernel boundary: eBPF programs in C (`bpf/`), their loader (aya) and typed maps.
