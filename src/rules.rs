//! The generation rules of SPEC §3, as pure functions of values.
//!
//! The rules come in two steps so that the engine can total payouts in the database instead
//! of loading every conversion:
//! - [`screen`] applies rules 1–3 to one (affiliate, currency) from the affiliate's status and
//!   its existing invoices, and yields a skip or the effective start of a new invoice;
//! - [`settle`] applies rules 4–6 to the totals of the payable conversions from that start to
//!   the period end, and yields a decision.
//!
//! [`evaluate`] composes both over conversions held in memory: it is the whole of §3 for one
//! affiliate, used by tests and as the reference the engine's database path must match.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::money::{AmountOverflow, Currency, Totals};
use crate::schedule::{Period, RunKey};

/// An affiliate's status. Only `active` affiliates are invoiced; a status this build does not
/// know is treated as not active, so unexpected data never produces an invoice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AffiliateStatus {
    Active,
    Inactive,
    Banned,
    OnModeration,
    Unknown,
}

impl FromStr for AffiliateStatus {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "active" => Self::Active,
            "inactive" => Self::Inactive,
            "banned" => Self::Banned,
            "on_moderation" => Self::OnModeration,
            _ => Self::Unknown,
        })
    }
}

/// Why an (affiliate, currency) got no invoice. Listed in the order §3 applies them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    AlreadyInvoiced,
    NotActive,
    NoPayableConversions,
    NoPaymentSystem,
    NonPositiveAmount,
}

impl Reason {
    /// The reason as stored in `invoice_decisions.reason` and used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AlreadyInvoiced => "already_invoiced",
            Self::NotActive => "not_active",
            Self::NoPayableConversions => "no_payable_conversions",
            Self::NoPaymentSystem => "no_payment_system",
            Self::NonPositiveAmount => "non_positive_amount",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A payout method of the affiliate for one currency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PaymentSystem {
    pub id: i64,
    pub currency: Currency,
    pub is_main: bool,
}

/// An invoice the affiliate already has, with what the rules need to know of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExistingInvoice {
    pub id: i64,
    pub currency: Currency,
    /// Declined invoices never count as covering anything (rule 3).
    pub declined: bool,
    /// `source = 'auto'`.
    pub auto: bool,
    /// The run key it was created for (auto invoices).
    pub run_key: Option<RunKey>,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    /// Greatest `occurred_at` of the conversions linked to it, `None` when it has none.
    pub last_linked_at: Option<DateTime<Utc>>,
}

/// One run of a tenant, as the rules see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub period: Period,
    pub key: RunKey,
}

/// The result of rules 1–3 for one (affiliate, currency).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Screening {
    /// Rule 1, 2 or 3 says no.
    Skip(Reason),
    /// Invoice the payable conversions in `[from, period end)`.
    Take { from: DateTime<Utc> },
}

/// Rules 1–3 for one currency. `invoices` may hold any of the affiliate's invoices; those in
/// other currencies are ignored.
pub fn screen(
    status: AffiliateStatus,
    currency: Currency,
    invoices: &[ExistingInvoice],
    run: &Run,
) -> Screening {
    let in_currency = || invoices.iter().filter(move |e| e.currency == currency);
    // Rule 1: an auto invoice of this very run makes re-execution a no-op.
    if in_currency().any(|e| e.auto && e.run_key == Some(run.key)) {
        return Screening::Skip(Reason::AlreadyInvoiced);
    }
    // Rule 2.
    if status != AffiliateStatus::Active {
        return Screening::Skip(Reason::NotActive);
    }
    // Rule 3: overlapping invoices of any status but declined.
    let period = run.period;
    let overlapping: Vec<_> = in_currency()
        .filter(|e| !e.declined && period.intersects(e.period_start, e.period_end))
        .collect();
    if overlapping
        .iter()
        .any(|e| e.period_start <= period.start && e.period_end >= period.end)
    {
        return Screening::Skip(Reason::AlreadyInvoiced);
    }
    let last_invoiced = overlapping
        .iter()
        .map(|e| e.last_linked_at.unwrap_or(e.period_end))
        .max();
    let from = last_invoiced.map_or(period.start, |last| last.max(period.start));
    if from >= period.end {
        return Screening::Skip(Reason::AlreadyInvoiced);
    }
    Screening::Take { from }
}

/// An invoice to create.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewInvoice {
    pub currency: Currency,
    /// Effective start: conversions with `from <= occurred_at < to` are linked.
    pub from: DateTime<Utc>,
    /// The period end.
    pub to: DateTime<Utc>,
    /// Rounded once to the currency's minor units.
    pub amount: Decimal,
    pub conversions_count: u64,
    pub payment_system_id: i64,
}

impl NewInvoice {
    /// Whether a payable conversion of this affiliate and currency belongs to this invoice.
    pub fn covers(&self, occurred_at: DateTime<Utc>) -> bool {
        self.from <= occurred_at && occurred_at < self.to
    }
}

/// What §3 decides for one (affiliate, currency).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Create(NewInvoice),
    /// `amount` is the rounded total when it was computed (rules 5 and 6).
    Skip {
        reason: Reason,
        amount: Option<Decimal>,
    },
}

impl Decision {
    /// A skip with no computed amount.
    pub fn skip(reason: Reason) -> Self {
        Self::Skip {
            reason,
            amount: None,
        }
    }

    /// The reason label of this decision (`created` for a creation), as counted in metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Create(_) => "created",
            Self::Skip { reason, .. } => reason.as_str(),
        }
    }

    /// Whether the decision is recorded as a row (§3: everything but `no_payable_conversions`).
    pub fn is_recorded(&self) -> bool {
        !matches!(
            self,
            Self::Skip {
                reason: Reason::NoPayableConversions,
                ..
            }
        )
    }
}

/// Rules 4–6 for one currency, given the totals of the affiliate's payable conversions in
/// `[from, run.period.end)`.
pub fn settle(
    currency: Currency,
    from: DateTime<Utc>,
    run: &Run,
    payable: Totals,
    payment_systems: &[PaymentSystem],
) -> Decision {
    // Rule 4.
    if payable.count == 0 {
        return Decision::skip(Reason::NoPayableConversions);
    }
    let amount = currency.round(payable.sum);
    // Rule 5: is_main first, then the lowest id.
    let Some(payment_system) = payment_systems
        .iter()
        .filter(|p| p.currency == currency)
        .min_by_key(|p| (!p.is_main, p.id))
    else {
        return Decision::Skip {
            reason: Reason::NoPaymentSystem,
            amount: Some(amount),
        };
    };
    // Rule 6.
    if amount <= Decimal::ZERO {
        return Decision::Skip {
            reason: Reason::NonPositiveAmount,
            amount: Some(amount),
        };
    }
    Decision::Create(NewInvoice {
        currency,
        from,
        to: run.period.end,
        amount,
        conversions_count: payable.count,
        payment_system_id: payment_system.id,
    })
}

/// A conversion of the affiliate, as loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conversion {
    pub id: i64,
    pub occurred_at: DateTime<Utc>,
    pub payout: Decimal,
    pub currency: Currency,
    /// `status = 'approved'`.
    pub approved: bool,
    /// `invoice_id IS NOT NULL`.
    pub linked: bool,
}

impl Conversion {
    /// Approved and not linked to any invoice (SPEC §1).
    pub fn is_payable(&self) -> bool {
        self.approved && !self.linked
    }
}

/// Everything §3 reads of one affiliate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AffiliateFacts {
    pub status: AffiliateStatus,
    pub payment_systems: Vec<PaymentSystem>,
    /// Its conversions (any status; only payable ones count).
    pub conversions: Vec<Conversion>,
    pub invoices: Vec<ExistingInvoice>,
}

/// The decision for one currency, with the exact conversions a creation links.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evaluation {
    pub currency: Currency,
    pub decision: Decision,
    /// Ids of the conversions to link (creations only), ascending.
    pub link: Vec<i64>,
}

/// The whole of §3 for one affiliate and one run: a decision per currency in which the
/// affiliate has payable conversions in the period, ordered by currency code.
pub fn evaluate(facts: &AffiliateFacts, run: &Run) -> Result<Vec<Evaluation>, AmountOverflow> {
    let payable: Vec<&Conversion> = facts
        .conversions
        .iter()
        .filter(|c| c.is_payable() && run.period.contains(c.occurred_at))
        .collect();
    let mut by_currency: BTreeMap<Currency, Vec<&Conversion>> = BTreeMap::new();
    for c in payable {
        by_currency.entry(c.currency).or_default().push(c);
    }
    let mut evaluations = Vec::with_capacity(by_currency.len());
    for (currency, conversions) in by_currency {
        let decision = match screen(facts.status, currency, &facts.invoices, run) {
            Screening::Skip(reason) => Decision::skip(reason),
            Screening::Take { from } => {
                let mut totals = Totals::default();
                for c in conversions.iter().filter(|c| from <= c.occurred_at) {
                    totals.add(c.payout)?;
                }
                settle(currency, from, run, totals, &facts.payment_systems)
            }
        };
        let mut link: Vec<i64> = match decision {
            Decision::Create(invoice) => conversions
                .iter()
                .filter(|c| invoice.covers(c.occurred_at))
                .map(|c| c.id)
                .collect(),
            Decision::Skip { .. } => Vec::new(),
        };
        link.sort_unstable();
        evaluations.push(Evaluation {
            currency,
            decision,
            link,
        });
    }
    Ok(evaluations)
}
