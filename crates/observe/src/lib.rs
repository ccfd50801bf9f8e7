//! Flows (Hubble schema), the flow buffer, filters, the Observer gRPC API and metrics.
