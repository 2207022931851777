//! Small wrappers over `proxy_wasm::hostcalls` that turn every host error into `None` or a
//! default, so the contexts never unwrap a host call, a panic-free read of a header map, and
//! the module's random numbers.

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};
use std::time::UNIX_EPOCH;

/// The plugin's `configuration` bytes (empty when none or unreadable).
pub fn plugin_configuration() -> Vec<u8> {
    hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// A property as UTF-8 text.
pub fn property_string(path: &[&str]) -> Option<String> {
    let bytes = hostcalls::get_property(path.to_vec()).ok()??;
    String::from_utf8(bytes).ok()
}

/// An integer property (Envoy serialises them as 8 bytes, little endian).
pub fn property_u64(path: &[&str]) -> Option<u64> {
    let bytes = hostcalls::get_property(path.to_vec()).ok()??;
    <[u8; 8]>::try_from(bytes.as_slice())
        .ok()
        .map(u64::from_le_bytes)
}

/// Wall-clock milliseconds (Envoy's time source); 0 when unavailable.
pub fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// xorshift64*: jitter and enforcement draws need spread, not cryptographic strength.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded from the current time's nanoseconds.
    pub fn from_time() -> Rng {
        let nanos = hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64);
        Rng(nanos | 1)
    }

    pub fn draw(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    /// The SDK's own declaration returns its `Status` enum and `get_map` unwraps each name and
    /// value as UTF-8, so a client sending a non-UTF-8 header value would trap the VM; this
    /// declaration takes the raw status and the pairs are decoded without panicking.
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
}

/// Every header of `map` in one host call, names and values as text (bytes that are not UTF-8
/// replaced by U+FFFD, which no rule's ASCII matcher accepts); `None` when the host refuses or
/// the serialized map is malformed.
pub fn header_map(map: MapType) -> Option<Vec<(String, String)>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a buffer it allocated through this module's exported allocator
    // (`proxy_on_memory_allocate`, a `Vec<u8>` of exactly `size` bytes) and hands it over.
    let status = unsafe { proxy_get_header_map_pairs(map, &mut data, &mut size) };
    if status != 0 {
        return None;
    }
    if data.is_null() {
        return Some(Vec::new());
    }
    // SAFETY: see above: the allocation is ours to own and free.
    let bytes = unsafe { Vec::from_raw_parts(data, size, size) };
    decode_map(&bytes)
}

/// The proxy-wasm map serialization: a `u32` count, then each pair's name and value sizes
/// (`u32` each), then each name and value followed by a NUL byte, all little endian.
fn decode_map(bytes: &[u8]) -> Option<Vec<(String, String)>> {
    let word = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = word(0)?;
    let mut sizes = 4usize;
    let mut data = 4usize.checked_add(count.checked_mul(8)?)?;
    if data > bytes.len() {
        return None;
    }
    let mut pairs = Vec::with_capacity(count);
    let text = |len: usize, at: &mut usize| -> Option<String> {
        let slice = bytes.get(*at..at.checked_add(len)?)?;
        *at = at.checked_add(len)?.checked_add(1)?;
        Some(String::from_utf8_lossy(slice).into_owned())
    };
    for _ in 0..count {
        let (name_len, value_len) = (word(sizes)?, word(sizes + 4)?);
        sizes += 8;
        let name = text(name_len, &mut data)?;
        let value = text(value_len, &mut data)?;
        pairs.push((name, value));
    }
    Some(pairs)
}

#[cfg(test)]
mod tests {
    use super::decode_map;

    fn encode(pairs: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (n, v) in pairs {
            out.extend((n.len() as u32).to_le_bytes());
            out.extend((v.len() as u32).to_le_bytes());
        }
        for (n, v) in pairs {
            out.extend(n.as_bytes());
            out.push(0);
            out.extend(*v);
            out.push(0);
        }
        out
    }

    #[test]
    fn maps_decode_with_non_utf8_values_and_reject_truncation() {
        let bytes = encode(&[(":path", b"/"), ("x-a", b"\xff1")]);
        assert_eq!(
            decode_map(&bytes),
            Some(vec![
                (":path".to_string(), "/".to_string()),
                ("x-a".to_string(), "\u{fffd}1".to_string())
            ])
        );
        assert_eq!(decode_map(&encode(&[])), Some(vec![]));
        for cut in 0..bytes.len() - 1 {
            assert_eq!(decode_map(&bytes[..cut]), None, "cut at {cut}");
        }
        assert_eq!(decode_map(&[255, 255, 255, 255]), None);
    }
}
