//! iuf-data (being built).
