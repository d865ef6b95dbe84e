//! Benchmark of `verify()` and its parts (filled in by the next commit).

fn main() {}
