//! No code: this crate holds the differential tests (`tests/`) and the TDX benchmark
//! (`examples/tdx_verify_bench.rs`) that run our verifier beside independent implementations,
//! kept out of the other crates' dependency trees (see `Cargo.toml`).
