//! Static hash tables for generated code: the layout of the runtime's `StrIndex`.
//!
//! The runtime hashes keys with `key_hash` at lookup time; this module hashes them the same way
//! at build time to place them. (Codegen cannot depend on the runtime, so the function exists
//! twice.) The same test vectors here and in `runtime/src/table.rs` pin the two copies
//! together, and the agreement tests exercise every generated lookup, so a drift cannot go
//! unnoticed.

/// The hash of a key in a static index: the key's 8-byte little-endian words folded by
/// multiply and rotate (a short or ragged tail is read as overlapping loads, as wyhash does),
/// seeded with the length, then murmur3's 64-bit finaliser so that the low bits that pick a
/// slot depend on every byte. The prefixes of one path hash independently, so a CPU overlaps
/// their computations.
#[inline]
pub(crate) fn key_hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let word = |at: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(word)
    };
    let half = |at: usize| {
        let mut half = [0u8; 4];
        half.copy_from_slice(&bytes[at..at + 4]);
        u64::from(u32::from_le_bytes(half))
    };
    let mix = |hash: u64, word: u64| (hash ^ word).wrapping_mul(K).rotate_left(31);
    let len = bytes.len();
    let mut hash = (len as u64).wrapping_mul(K);
    if len >= 8 {
        let mut at = 0;
        while at + 8 <= len {
            hash = mix(hash, word(at));
            at += 8;
        }
        if at < len {
            hash = mix(hash, word(len - 8));
        }
    } else if len >= 4 {
        hash = mix(hash, half(0) | half(len - 4) << 32);
    } else if len > 0 {
        hash = mix(hash, u64::from(bytes[0]) | u64::from(bytes[len / 2]) << 8 | u64::from(bytes[len - 1]) << 16);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

/// The slots of a static hash table over `keys` (already sorted and distinct): a power of two
/// at least twice their number, each `(tag, index)` with `index` 0 (empty) or a key's index
/// plus one and `tag` the upper half of its hash, placed by linear probing from
/// `hash & (len - 1)`. The layout depends only on the keys.
pub(crate) fn slots(keys: &[&str]) -> Vec<(u32, u32)> {
    let mut slots = vec![(0u32, 0u32); (keys.len() * 2).next_power_of_two().max(1)];
    let mask = slots.len() - 1;
    for (index, key) in keys.iter().enumerate() {
        let hash = key_hash(key.as_bytes());
        let mut at = hash as usize & mask;
        while slots[at].1 != 0 {
            at = (at + 1) & mask;
        }
        slots[at] = ((hash >> 32) as u32, index as u32 + 1);
    }
    slots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hash_matches_the_runtime() {
        // The same vectors are in runtime/src/table.rs, which hashes keys at lookup time.
        for (key, expected) in HASH_VECTORS {
            assert_eq!(key_hash(key.as_bytes()), expected, "{key:?}");
        }
    }

    const HASH_VECTORS: [(&str, u64); 9] = [
        ("", 0x0000_0000_0000_0000),
        ("a", 0x9319_0fe0_ac70_8b6c),
        ("ab", 0x827e_0f84_4b71_ec45),
        ("abcd", 0xe041_660d_4b14_0cd2),
        ("abcdefg", 0xb84e_bd50_1a62_c385),
        ("/api/v1", 0x651b_de73_1ecc_3190),
        ("12345678", 0xaf44_b575_e947_fcec),
        ("123456789", 0xc94d_2555_85cf_0335),
        ("reviews.default.svc.cluster.local:9080", 0x96fa_7de2_03a9_0816),
    ];

    #[test]
    fn every_key_has_one_slot_and_half_the_slots_are_empty() {
        let keys: Vec<String> = (0..100).map(|it| format!("k{it}")).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let laid_out = slots(&keys);
        assert_eq!(laid_out.len(), 256);
        let mut used: Vec<u32> = laid_out.iter().map(|it| it.1).filter(|it| *it != 0).collect();
        used.sort_unstable();
        assert_eq!(used, (1..=100).collect::<Vec<u32>>());
        for (tag, index) in laid_out.iter().filter(|it| it.1 != 0) {
            assert_eq!(*tag, (key_hash(keys[*index as usize - 1].as_bytes()) >> 32) as u32);
        }
        assert_eq!(slots(&[]), vec![(0, 0)]);
    }
}
