//! Rotation fan-out benchmark (placeholder; see the helper's version).
fn main() {}
