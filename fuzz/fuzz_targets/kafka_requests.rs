//! Kafka requests as the Kafka listener decodes them: any bytes after the
//! size prefix (api key, version, header, body), decoded at the version
//! they name with the codecs the broker uses. Nothing may panic or
//! allocate by a count it read (`vendor/README.md`: a nine-byte body once
//! asked for 309 GB). The first bytes are usually an api key and version
//! of a served API, so that the bodies' decoders are reached.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    spate_net::fuzzing::kafka_request(data);
});
