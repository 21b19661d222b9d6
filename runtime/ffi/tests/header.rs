//! `include/segicl.h` is what cbindgen makes of the current source; set SEGICL_UPDATE_HEADER=1
//! to rewrite it.

use std::path::PathBuf;

#[test]
fn checked_in_header_is_current() {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).unwrap();
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen parses the crate")
        .write(&mut generated);
    let path = crate_dir.join("include/segicl.h");
    if std::env::var_os("SEGICL_UPDATE_HEADER").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "runtime/ffi/include/segicl.h is stale: run `SEGICL_UPDATE_HEADER=1 cargo test -p segicl-ffi --test header`"
    );
}
