//! Database migrations (sea-orm-migration), one file per migration. SQL is written per
//! back-end because the two differ where it matters: PostgreSQL keeps money in NUMERIC and
//! instants in TIMESTAMPTZ; SQLite keeps both as text (exact decimal strings, and UTC
//! RFC 3339 with six fractional digits, which sorts like the instants it names).

use sea_orm_migration::prelude::*;

mod m20261204_000001_create_tables;

/// All migrations, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(m20261204_000001_create_tables::Migration)]
    }
}
