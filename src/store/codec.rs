//! How instants, dates and money cross into and out of each back-end.
//!
//! PostgreSQL has native types for all three. SQLite has none that is exact, so instants are
//! UTC RFC 3339 text with exactly six fractional digits (`2024-03-04T00:00:00.000000Z`,
//! which sorts as text in instant order), dates are `YYYY-MM-DD`, and money is decimal text.

use std::str::FromStr;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use rust_decimal::Decimal;
use sea_orm::{QueryResult, TryGetable, Value};

use super::StoreError;
use crate::config::Backend;

/// The canonical SQLite text of an instant.
pub fn instant_text(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Parses an instant as SQLite holds it: RFC 3339, or SQLite's own `YYYY-MM-DD HH:MM:SS[.f]`
/// (read as UTC).
pub fn parse_instant(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.to_utc())
        .ok()
        .or_else(|| {
            ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
                .iter()
                .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
                .map(|n| n.and_utc())
        })
}

/// Parses exact decimal text; SQLite turns very large REAL literals into `1.0e+20` style.
pub fn parse_money(text: &str) -> Option<Decimal> {
    let text = text.trim();
    Decimal::from_str(text)
        .ok()
        .or_else(|| Decimal::from_scientific(text).ok())
}

/// Binds and reads values for one back-end.
#[derive(Clone, Copy, Debug)]
pub struct Codec(pub Backend);

impl Codec {
    pub fn instant(self, t: DateTime<Utc>) -> Value {
        match self.0 {
            Backend::Postgres => t.into(),
            Backend::Sqlite => instant_text(t).into(),
        }
    }

    pub fn date(self, d: NaiveDate) -> Value {
        match self.0 {
            Backend::Postgres => d.into(),
            Backend::Sqlite => d.format("%Y-%m-%d").to_string().into(),
        }
    }

    pub fn money(self, m: Decimal) -> Value {
        match self.0 {
            Backend::Postgres => m.into(),
            Backend::Sqlite => m.normalize().to_string().into(),
        }
    }

    pub fn opt_money(self, m: Option<Decimal>) -> Value {
        match (self.0, m) {
            (_, Some(m)) => self.money(m),
            (Backend::Postgres, None) => Value::Decimal(None),
            (Backend::Sqlite, None) => Value::String(None),
        }
    }

    pub fn get_instant(
        self,
        row: &QueryResult,
        col: &str,
        table: &'static str,
    ) -> Result<DateTime<Utc>, StoreError> {
        self.get_opt_instant(row, col, table)?
            .ok_or_else(|| bad(table, col, "NULL"))
    }

    pub fn get_opt_instant(
        self,
        row: &QueryResult,
        col: &str,
        table: &'static str,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        match self.0 {
            Backend::Postgres => get(row, col, table),
            Backend::Sqlite => match get::<Option<String>>(row, col, table)? {
                None => Ok(None),
                Some(text) => parse_instant(&text)
                    .map(Some)
                    .ok_or_else(|| bad(table, col, &text)),
            },
        }
    }

    pub fn get_opt_date(
        self,
        row: &QueryResult,
        col: &str,
        table: &'static str,
    ) -> Result<Option<NaiveDate>, StoreError> {
        match self.0 {
            Backend::Postgres => get(row, col, table),
            Backend::Sqlite => match get::<Option<String>>(row, col, table)? {
                None => Ok(None),
                Some(text) => text.parse().map(Some).map_err(|_| bad(table, col, &text)),
            },
        }
    }

    pub fn get_opt_money(
        self,
        row: &QueryResult,
        col: &str,
        table: &'static str,
    ) -> Result<Option<Decimal>, StoreError> {
        match self.0 {
            Backend::Postgres => get(row, col, table),
            Backend::Sqlite => match get::<Option<MoneyText>>(row, col, table)? {
                None => Ok(None),
                Some(MoneyText(text)) => parse_money(&text)
                    .map(Some)
                    .ok_or_else(|| bad(table, col, &text)),
            },
        }
    }

    pub fn get_money(
        self,
        row: &QueryResult,
        col: &str,
        table: &'static str,
    ) -> Result<Decimal, StoreError> {
        self.get_opt_money(row, col, table)?
            .ok_or_else(|| bad(table, col, "NULL"))
    }
}

/// Money as SQLite may hold it: text, or a number a writer inserted into the TEXT column
/// (SQLite converts it to text on insert, but a REAL read back as such is accepted too).
struct MoneyText(String);

impl TryGetable for MoneyText {
    fn try_get_by<I: sea_orm::ColIdx>(
        res: &QueryResult,
        index: I,
    ) -> Result<Self, sea_orm::TryGetError> {
        match String::try_get_by(res, index) {
            Ok(s) => Ok(Self(s)),
            Err(e) => match i64::try_get_by(res, index) {
                Ok(i) => Ok(Self(i.to_string())),
                Err(_) => match f64::try_get_by(res, index) {
                    Ok(f) => Ok(Self(f.to_string())),
                    Err(_) => Err(e),
                },
            },
        }
    }
}

/// Reads a column, naming table and column on failure.
pub fn get<T: TryGetable>(
    row: &QueryResult,
    col: &str,
    table: &'static str,
) -> Result<T, StoreError> {
    row.try_get::<T>("", col)
        .map_err(|e| bad(table, col, &e.to_string()))
}

fn bad(table: &'static str, col: &str, value: &str) -> StoreError {
    StoreError::BadData {
        table,
        detail: format!("column {col}: unreadable value {value:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_instants_sort_as_text() {
        let a = parse_instant("2024-03-04T00:00:00Z").unwrap();
        let b = a + chrono::Duration::microseconds(1);
        assert_eq!(instant_text(a), "2024-03-04T00:00:00.000000Z");
        assert!(instant_text(a) < instant_text(b));
        assert_eq!(parse_instant(&instant_text(b)), Some(b));
        assert_eq!(
            parse_instant("2024-03-04 01:02:03.5"),
            Some(a + chrono::Duration::milliseconds(3_723_500))
        );
        assert_eq!(parse_instant("2024-03-04T01:00:00+01:00"), Some(a));
        assert_eq!(parse_instant("yesterday"), None);
    }

    #[test]
    fn money_text_is_exact() {
        assert_eq!(
            parse_money("12345678901234.123456").unwrap().to_string(),
            "12345678901234.123456"
        );
        assert_eq!(
            parse_money("1.0e+20").unwrap(),
            Decimal::from(100_000_000_000_000_000_000u128)
        );
        assert_eq!(parse_money("ten"), None);
    }
}
