//! What GSM (or anything posing as it) answers to `versions/*:access`: the official client's
//! model parses the JSON, then the daemon's checks run on the payload. No input may panic.
#![no_main]

use google_cloud_secretmanager_v1::model::AccessSecretVersionResponse;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(response) = serde_json::from_slice::<AccessSecretVersionResponse>(data) else {
        return;
    };
    let _ = response.name.rsplit_once("/versions/");
    if let Some(payload) = response.payload {
        let crc = payload.data_crc32c;
        let actual = i64::from(crc32c::crc32c(&payload.data));
        let _ = crc.map(|expected| expected == actual);
    }
});
