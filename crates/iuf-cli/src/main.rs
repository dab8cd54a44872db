//! The `iuf` command.
fn main() {}
