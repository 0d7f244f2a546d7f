//! Shard ownership without gossip (SPEC §6): which tenants this node owns. Pure hashing
//! here; membership and leases live in the store.

/// Lamping & Veach's jump consistent hash: the bucket in `0..buckets` of `key`. Moving from
/// n to n + 1 buckets moves only about 1/(n + 1) of the keys.
pub fn jump_consistent_hash(key: u64, buckets: u32) -> u32 {
    let mut key = key;
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b.max(0) as u32
}

/// A stable 64-bit hash of (node, tenant) for rendezvous hashing: FNV-1a over the node id
/// and the tenant id's bytes, then the splitmix64 finaliser to spread the bits. Spelled out
/// so every version of every node computes the same scores.
pub fn rendezvous_score(node_id: &str, tenant_id: i64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in node_id.bytes().chain([0xff]).chain(tenant_id.to_le_bytes()) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The live node that owns a tenant in dynamic mode: the highest score, ties broken by the
/// node id so every node agrees.
pub fn rendezvous_owner(live_nodes: &[String], tenant_id: i64) -> Option<&str> {
    live_nodes
        .iter()
        .max_by(|a, b| {
            rendezvous_score(a, tenant_id)
                .cmp(&rendezvous_score(b, tenant_id))
                .then_with(|| a.cmp(b))
        })
        .map(String::as_str)
}

/// Who this node is among the others, for deciding ownership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Membership {
    /// Owns everything.
    Single,
    /// Owns the tenants whose jump hash is its index.
    Static { shard_index: u32, shard_count: u32 },
    /// Owns the tenants whose rendezvous owner among the live nodes is itself.
    Dynamic {
        node_id: String,
        live_nodes: Vec<String>,
    },
}

impl Membership {
    /// Whether this node owns the tenant.
    pub fn owns(&self, tenant_id: i64) -> bool {
        match self {
            Self::Single => true,
            Self::Static {
                shard_index,
                shard_count,
            } => jump_consistent_hash(tenant_id as u64, *shard_count) == *shard_index,
            Self::Dynamic {
                node_id,
                live_nodes,
            } => rendezvous_owner(live_nodes, tenant_id) == Some(node_id.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_hash_matches_the_paper() {
        // Values of the paper's C++ reference, computed independently (Python port).
        assert_eq!(jump_consistent_hash(0, 1), 0);
        assert_eq!(jump_consistent_hash(1, 1), 0);
        assert_eq!(jump_consistent_hash(0, 10), 0);
        assert_eq!(jump_consistent_hash(1, 10), 6);
        assert_eq!(jump_consistent_hash(2, 10), 6);
        assert_eq!(jump_consistent_hash(0xdead_beef, 100), 87);
        assert_eq!(jump_consistent_hash(123_456_789, 7), 0);
        assert_eq!(jump_consistent_hash(256, 1024), 520);
    }

    #[test]
    fn every_tenant_has_exactly_one_static_shard() {
        for id in 0..10_000i64 {
            let owners = (0..3)
                .filter(|&i| {
                    Membership::Static {
                        shard_index: i,
                        shard_count: 3,
                    }
                    .owns(id)
                })
                .count();
            assert_eq!(owners, 1);
        }
    }
}
