//! Criterion benchmarks of the backbone (being written).
fn main() {}
