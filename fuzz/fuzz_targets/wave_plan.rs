//! A wave plan's text: the pre-scan (alias-expansion and nesting limits), the YAML
//! parser and the plan's resolution. Relative paths anchor under a directory that does
//! not exist, and resolution reads nothing from the host.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = v2k_waves::plan::parse(text, Path::new("/nonexistent/v2k-fuzz/plan.yaml"));
    }
});
