//! The CNI plugin (spec 1.0/1.1): pod veths, IPAM from the node's pod CIDR, routes.
