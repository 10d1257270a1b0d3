//! Every checked-in corpus file (seeds and regressions: fuzz/corpus/<target>/*) through its
//! target, as an ordinary test: what the fuzzer found once stays fixed.

use std::path::Path;

#[test]
fn every_corpus_file_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus");
    let mut ran = 0;
    for (name, target) in ringcast_fuzz::TARGETS {
        let dir = root.join(name);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus directory {}: {e}", dir.display()));
        let mut here = 0;
        for entry in entries {
            let path = entry.expect("dir entry").path();
            let data = std::fs::read(&path).expect("corpus file");
            let r = std::panic::catch_unwind(|| target(&data));
            assert!(r.is_ok(), "{name}: {} fails", path.display());
            here += 1;
        }
        assert!(here > 0, "{name}: empty corpus");
        ran += here;
    }
    assert!(ran >= ringcast_fuzz::TARGETS.len());
}
