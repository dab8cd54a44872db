//! iuf-incremental (being built).
