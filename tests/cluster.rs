//! Sharding without gossip (SPEC §6) with real processes on PostgreSQL: three dynamic nodes
//! losing two of theirs to kill -9, three static shards; and the ownership functions under
//! random node sets.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use autoinvoice::cluster::{Membership, jump_consistent_hash, rendezvous_owner};
use common::daemon::{Api, Daemon, config, eventually, try_metric};
use common::{Kind, TestDb};

const TENANTS: i64 = 60;
const AFFILIATES_PER_TENANT: i64 = 30;

/// 60 weekly UTC tenants, each with 30 active affiliates and one conversion per affiliate in
/// the week of 2024-03-04 (run: Monday 2024-03-11 00:01Z).
async fn seed(db: &TestDb) {
    for tenant in 1..=TENANTS {
        db.tenant(tenant, "UTC", "weekly", "2024-01-01T00:00:00Z")
            .await;
        let ids: Vec<i64> = (0..AFFILIATES_PER_TENANT)
            .map(|a| tenant * 1000 + a)
            .collect();
        db.bulk_affiliates(tenant, &ids, "2024-03-06T12:00:00Z")
            .await;
    }
}

/// Every expected invoice exists exactly once, with exactly its conversions, and every run
/// completed.
async fn assert_invoiced_exactly_once(db: &TestDb) {
    let invoices = db.auto_invoices().await;
    assert_eq!(invoices.len() as i64, TENANTS * AFFILIATES_PER_TENANT);
    let distinct: HashSet<i64> = invoices.iter().map(|i| i.affiliate_id).collect();
    assert_eq!(
        distinct.len(),
        invoices.len(),
        "an affiliate invoiced twice"
    );
    assert!(invoices.iter().all(|i| i.conversions_count == 1));
    assert_eq!(
        db.count("SELECT count(*) FROM conversions WHERE invoice_id IS NOT NULL")
            .await,
        TENANTS * AFFILIATES_PER_TENANT
    );
    let runs = db.runs().await;
    let week: Vec<_> = runs.iter().filter(|r| r.1 == "2024-03-11").collect();
    assert_eq!(week.len() as i64, TENANTS);
    assert!(week.iter().all(|r| r.2 == "completed"), "{week:?}");
}

fn metric(page: &str, series: &str) -> f64 {
    try_metric(page, series).unwrap_or(f64::NAN)
}

fn node_config(dir: &std::path::Path, node: &str, cluster: &str) -> std::path::PathBuf {
    config(
        dir,
        &format!(
            "[tenants]\nrefresh_interval = \"1s\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
             [engine]\nconcurrency = 1\n[log]\nlevel = \"info\"\n\
             [cluster]\nnode_id = \"{node}\"\n{cluster}"
        ),
    )
}

/// Samples the live claims every 20 ms: (run id) → the claims seen, in order, as
/// (node, claimed at, lease end) in database seconds.
type Claims = Arc<Mutex<BTreeMap<i64, Vec<(String, f64, f64)>>>>;

fn sample_claims(
    db: &TestDb,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (Claims, tokio::task::JoinHandle<()>) {
    let claims: Claims = Arc::default();
    let store = db.store.clone();
    let seen = claims.clone();
    let task = tokio::spawn(async move {
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let rows = store
                .query(
                    "SELECT id, claimed_by, extract(epoch from started_at)::float8 AS s,
                            extract(epoch from lease_expires_at)::float8 AS l
                       FROM invoice_runs WHERE claimed_by IS NOT NULL",
                    vec![],
                )
                .await
                .unwrap_or_default();
            {
                let mut map = seen.lock().unwrap();
                for r in rows {
                    let id: i64 = r.try_get("", "id").unwrap();
                    let node: String = r.try_get("", "claimed_by").unwrap();
                    let started: f64 = r.try_get("", "s").unwrap();
                    let lease: f64 = r.try_get("", "l").unwrap();
                    let list = map.entry(id).or_default();
                    match list.last_mut() {
                        Some(last) if last.0 == node && last.1 == started => {
                            last.2 = last.2.max(lease)
                        }
                        _ => list.push((node, started, lease)),
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (claims, task)
}

/// No claim began before the previous holder's lease (as last seen) had expired.
fn assert_claims_never_overlap(claims: &Claims) {
    let map = claims.lock().unwrap();
    for (run, list) in map.iter() {
        for pair in list.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if a.0 != b.0 {
                assert!(
                    b.1 >= a.2,
                    "run {run}: {} claimed at {} while {}'s lease ran to {}",
                    b.0,
                    b.1,
                    a.0,
                    a.2
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_nodes_survive_two_kill_9s_without_duplicates() {
    let Some(db) = TestDb::new(Kind::Postgres).await else {
        return;
    };
    seed(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let dynamic = "mode = \"dynamic\"\nheartbeat_interval = \"1s\"\nnode_ttl = \"4s\"\n";
    let started = Instant::now();
    // The run instant is 00:01:00; the nodes start 12 s before it.
    let nodes: Vec<Daemon> = ["node-a", "node-b", "node-c"]
        .iter()
        .map(|n| {
            Daemon::start(
                &db,
                &node_config(dir.path(), n, dynamic),
                "2024-03-11T00:00:48Z",
                &[],
            )
        })
        .collect();
    for n in &nodes {
        n.wait_ready();
    }
    let apis: Vec<Api> = nodes
        .iter()
        .map(|n| Api::new(n.http_base(), None))
        .collect();
    eventually(
        Duration::from_secs(10),
        "every node to see three live nodes",
        || async {
            apis.iter()
                .all(|a| metric(&a.get("/metrics").body, "autoinvoice_cluster_live_nodes") == 3.0)
        },
    )
    .await;
    let owned: f64 = apis
        .iter()
        .map(|a| metric(&a.get("/metrics").body, "autoinvoice_tenants_owned"))
        .sum();
    assert_eq!(
        owned, TENANTS as f64,
        "every tenant owned by exactly one node"
    );

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (claims, sampler) = sample_claims(&db, stop.clone());
    let [a, b, c] = <[Daemon; 3]>::try_from(nodes).ok().unwrap();
    // Node A dies before the instant.
    a.signal("KILL");
    // Node B dies in the middle of its runs.
    b.wait_log("run started", 1, Duration::from_secs(30));
    b.signal("KILL");
    let killed = Instant::now();
    eventually(
        Duration::from_secs(60),
        "every invoice, on the survivor",
        || async {
            db.auto_invoices().await.len() as i64 == TENANTS * AFFILIATES_PER_TENANT
                && db
                    .runs()
                    .await
                    .iter()
                    .filter(|r| r.1 == "2024-03-11" && r.2 == "completed")
                    .count() as i64
                    == TENANTS
        },
    )
    .await;
    eprintln!(
        "all invoices {:?} after B's kill -9 (node_ttl 4 s); test wall time so far {:?}",
        killed.elapsed(),
        started.elapsed()
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    sampler.await.unwrap();
    assert_invoiced_exactly_once(&db).await;
    assert_claims_never_overlap(&claims);
    let survivor = Api::new(c.http_base(), None).get("/metrics").body;
    assert_eq!(
        metric(&survivor, "autoinvoice_tenants_owned"),
        TENANTS as f64
    );
    assert_eq!(metric(&survivor, "autoinvoice_cluster_live_nodes"), 1.0);
    assert!(metric(&survivor, "autoinvoice_ownership_changes_total") >= 1.0);
    assert!(c.log().contains("cluster membership changed"));
    c.stop();
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_static_shards_cover_every_tenant_exactly_once() {
    let Some(db) = TestDb::new(Kind::Postgres).await else {
        return;
    };
    seed(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let nodes: Vec<Daemon> = (0..3)
        .map(|i| {
            let cluster = format!("mode = \"static\"\nshard_index = {i}\nshard_count = 3\n");
            Daemon::start(
                &db,
                &node_config(dir.path(), &format!("shard-{i}"), &cluster),
                "2024-03-11T00:30:00Z",
                &[],
            )
        })
        .collect();
    for n in &nodes {
        n.wait_ready();
    }
    assert_invoiced_exactly_once(&db).await;
    let mut executed: HashMap<i64, u32> = HashMap::new();
    for (i, node) in nodes.iter().enumerate() {
        let expected: Vec<i64> = (1..=TENANTS)
            .filter(|&t| jump_consistent_hash(t as u64, 3) == i as u32)
            .collect();
        let page = Api::new(node.http_base(), None).get("/metrics").body;
        assert_eq!(
            metric(&page, "autoinvoice_tenants_owned"),
            expected.len() as f64,
            "shard {i}"
        );
        let log = node.log();
        for line in log.lines().filter(|l| l.contains("run started")) {
            let tenant: i64 = line
                .split("tenant_id=")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert!(
                expected.contains(&tenant),
                "shard {i} ran tenant {tenant}, which it does not own"
            );
            *executed.entry(tenant).or_default() += 1;
        }
    }
    // Each tenant's catch-up (five Mondays in the window) ran on exactly one shard.
    assert_eq!(executed.len() as i64, TENANTS);
    for node in nodes {
        node.stop();
    }
}

fn node_ids() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::hash_set("[a-z]{1,8}-[0-9]{1,5}", 1..10).prop_map(|s| {
        let mut v: Vec<String> = s.into_iter().collect();
        v.sort();
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn each_tenant_has_exactly_one_live_owner_and_few_move(nodes in node_ids(), newcomer in "[A-Z]{3}-[0-9]{3}", seed in any::<u32>()) {
        let tenants: Vec<i64> = (0..2000).map(|i| i64::from(seed) * 7919 + i).collect();
        let owners: Vec<&str> = tenants.iter().map(|&t| rendezvous_owner(&nodes, t).unwrap()).collect();
        for (&t, owner) in tenants.iter().zip(&owners) {
            let claimants = nodes
                .iter()
                .filter(|n| Membership::Dynamic { node_id: (*n).clone(), live_nodes: nodes.clone() }.owns(t))
                .count();
            prop_assert_eq!(claimants, 1);
            prop_assert!(nodes.iter().any(|n| n == owner));
        }
        // A node joins: only tenants moving to it move, about 1/(n + 1) of them.
        let mut joined = nodes.clone();
        joined.push(newcomer.clone());
        let moved: Vec<_> = tenants
            .iter()
            .zip(&owners)
            .filter(|(t, o)| rendezvous_owner(&joined, **t).unwrap() != **o)
            .map(|(t, _)| *t)
            .collect();
        for t in &moved {
            prop_assert_eq!(rendezvous_owner(&joined, *t).unwrap(), newcomer.as_str());
        }
        let share = moved.len() as f64 / tenants.len() as f64;
        let ideal = 1.0 / joined.len() as f64;
        // Within five standard deviations of the binomial: tight, yet never a coin-flip failure.
        let tolerance = 5.0 * (ideal * (1.0 - ideal) / tenants.len() as f64).sqrt();
        prop_assert!((share - ideal).abs() < tolerance, "{} moved, ideal {}", share, ideal);
        // A node leaves: only its tenants move.
        if nodes.len() > 1 {
            let gone = &nodes[0];
            let left: Vec<String> = nodes[1..].to_vec();
            for (&t, owner) in tenants.iter().zip(&owners) {
                let now = rendezvous_owner(&left, t).unwrap();
                if *owner != gone.as_str() {
                    prop_assert_eq!(now, *owner);
                }
            }
        }
    }

    #[test]
    fn static_shards_move_about_one_in_n_plus_one(count in 1u32..32, seed in any::<u32>()) {
        let keys: Vec<u64> = (0..5000u64).map(|i| u64::from(seed) * 104_729 + i).collect();
        let moved = keys.iter().filter(|&&k| jump_consistent_hash(k, count) != jump_consistent_hash(k, count + 1)).count();
        for &k in &keys {
            let before = jump_consistent_hash(k, count);
            let after = jump_consistent_hash(k, count + 1);
            prop_assert!(before < count && after <= count);
            prop_assert!(after == before || after == count, "moves only to the new shard");
        }
        let share = moved as f64 / keys.len() as f64;
let ideal = 1.0 / f64::from(count + 1);
        let tolerance = 5.0 * (ideal * (1.0 - ideal) / keys.len() as f64).sqrt();
        prop_assert!((share - ideal).abs() < tolerance, "{} moved, ideal {}", share, ideal);
    }
}
