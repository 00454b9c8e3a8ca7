//! Feed arbitrary bytes to every decoder: text and binary, client and server direction, both
//! serializers. A panic is a bug; errors are the expected answer to garbage.
#![no_main]

use libfuzzer_sys::fuzz_target;
use supa_realtime_protocol::bytes::Bytes;
use supa_realtime_protocol::{Serializer, WireFrame};

fuzz_target!(|data: &[u8]| {
    let binary = WireFrame::Binary(Bytes::copy_from_slice(data));
    for s in [Serializer::V1, Serializer::V2] {
        let _ = s.decode_client_frame(&binary);
        let _ = s.decode_server_frame(&binary);
        if let Ok(m) = s.decode_text(data) {
            // Whatever decodes must encode again.
            let _ = s.encode_server_message(&m);
            let _ = s.encode_client_message(&m);
        }
    }
});
