//! The C header of `iuf-c`: [`generate`] runs cbindgen on `crates/iuf-c/src/lib.rs` with
//! `crates/iuf-c/cbindgen.toml`; `tests/header.rs` compares the result with the checked-in
//! `crates/iuf-c/include/iuf.h` (`IUF_BLESS=1 cargo test -p iuf-c-header` rewrites it).

use std::path::{Path, PathBuf};

/// The `iuf-c` crate's folder.
pub fn iuf_c_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../iuf-c")
}

/// The header cbindgen makes of `iuf-c`'s source now.
pub fn generate() -> Result<String, String> {
    let dir = iuf_c_dir();
    let config_path = dir.join("cbindgen.toml");
    let config = cbindgen::Config::from_file(&config_path)
        .map_err(|e| format!("reading {}: {e}", config_path.display()))?;
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .map_err(|e| format!("cbindgen on {}: {e}", dir.join("src/lib.rs").display()))?;
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).map_err(|e| format!("the header is not UTF-8: {e}"))
}
