//! `include/iuf.h` is what cbindgen makes of `src/lib.rs` now, and documents every declaration:
//! fails when the checked-in header is stale (`IUF_BLESS=1 cargo test -p iuf-c-header`
//! rewrites it).

use iuf_c_header::{generate, iuf_c_dir};

fn generated() -> String {
    generate().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_checked_in_header_is_generated_from_the_source() {
    let path = iuf_c_dir().join("include/iuf.h");
    let now = generated();
    if std::env::var_os("IUF_BLESS").is_some() {
        std::fs::write(&path, &now).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == now,
        "{} is not what cbindgen makes of src/lib.rs; rewrite it with \
         `IUF_BLESS=1 cargo test -p iuf-c-header` and commit it",
        path.display()
    );
}

/// Every function, type, constant, field and enum value of the header has a comment just before
/// it, so a C or C++ user needs nothing but the header.
#[test]
fn every_declaration_of_the_header_is_documented() {
    let header = generated();
    let body = header
        .split_once("#define IUF_H\n")
        .expect("an include guard IUF_H")
        .1;
    let lines: Vec<&str> = body.lines().map(str::trim).collect();
    let mut declarations = 0;
    let mut previous = "";
    for t in &lines {
        let skip = t.is_empty()
            || t.starts_with("//")
            || (t.starts_with('#') && !t.starts_with("#define IUF_"))
            || t.starts_with('}')
            || matches!(*t, "typedef enum {" | "typedef struct {" | "extern \"C\" {")
            // A parameter of a prototype split over lines.
            || previous.ends_with(',');
        if !skip {
            declarations += 1;
            assert!(
                previous.starts_with("//") || previous.ends_with("*/"),
                "include/iuf.h: `{t}` has no comment before it; document it in \
                 crates/iuf-c/src/lib.rs"
            );
        }
        if !t.is_empty() {
            previous = t;
        }
    }
    for f in [
        "iuf_model_open",
        "iuf_model_free",
        "iuf_model_objects",
        "iuf_inspect_rgb",
        "iuf_last_error_message",
        "iuf_version",
    ] {
        assert!(header.contains(&format!("{f}(")), "the header lacks {f}");
    }
    assert!(declarations > 20, "found only {declarations} declarations");
}
