//! Our verity writer against the real `veritysetup format` (cryptsetup-bin): same root hash and
//! the same hash-device bytes for the same data, salt and UUID.

use std::process::Command;

use image_builder::verity::{format, uuid_string, VerityParams};

fn veritysetup(
    data: &std::path::Path,
    hash: &std::path::Path,
    salt: &[u8],
    uuid: &[u8; 16],
) -> String {
    let out = Command::new("veritysetup")
        .arg("format")
        .arg(format!("--salt={}", hex::encode(salt)))
        .arg(format!("--uuid={}", uuid_string(uuid)))
        .arg(data)
        .arg(hash)
        .output()
        .expect("veritysetup (cryptsetup-bin) must be installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("no root hash in {text}"))
}

#[test]
fn matches_veritysetup_format() {
    let dir = tempfile::tempdir().unwrap();
    // 1 block (no tree), exactly one hash block, two levels, and three levels with a partial top.
    for (i, blocks) in [1u64, 128, 129, 1000, 16_385].into_iter().enumerate() {
        let data = dir.path().join(format!("data{i}"));
        let mut bytes = Vec::with_capacity(blocks as usize * 4096);
        let mut x = 0x9e37_79b9_u32.wrapping_mul(i as u32 + 1);
        for _ in 0..blocks * 4096 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            bytes.push(x as u8);
        }
        std::fs::write(&data, &bytes).unwrap();
        let salt: Vec<u8> = (0..32).map(|b| b as u8 ^ i as u8).collect();
        let uuid = [0x11 * (i as u8 + 1); 16];

        let theirs = dir.path().join(format!("theirs{i}"));
        let their_root = veritysetup(&data, &theirs, &salt, &uuid);

        let ours = dir.path().join(format!("ours{i}"));
        let tree = format(&data, &ours, &VerityParams::new(salt.clone(), uuid), 2).unwrap();
        assert_eq!(
            hex::encode(tree.root_hash),
            their_root,
            "root hash, {blocks} blocks"
        );
        let their_bytes = std::fs::read(&theirs).unwrap();
        let our_bytes = std::fs::read(&ours).unwrap();
        assert_eq!(
            our_bytes.len(),
            their_bytes.len(),
            "hash size, {blocks} blocks"
        );
        assert!(
            our_bytes == their_bytes,
            "hash area bytes differ, {blocks} blocks"
        );
        assert_eq!(tree.hash_size, our_bytes.len() as u64);
    }
}
