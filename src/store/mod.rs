//! The one place for SQL: the queries the engine needs, on PostgreSQL and SQLite, through
//! sea-orm. The engine asks for what it needs in a few set-based calls and never builds SQL.
//!
//! The two back-ends differ where exactness is at stake: PostgreSQL keeps money in NUMERIC
//! and sums it in SQL; SQLite keeps money as decimal text, so its totals are summed in Rust
//! from a streamed scan (memory follows the number of affiliate × currency groups, not the
//! number of conversions). See [`codec`] for how values cross that boundary.

mod cluster;
pub mod codec;
mod facts;
mod invoices;
mod reports;
mod runs;
mod tenants;

use std::time::Duration;

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, Statement,
    Value,
};
use sea_orm_migration::MigratorTrait;

use crate::config::{Backend, DatabaseSettings, redact_url};
use crate::migrations::Migrator;

pub use facts::{AffiliateRow, PayableTotal};
pub use invoices::{BatchOutcome, CreateOutcome, DecisionRow, InvoiceToCreate};
pub use reports::{DecisionRecord, InvoiceFilter, InvoiceRecord};
pub use runs::{RunClaim, RunLedger, RunRow, RunStatus};
pub use tenants::TenantRow;

/// A failed database operation, saying which one.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot connect to database {url}: {source}")]
    Connect { url: String, source: DbErr },
    #[error("database error while {context}: {source}")]
    Db {
        context: &'static str,
        source: DbErr,
    },
    #[error("bad data in {table}: {detail}")]
    BadData { table: &'static str, detail: String },
}

/// Adds "while …" to a database error.
pub(crate) trait Context<T> {
    fn context(self, context: &'static str) -> Result<T, StoreError>;
}

impl<T> Context<T> for Result<T, DbErr> {
    fn context(self, context: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Db { context, source })
    }
}

async fn probe(settings: &DatabaseSettings) -> Result<(), DbErr> {
    use sea_orm::sqlx::Connection;
    let attempt = async {
        match settings.backend {
            Backend::Postgres => {
                sea_orm::sqlx::postgres::PgConnection::connect(&settings.url)
                    .await?
                    .close()
                    .await
            }
            Backend::Sqlite => {
                sea_orm::sqlx::sqlite::SqliteConnection::connect(&settings.url)
                    .await?
                    .close()
                    .await
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e.into()))),
        Err(_) => Err(DbErr::Custom("no answer within 10 s".into())),
    }
}

/// The database, and which dialect it speaks.
#[derive(Clone, Debug)]
pub struct Store {
    db: DatabaseConnection,
    backend: Backend,
}

impl Store {
    /// Opens a pool on the configured database. SQLite files are put in WAL mode so readers
    /// never wait for the writer, and wait up to 30 s for a lock instead of failing.
    pub async fn connect(settings: &DatabaseSettings) -> Result<Self, StoreError> {
        let mut options = ConnectOptions::new(settings.url.clone());
        options
            .max_connections(settings.max_connections)
            .min_connections(0)
            .connect_timeout(Duration::from_secs(10))
            .acquire_timeout(Duration::from_secs(10))
            .sqlx_logging(false);
        let connect_error = |source| StoreError::Connect {
            url: redact_url(&settings.url),
            source,
        };
        // One direct connection first: a pool only reports "timed out" after retrying for
        // its acquire timeout, while the driver says at once what is wrong (refused, auth…).
        probe(settings).await.map_err(connect_error)?;
        let db = Database::connect(options).await.map_err(connect_error)?;
        let store = Self {
            db,
            backend: settings.backend,
        };
        match store.backend {
            Backend::Sqlite => {
                store
                    .db
                    .execute_unprepared("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 30000;")
                    .await
                    .map_err(connect_error)?;
            }
            Backend::Postgres => {
                store
                    .db
                    .execute_unprepared("SELECT 1")
                    .await
                    .map_err(connect_error)?;
            }
        }
        Ok(store)
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        Migrator::up(&self.db, None)
            .await
            .context("applying migrations")
    }

    /// How many migrations are not applied yet.
    pub async fn pending_migrations(&self) -> Result<usize, StoreError> {
        Ok(Migrator::get_pending_migrations(&self.db)
            .await
            .context("listing pending migrations")?
            .len())
    }

    /// The back-end this store talks to.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The sea-orm connection, for the few callers that need the driver (benchmarks).
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Runs one statement written with `$n` placeholders and returns the rows it changed.
    /// For seeding and tests (the demo, the benchmark); the engine uses the named queries.
    pub async fn execute(&self, sql: &str, values: Vec<Value>) -> Result<u64, StoreError> {
        Ok(self
            .db
            .execute_raw(self.statement(sql, values))
            .await
            .context("executing a statement")?
            .rows_affected())
    }

    /// Runs a query written with `$n` placeholders and returns its rows.
    pub async fn query(
        &self,
        sql: &str,
        values: Vec<Value>,
    ) -> Result<Vec<sea_orm::QueryResult>, StoreError> {
        self.db
            .query_all_raw(self.statement(sql, values))
            .await
            .context("running a query")
    }

    /// A statement in this back-end's dialect. SQL is written with `$1 … $n` placeholders,
    /// which SQLite spells `?1 … ?n`.
    pub(crate) fn statement(&self, sql: &str, values: Vec<Value>) -> Statement {
        match self.backend {
            Backend::Postgres => Statement::from_sql_and_values(DbBackend::Postgres, sql, values),
            Backend::Sqlite => {
                Statement::from_sql_and_values(DbBackend::Sqlite, sql.replace('$', "?"), values)
            }
        }
    }
}
