//! Money (SPEC §3.6): currencies, their ISO 4217 minor units, and the one rounding an
//! invoice amount gets. Pure and exact: amounts are `rust_decimal::Decimal`, never floats.

use std::fmt;
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};

/// A three-letter currency code (`USD`, `JPY`, `KWD` …), validated once at the edge.
///
/// Any three ASCII capitals are accepted: the tables may hold codes newer than this build's
/// list, and those are invoiced with the default of two minor units (SPEC §3.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

/// A currency code that is not three ASCII capital letters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid currency code {0:?}: expected three capital letters such as USD")]
pub struct InvalidCurrency(pub String);

/// ISO 4217 codes whose minor unit is not 2 (list of 2024, funds codes included). Every
/// other code — including unknown ones — has 2, as SPEC §3.6 requires.
const MINOR_UNITS_NOT_TWO: &[(&str, u32)] = &[
    ("BIF", 0),
    ("CLP", 0),
    ("DJF", 0),
    ("GNF", 0),
    ("ISK", 0),
    ("JPY", 0),
    ("KMF", 0),
    ("KRW", 0),
    ("PYG", 0),
    ("RWF", 0),
    ("UGX", 0),
    ("UYI", 0),
    ("VND", 0),
    ("VUV", 0),
    ("XAF", 0),
    ("XOF", 0),
    ("XPF", 0),
    ("BHD", 3),
    ("IQD", 3),
    ("JOD", 3),
    ("KWD", 3),
    ("LYD", 3),
    ("OMR", 3),
    ("TND", 3),
    ("CLF", 4),
    ("UYW", 4),
];

impl Currency {
    /// The code as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII capitals are ever stored, so this cannot fail.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }

    /// Number of decimal places of the currency's minor unit (JPY 0, USD 2, KWD 3).
    pub fn minor_units(&self) -> u32 {
        MINOR_UNITS_NOT_TWO
            .iter()
            .find(|(code, _)| *code == self.as_str())
            .map_or(2, |&(_, units)| units)
    }

    /// Rounds an exact sum to the currency's minor units, midpoint away from zero, and
    /// writes it with exactly that many decimals (`7` USD → `7.00`). Applied once, to the
    /// total: rounding each payout first would lose or invent cents.
    pub fn round(&self, amount: Decimal) -> Decimal {
        let mut rounded = amount
            .round_dp_with_strategy(self.minor_units(), RoundingStrategy::MidpointAwayFromZero);
        rounded.rescale(self.minor_units());
        rounded
    }

    /// An amount as shown to people: trailing zeros beyond the minor units dropped, and at
    /// least the minor units written (`10.010000` USD → `10.01`, `101.000000` JPY → `101`,
    /// `1.0005` USD stays `1.0005`).
    pub fn present(&self, amount: Decimal) -> Decimal {
        let mut shown = amount.normalize();
        if shown.scale() < self.minor_units() {
            shown.rescale(self.minor_units());
        }
        shown
    }
}

impl FromStr for Currency {
    type Err = InvalidCurrency;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.as_bytes() {
            &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_uppercase) => Ok(Self([a, b, c])),
            _ => Err(InvalidCurrency(s.to_owned())),
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An exact running total of payouts: how many, and their sum before rounding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Number of payouts added.
    pub count: u64,
    /// Their exact sum.
    pub sum: Decimal,
}

/// A sum beyond `Decimal`'s range (about 7.9e28): only corrupt data gets here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sum of payouts overflows the exact decimal range")]
pub struct AmountOverflow;

impl Totals {
    /// Adds one payout.
    pub fn add(&mut self, payout: Decimal) -> Result<(), AmountOverflow> {
        self.sum = self.sum.checked_add(payout).ok_or(AmountOverflow)?;
        self.count += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    fn cur(code: &str) -> Currency {
        code.parse().unwrap()
    }

    #[test]
    fn parses_three_capitals_only() {
        assert_eq!(cur("USD").as_str(), "USD");
        for bad in ["usd", "US", "USDT", "", "U$D", "ÉUR"] {
            let err = bad.parse::<Currency>().unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn minor_units_follow_iso_4217() {
        for (code, units) in [
            ("JPY", 0),
            ("KRW", 0),
            ("CLP", 0),
            ("USD", 2),
            ("EUR", 2),
            ("KWD", 3),
            ("BHD", 3),
            ("TND", 3),
            ("CLF", 4),
            ("ZZZ", 2),
        ] {
            assert_eq!(cur(code).minor_units(), units, "{code}");
        }
    }

    #[test]
    fn half_units_round_away_from_zero() {
        assert_eq!(cur("USD").round(dec!(0.005)), dec!(0.01));
        assert_eq!(cur("USD").round(dec!(0.015)), dec!(0.02));
        assert_eq!(cur("USD").round(dec!(0.0049999)), dec!(0.00));
        assert_eq!(cur("USD").round(dec!(-0.005)), dec!(-0.01));
        assert_eq!(cur("JPY").round(dec!(0.5)), dec!(1));
        assert_eq!(cur("JPY").round(dec!(2.5)), dec!(3));
        assert_eq!(cur("JPY").round(dec!(-2.5)), dec!(-3));
        assert_eq!(cur("KWD").round(dec!(1.0005)), dec!(1.001));
        assert_eq!(cur("KWD").round(dec!(-1.0005)), dec!(-1.001));
        assert_eq!(cur("KWD").round(dec!(1.00049)), dec!(1.000));
    }

    #[test]
    fn amounts_are_written_with_the_minor_units() {
        assert_eq!(cur("USD").round(dec!(7)).to_string(), "7.00");
        assert_eq!(cur("JPY").round(dec!(100.5)).to_string(), "101");
        assert_eq!(cur("KWD").round(dec!(1.0005)).to_string(), "1.001");
        assert_eq!(cur("USD").present(dec!(10.010000)).to_string(), "10.01");
        assert_eq!(cur("JPY").present(dec!(101.000000)).to_string(), "101");
        assert_eq!(cur("USD").present(dec!(1.0005)).to_string(), "1.0005");
        assert_eq!(cur("USD").present(dec!(-3)).to_string(), "-3.00");
    }

    #[test]
    fn rounding_happens_once_on_the_exact_sum() {
        // Three payouts of 0.004: rounded one by one they would make 0.00; the sum is 0.012.
        let mut totals = Totals::default();
        for _ in 0..3 {
            totals.add(dec!(0.004)).unwrap();
        }
        assert_eq!(cur("USD").round(totals.sum), dec!(0.01));
        assert_eq!(totals.count, 3);
    }

    #[test]
    fn many_small_payouts_sum_exactly() {
        let mut totals = Totals::default();
        for _ in 0..100_000 {
            totals.add(dec!(0.000001)).unwrap();
        }
        assert_eq!(totals.sum, dec!(0.1));
        for _ in 0..100_000 {
            totals.add(dec!(0.1)).unwrap();
        }
        assert_eq!(totals.sum, dec!(10000.1));
        assert_eq!(cur("USD").round(totals.sum), dec!(10000.10));
    }

    #[test]
    fn negative_sums_round_symmetrically() {
        let mut totals = Totals::default();
        totals.add(dec!(10.00)).unwrap();
        totals.add(dec!(-12.345)).unwrap();
        assert_eq!(cur("USD").round(totals.sum), dec!(-2.35));
        assert_eq!(cur("KWD").round(totals.sum), dec!(-2.345));
        assert_eq!(cur("JPY").round(totals.sum), dec!(-2));
    }

    #[test]
    fn large_amounts_stay_exact() {
        let mut totals = Totals::default();
        totals.add(dec!(12345678901234.123456)).unwrap();
        totals.add(dec!(12345678901234.123456)).unwrap();
        assert_eq!(totals.sum, dec!(24691357802468.246912));
        assert_eq!(cur("USD").round(totals.sum), dec!(24691357802468.25));
    }

    #[test]
    fn overflow_is_an_error_not_a_panic() {
        let mut totals = Totals::default();
        totals.add(Decimal::MAX).unwrap();
        assert_eq!(totals.add(Decimal::MAX), Err(AmountOverflow));
        assert_eq!(totals.count, 1);
    }
}
