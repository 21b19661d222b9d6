//! Gives libsegicl.so a SONAME that carries the ABI version, so that firmware linked against
//! one ABI version never loads an incompatible library.

fn main() {
    // Keep in step with `SEGICL_ABI_VERSION` in src/lib.rs.
    let abi = 2;
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libsegicl.so.{abi}");
    }
}
