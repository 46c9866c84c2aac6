//! The cold run's Bloom filter: frozen with [`super::RUN_FORMAT`] (see the run module's doc).

pub(super) const BLOOM_BLOCK_WORDS: usize = 8;
const BLOOM_BITS_PER_KEY: usize = 10;
/// Bits set per key, all in one 512-bit block.
pub(super) const BLOOM_PROBES: u32 = 7;
const BLOOM_SEED: u64 = 0x7263_6e72_756e_0001;

/// Blocked Bloom filter over u64 keys: 512-bit blocks, [`BLOOM_PROBES`] bits per key in one
/// block. Frozen with the format: see the module doc.
#[derive(Debug)]
pub(super) struct Bloom {
    pub(super) words: Vec<u64>,
}

impl Bloom {
    pub(super) fn build(n: usize, keys: impl Iterator<Item = u64>) -> Bloom {
        let blocks = (n * BLOOM_BITS_PER_KEY).div_ceil(64 * BLOOM_BLOCK_WORDS);
        let mut bloom = Bloom {
            words: vec![0; blocks * BLOOM_BLOCK_WORDS],
        };
        for key in keys {
            let (block, bits) = bloom.probe(key);
            for (word, bit) in bits {
                bloom.words[block + word] |= bit;
            }
        }
        bloom
    }

    /// The first word of the key's block, and its (word within block, bit mask) probes.
    /// Requires a non-empty filter.
    fn probe(&self, key: u64) -> (usize, impl Iterator<Item = (usize, u64)> + use<>) {
        let h = splitmix64(key ^ BLOOM_SEED);
        let blocks = (self.words.len() / BLOOM_BLOCK_WORDS) as u128;
        let block = ((u128::from(h) * blocks) >> 64) as usize * BLOOM_BLOCK_WORDS;
        let g = splitmix64(h);
        let probes = (0..BLOOM_PROBES).map(move |i| {
            let bit = (g >> (i * 9)) & 511;
            ((bit / 64) as usize, 1u64 << (bit % 64))
        });
        (block, probes)
    }

    pub(super) fn contains(&self, key: u64) -> bool {
        if self.words.is_empty() {
            return false;
        }
        let (block, mut bits) = self.probe(key);
        bits.all(|(word, bit)| self.words[block + word] & bit != 0)
    }
}

/// splitmix64's output function: a fixed, well-mixing bijection on u64.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
