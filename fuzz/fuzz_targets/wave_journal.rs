//! A wave run's journal (`journal.jsonl`), as `v2k wave status`, `report` and a
//! resumed run read it: records line by line, a torn last line left out, the
//! per-line length limit. The records then feed the wave report's model.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(records) = v2k_waves::journal::parse(data) {
        for w in v2k_waves::report::wave_names(&records) {
            let _ = v2k_waves::report::build(&records, &w, false);
        }
    }
});
