//! iuf-metrics (being built).
