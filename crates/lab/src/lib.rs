//! The lab: a cluster built from network namespaces on one machine.
