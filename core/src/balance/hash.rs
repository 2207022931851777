//! The two hash functions Envoy's load balancers use, written out (no dependency): xxHash64
//! (`HashUtil::xxHash64`, the vendored Cyan4973 XXH64) and the 64-bit MurmurHash2 of libstdc++'s
//! `_Hash_bytes` (`MurmurHash::murmurHash2`, used by `RING_HASH` with `hash_function:
//! MURMUR_HASH_2`). Both are checked against the vectors of `docs/envoy-lb-semantics.md` §9.

/// `MurmurHash::STD_HASH_SEED`, the seed libstdc++'s `std::hash<std::string>` uses.
pub const STD_HASH_SEED: u64 = 0xc70f_6907;

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

fn read_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

fn read_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn xxh_round(acc: u64, input: u64) -> u64 {
    acc.wrapping_add(input.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

fn xxh_merge_round(acc: u64, val: u64) -> u64 {
    (acc ^ xxh_round(0, val)).wrapping_mul(P1).wrapping_add(P4)
}

/// XXH64 of `input` with `seed`: `HashUtil::xxHash64(input, seed)`.
pub fn xxhash64(input: &[u8], seed: u64) -> u64 {
    let len = input.len();
    let mut rest = input;
    let mut h = if len >= 32 {
        let mut v1 = seed.wrapping_add(P1).wrapping_add(P2);
        let mut v2 = seed.wrapping_add(P2);
        let mut v3 = seed;
        let mut v4 = seed.wrapping_sub(P1);
        while rest.len() >= 32 {
            v1 = xxh_round(v1, read_u64(&rest[0..]));
            v2 = xxh_round(v2, read_u64(&rest[8..]));
            v3 = xxh_round(v3, read_u64(&rest[16..]));
            v4 = xxh_round(v4, read_u64(&rest[24..]));
            rest = &rest[32..];
        }
        let mut h = v1
            .rotate_left(1)
            .wrapping_add(v2.rotate_left(7))
            .wrapping_add(v3.rotate_left(12))
            .wrapping_add(v4.rotate_left(18));
        h = xxh_merge_round(h, v1);
        h = xxh_merge_round(h, v2);
        h = xxh_merge_round(h, v3);
        xxh_merge_round(h, v4)
    } else {
        seed.wrapping_add(P5)
    };
    h = h.wrapping_add(len as u64);
    while rest.len() >= 8 {
        h ^= xxh_round(0, read_u64(rest));
        h = h.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
        rest = &rest[8..];
    }
    if rest.len() >= 4 {
        h ^= u64::from(read_u32(rest)).wrapping_mul(P1);
        h = h.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
        rest = &rest[4..];
    }
    for &b in rest {
        h ^= u64::from(b).wrapping_mul(P5);
        h = h.rotate_left(11).wrapping_mul(P1);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^= h >> 32;
    h
}

/// `HashUtil::xxHash64(absl::Span<absl::string_view>, seed)`: the chained fold
/// `seed = XXH64(value_i, seed)` over the values in order (not the hash of their concatenation).
/// An empty span hashes the empty input with `seed`.
pub fn xxhash64_fold<T: AsRef<[u8]>>(values: &[T], seed: u64) -> u64 {
    if values.is_empty() {
        return xxhash64(&[], seed);
    }
    values
        .iter()
        .fold(seed, |seed, value| xxhash64(value.as_ref(), seed))
}

fn shift_mix(v: u64) -> u64 {
    v ^ (v >> 47)
}

/// `MurmurHash::murmurHash2(key, seed)`: libstdc++'s 64-bit `_Hash_bytes`. Envoy calls it with
/// [`STD_HASH_SEED`].
pub fn murmur_hash2(key: &[u8], seed: u64) -> u64 {
    const MUL: u64 = 0xc6a4_a793_5bd1_e995;
    let len = key.len();
    let aligned = len & !7;
    let mut h = seed ^ (len as u64).wrapping_mul(MUL);
    for word in key[..aligned].chunks_exact(8) {
        let data = shift_mix(read_u64(word).wrapping_mul(MUL)).wrapping_mul(MUL);
        h ^= data;
        h = h.wrapping_mul(MUL);
    }
    let tail = &key[aligned..];
    if !tail.is_empty() {
        // loadBytes: little endian, the last byte most significant, bytes read as unsigned.
        let data = tail
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8).wrapping_add(u64::from(b)));
        h ^= data;
        h = h.wrapping_mul(MUL);
    }
    h = shift_mix(h).wrapping_mul(MUL);
    shift_mix(h)
}

/// `Hex::uint64ToHex`: 16 lowercase hex digits, most significant byte first.
pub fn u64_to_hex(value: u64) -> String {
    format!("{value:016x}")
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn xxhash64_vectors() {
        assert_eq!(xxhash64(b"", 0), 0xEF46_DB37_51D8_E999);
        assert_eq!(xxhash64(b"a", 0), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(xxhash64(b"abc", 0), 0x44BC_2CF5_AD77_0999);
        assert_eq!(
            xxhash64(b"Nobody inspects the spammish repetition", 0),
            0xFBCE_A83C_8A37_8BF1
        );
        assert_eq!(xxhash64(b"", 1), 0xD5AF_BA13_36A3_BE4B);
    }

    #[test]
    fn murmur_vectors() {
        assert_eq!(murmur_hash2(b"", STD_HASH_SEED), 0x553E_9390_1E46_2A6E);
        assert_eq!(murmur_hash2(b"a", STD_HASH_SEED), 0x454D_DEE4_88C1_ED6B);
        assert_eq!(murmur_hash2(b"abc", STD_HASH_SEED), 0x32D8_2BF8_ED3D_BA39);
        assert_eq!(
            murmur_hash2(b"127.0.0.1:80_0", STD_HASH_SEED),
            0xF46E_F02B_BE93_9E15
        );
    }

    #[test]
    fn fold_is_chained_not_concatenated() {
        assert_eq!(xxhash64_fold(&["a"], 0), xxhash64(b"a", 0));
        assert_eq!(
            xxhash64_fold(&["a", "b"], 0),
            xxhash64(b"b", xxhash64(b"a", 0))
        );
        assert_eq!(xxhash64_fold::<&str>(&[], 0), xxhash64(b"", 0));
    }

    #[test]
    fn hex_is_lowercase_and_padded() {
        assert_eq!(u64_to_hex(0xAB), "00000000000000ab");
        assert_eq!(u64_to_hex(u64::MAX), "ffffffffffffffff");
    }
}
