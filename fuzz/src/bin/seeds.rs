//! Writes the seed corpus and exits: `CVM_FUZZ_SEEDS=<out dir> seeds` writes
//! `<out dir>/<target>/seed-NN` for every target (or those named, space-separated, in
//! `CVM_FUZZ_TARGETS`). In an instrumented build libFuzzer owns `main`, so this is a target whose
//! initialisation does the work.
#![no_main]
use libfuzzer_sys::fuzz_target;

fn write_seeds() {
    let out = std::env::var_os("CVM_FUZZ_SEEDS").expect("CVM_FUZZ_SEEDS=<out dir>");
    let mut targets: Vec<String> = std::env::var("CVM_FUZZ_TARGETS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if targets.is_empty() {
        targets = cvm_fuzz::seeds::TARGETS
            .iter()
            .map(|t| t.to_string())
            .collect();
    }
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    match cvm_fuzz::seeds::write(&repo, std::path::Path::new(&out), &targets) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("seeds: {e}");
            std::process::exit(1);
        }
    }
}

fuzz_target!(init: write_seeds(), |_data: &[u8]| {});
