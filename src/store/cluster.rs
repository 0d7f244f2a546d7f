//! Cluster membership (SPEC §6, dynamic mode): nodes heartbeat into `cluster_nodes` with the
//! database's clock, so no two machines' clocks ever need to agree.

use std::time::Duration;

use sea_orm::ConnectionTrait;

use super::codec::get;
use super::{Context, Store, StoreError};
use crate::config::Backend;

impl Store {
    /// Records this node's heartbeat and returns the live nodes (heard from within `ttl`,
    /// by the database's clock), sorted, this node included.
    pub async fn heartbeat(&self, node_id: &str, ttl: Duration) -> Result<Vec<String>, StoreError> {
        let (upsert, live) = match self.backend {
            Backend::Postgres => (
                "INSERT INTO cluster_nodes (node_id, started_at, heartbeat_at)
                 VALUES ($1, clock_timestamp(), clock_timestamp())
                 ON CONFLICT (node_id) DO UPDATE SET heartbeat_at = clock_timestamp()",
                "SELECT node_id FROM cluster_nodes
                  WHERE heartbeat_at > clock_timestamp() - make_interval(secs => $1)
                  ORDER BY node_id",
            ),
            Backend::Sqlite => (
                "INSERT INTO cluster_nodes (node_id, started_at, heartbeat_at)
                 VALUES ($1, strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'), strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'))
                 ON CONFLICT (node_id) DO UPDATE SET heartbeat_at = strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')",
                "SELECT node_id FROM cluster_nodes
                  WHERE heartbeat_at > strftime('%Y-%m-%dT%H:%M:%f000Z', 'now', '-' || $1 || ' seconds')
                  ORDER BY node_id",
            ),
        };
        self.db
            .execute_raw(self.statement(upsert, vec![node_id.into()]))
            .await
            .context("recording a heartbeat")?;
        let rows = self
            .db
            .query_all_raw(self.statement(live, vec![ttl.as_secs_f64().into()]))
            .await
            .context("listing live nodes")?;
        rows.iter()
            .map(|r| get(r, "node_id", "cluster_nodes"))
            .collect()
    }

    /// Removes this node from `cluster_nodes` (graceful shutdown): the others take its
    /// tenants at their next heartbeat instead of after `node_ttl`.
    pub async fn leave(&self, node_id: &str) -> Result<(), StoreError> {
        self.db
            .execute_raw(self.statement(
                "DELETE FROM cluster_nodes WHERE node_id = $1",
                vec![node_id.into()],
            ))
            .await
            .context("leaving the cluster")?;
        Ok(())
    }
}
