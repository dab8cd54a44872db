//! The procedural demo dataset (filled in with the generator).
