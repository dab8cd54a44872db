//! iuf-backbone (being built).
