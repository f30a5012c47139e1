//! Bytes a local process could send the daemon (or a daemon send a client): framing and
//! decoding must answer every input with a value or an error, never a panic, a hang or a
//! huge allocation.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    secretd_proto::fuzzing::frame(data);
});
