//! Arbitrary `postgres_changes` filter strings (`col=op.value,...`) through the server's parser:
//! it must answer with a parse or an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(filter) = std::str::from_utf8(data) {
        let _ = supa_realtime_server::postgres::check_filter(filter);
    }
});
