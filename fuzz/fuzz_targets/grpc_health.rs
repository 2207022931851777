//! grpc.health.v1 codec: decoding any bytes never panics; whatever decodes re-encodes to a
//! message that decodes to the same value (round trip), and framing is inverted by unframing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_core::grpc_health::{
    decode_request, decode_response, encode_request, encode_response, frame, unframe,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(status) = decode_response(data) {
        assert_eq!(decode_response(&encode_response(status)).ok(), Some(status));
    }
    if let Ok(service) = decode_request(data) {
        assert_eq!(
            decode_request(&encode_request(&service)).ok(),
            Some(service)
        );
    }
    if let Ok(Some((message, used))) = unframe(data) {
        assert!(used <= data.len());
        let framed = frame(message).expect("a message that unframed fits a frame");
        assert_eq!(framed.as_slice(), &data[..used]);
    }
});
