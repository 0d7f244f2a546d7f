//! Every rule and reason of SPEC §3, one test each, through the pure `rules::evaluate`.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

use autoinvoice::money::Currency;
use autoinvoice::rules::{
    AffiliateFacts, AffiliateStatus, Conversion, Decision, Evaluation, ExistingInvoice, NewInvoice,
    PaymentSystem, Reason, Run, evaluate,
};
use autoinvoice::schedule::{Period, RunKey};

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().to_utc()
}
fn cur(s: &str) -> Currency {
    s.parse().unwrap()
}
fn d(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

/// The weekly run of Monday 2024-03-11 in UTC: `[2024-03-04, 2024-03-11)`.
fn run() -> Run {
    Run {
        period: Period {
            start: t("2024-03-04T00:00:00Z"),
            end: t("2024-03-11T00:00:00Z"),
        },
        key: RunKey {
            start_date: d("2024-03-04"),
            end_date: d("2024-03-11"),
        },
    }
}

struct Affiliate(AffiliateFacts);

impl Affiliate {
    fn active() -> Self {
        Self(AffiliateFacts {
            status: AffiliateStatus::Active,
            payment_systems: vec![],
            conversions: vec![],
            invoices: vec![],
        })
    }
    fn status(mut self, s: &str) -> Self {
        self.0.status = s.parse().unwrap();
        self
    }
    fn pays(mut self, id: i64, currency: &str, is_main: bool) -> Self {
        self.0.payment_systems.push(PaymentSystem {
            id,
            currency: cur(currency),
            is_main,
        });
        self
    }
    fn conv(self, id: i64, at: &str, payout: Decimal, currency: &str) -> Self {
        self.conv_with(id, at, payout, currency, true, false)
    }
    fn conv_with(
        mut self,
        id: i64,
        at: &str,
        payout: Decimal,
        currency: &str,
        approved: bool,
        linked: bool,
    ) -> Self {
        self.0.conversions.push(Conversion {
            id,
            occurred_at: t(at),
            payout,
            currency: cur(currency),
            approved,
            linked,
        });
        self
    }
    fn invoice(mut self, e: ExistingInvoice) -> Self {
        self.0.invoices.push(e);
        self
    }
    fn eval(&self) -> Vec<Evaluation> {
        evaluate(&self.0, &run()).unwrap()
    }
}

/// A manual USD invoice over `[start, end)`, not declined, with its last linked conversion.
fn manual(start: &str, end: &str, last_linked: Option<&str>) -> ExistingInvoice {
    ExistingInvoice {
        id: 900,
        currency: cur("USD"),
        declined: false,
        auto: false,
        run_key: None,
        period_start: t(start),
        period_end: t(end),
        last_linked_at: last_linked.map(t),
    }
}

fn created(e: &Evaluation) -> NewInvoice {
    match e.decision {
        Decision::Create(inv) => inv,
        other => panic!("expected a creation, got {other:?}"),
    }
}

fn skipped(e: &Evaluation) -> (Reason, Option<Decimal>) {
    match e.decision {
        Decision::Skip { reason, amount } => (reason, amount),
        other => panic!("expected a skip, got {other:?}"),
    }
}

/// Payable conversions inside the period, plus noise that must never be taken.
fn typical() -> Affiliate {
    Affiliate::active()
        .pays(7, "USD", false)
        .conv(1, "2024-03-04T00:00:00Z", dec!(10.005), "USD") // period start: inclusive
        .conv(2, "2024-03-10T23:59:59.999999Z", dec!(5.000), "USD") // last microsecond
        .conv(3, "2024-03-11T00:00:00Z", dec!(100), "USD") // period end: exclusive
        .conv(4, "2024-03-03T23:59:59.999999Z", dec!(100), "USD") // before the period
        .conv_with(5, "2024-03-05T00:00:00Z", dec!(100), "USD", false, false) // pending/declined/hold
        .conv_with(6, "2024-03-05T00:00:00Z", dec!(100), "USD", true, true) // already linked
}

#[test]
fn creates_one_invoice_with_the_exact_sum_and_links_exactly_the_payable_conversions() {
    let evals = typical().eval();
    assert_eq!(evals.len(), 1);
    let inv = created(&evals[0]);
    assert_eq!(inv.amount, dec!(15.01)); // 15.005 rounded once, half away from zero
    assert_eq!(inv.conversions_count, 2);
    assert_eq!(inv.payment_system_id, 7);
    assert_eq!(inv.from, run().period.start);
    assert_eq!(inv.to, run().period.end);
    assert_eq!(evals[0].link, [1, 2]);
    assert!(evals[0].decision.is_recorded());
    assert_eq!(evals[0].decision.label(), "created");
}

#[test]
fn no_payable_conversions_means_no_decision_at_all() {
    let only_noise = Affiliate::active()
        .pays(7, "USD", true)
        .conv(3, "2024-03-11T00:00:00Z", dec!(100), "USD")
        .conv_with(5, "2024-03-05T00:00:00Z", dec!(100), "USD", false, false)
        .conv_with(6, "2024-03-05T00:00:00Z", dec!(100), "USD", true, true);
    assert!(only_noise.eval().is_empty());
    // Not even a not-active affiliate gets a row when it has nothing payable.
    assert!(Affiliate::active().status("banned").eval().is_empty());
}

#[test]
fn rule_1_an_auto_invoice_of_this_run_key_skips_even_when_declined_or_inactive() {
    let auto_same_key = ExistingInvoice {
        auto: true,
        declined: true,
        run_key: Some(run().key),
        // Its own period does not even overlap: only the key matters.
        ..manual("2023-01-01T00:00:00Z", "2023-01-02T00:00:00Z", None)
    };
    let evals = typical().status("inactive").invoice(auto_same_key).eval();
    assert_eq!(skipped(&evals[0]), (Reason::AlreadyInvoiced, None));
    // Another currency's auto invoice or another run key changes nothing.
    let other_currency = ExistingInvoice {
        currency: cur("EUR"),
        ..auto_same_key
    };
    let other_key = ExistingInvoice {
        run_key: Some(RunKey {
            start_date: d("2024-02-26"),
            end_date: d("2024-03-04"),
        }),
        ..auto_same_key
    };
    assert!(matches!(
        typical().invoice(other_currency).invoice(other_key).eval()[0].decision,
        Decision::Create(_)
    ));
}

#[test]
fn rule_2_every_status_but_active_is_not_active() {
    for status in ["inactive", "banned", "on_moderation", "something_new"] {
        let evals = typical().status(status).eval();
        assert_eq!(skipped(&evals[0]), (Reason::NotActive, None), "{status}");
    }
}

#[test]
fn rule_2_comes_before_rule_3() {
    let full = manual("2024-03-01T00:00:00Z", "2024-03-12T00:00:00Z", None);
    let evals = typical().status("banned").invoice(full).eval();
    assert_eq!(skipped(&evals[0]).0, Reason::NotActive);
}

#[test]
fn rule_3_full_overlap_skips() {
    for (start, end) in [
        ("2024-03-04T00:00:00Z", "2024-03-11T00:00:00Z"), // exactly the period
        ("2024-02-01T00:00:00Z", "2024-04-01T00:00:00Z"), // wider
    ] {
        let evals = typical()
            .invoice(manual(start, end, Some("2024-03-05T00:00:00Z")))
            .eval();
        assert_eq!(skipped(&evals[0]), (Reason::AlreadyInvoiced, None));
    }
}

#[test]
fn rule_3_declined_invoices_do_not_count() {
    let declined_full = ExistingInvoice {
        declined: true,
        ..manual(
            "2024-03-04T00:00:00Z",
            "2024-03-11T00:00:00Z",
            Some("2024-03-09T00:00:00Z"),
        )
    };
    let evals = typical().invoice(declined_full).eval();
    assert_eq!(created(&evals[0]).from, run().period.start);
}

#[test]
fn rule_3_other_currencies_and_touching_invoices_do_not_count() {
    let eur = ExistingInvoice {
        currency: cur("EUR"),
        ..manual("2024-03-04T00:00:00Z", "2024-03-11T00:00:00Z", None)
    };
    // Half-open: an invoice ending exactly at the period start does not intersect it.
    let before = manual("2024-02-26T00:00:00Z", "2024-03-04T00:00:00Z", None);
    let after = manual("2024-03-11T00:00:00Z", "2024-03-18T00:00:00Z", None);
    let evals = typical().invoice(eur).invoice(before).invoice(after).eval();
    assert_eq!(created(&evals[0]).amount, dec!(15.01));
}

#[test]
fn rule_3_partial_overlap_starts_at_the_last_invoiced_conversion() {
    // A manual invoice over [Mar 1, Mar 6) whose last conversion is Mar 5 12:00.
    let evals = Affiliate::active()
        .pays(7, "USD", false)
        .conv(1, "2024-03-04T10:00:00Z", dec!(1), "USD") // before the last invoiced: left
        .conv(2, "2024-03-05T12:00:00Z", dec!(2), "USD") // at exactly that instant: taken
        .conv(3, "2024-03-08T00:00:00Z", dec!(4), "USD")
        .invoice(manual(
            "2024-03-01T00:00:00Z",
            "2024-03-06T00:00:00Z",
            Some("2024-03-05T12:00:00Z"),
        ))
        .eval();
    let inv = created(&evals[0]);
    assert_eq!(inv.from, t("2024-03-05T12:00:00Z"));
    assert_eq!(inv.amount, dec!(6.00));
    assert_eq!(inv.conversions_count, 2);
    assert_eq!(evals[0].link, [2, 3]);
}

#[test]
fn rule_3_a_last_conversion_before_the_period_keeps_the_period_start() {
    let evals = typical()
        .invoice(manual(
            "2024-02-20T00:00:00Z",
            "2024-03-05T00:00:00Z",
            Some("2024-02-28T00:00:00Z"),
        ))
        .eval();
    assert_eq!(created(&evals[0]).from, run().period.start);
}

#[test]
fn rule_3_an_invoice_without_linked_conversions_contributes_its_end() {
    let evals = typical()
        .conv(10, "2024-03-07T00:00:00Z", dec!(3), "USD")
        .invoice(manual("2024-03-01T00:00:00Z", "2024-03-06T00:00:00Z", None))
        .eval();
    let inv = created(&evals[0]);
    assert_eq!(inv.from, t("2024-03-06T00:00:00Z"));
    assert_eq!(evals[0].link, [2, 10]);
}

#[test]
fn rule_3_several_overlapping_invoices_take_the_latest_conversion() {
    let evals = typical()
        .conv(10, "2024-03-09T00:00:00Z", dec!(3), "USD")
        .invoice(manual(
            "2024-03-01T00:00:00Z",
            "2024-03-06T00:00:00Z",
            Some("2024-03-05T00:00:00Z"),
        ))
        .invoice(ExistingInvoice {
            declined: false, // completed or partly_paid: counts like any status but declined
            ..manual(
                "2024-03-06T00:00:00Z",
                "2024-03-08T00:00:00Z",
                Some("2024-03-07T06:00:00Z"),
            )
        })
        .eval();
    assert_eq!(created(&evals[0]).from, t("2024-03-07T06:00:00Z"));
    assert_eq!(evals[0].link, [2, 10]);
}

#[test]
fn rule_3_an_invoice_over_the_end_of_the_period_moves_the_start_past_its_last_conversion() {
    // Read literally (§3): conversions before the existing invoice's last one stay uninvoiced.
    let evals = typical()
        .conv(10, "2024-03-10T12:00:00Z", dec!(3), "USD")
        .invoice(manual(
            "2024-03-08T00:00:00Z",
            "2024-03-20T00:00:00Z",
            Some("2024-03-09T00:00:00Z"),
        ))
        .eval();
    let inv = created(&evals[0]);
    assert_eq!(inv.from, t("2024-03-09T00:00:00Z"));
    assert_eq!(evals[0].link, [2, 10]);
}

#[test]
fn rule_3_a_start_at_or_past_the_period_end_is_already_invoiced() {
    for last in [
        None,
        Some("2024-03-11T00:00:00Z"),
        Some("2024-03-15T00:00:00Z"),
    ] {
        let evals = typical()
            .invoice(manual("2024-03-05T00:00:00Z", "2024-03-20T00:00:00Z", last))
            .eval();
        assert_eq!(
            skipped(&evals[0]),
            (Reason::AlreadyInvoiced, None),
            "{last:?}"
        );
    }
}

#[test]
fn rule_4_nothing_left_after_the_effective_start_records_nothing() {
    let evals = Affiliate::active()
        .pays(7, "USD", false)
        .conv(1, "2024-03-04T10:00:00Z", dec!(1), "USD")
        .invoice(manual(
            "2024-03-01T00:00:00Z",
            "2024-03-06T00:00:00Z",
            Some("2024-03-05T12:00:00Z"),
        ))
        .eval();
    assert_eq!(skipped(&evals[0]), (Reason::NoPayableConversions, None));
    assert!(!evals[0].decision.is_recorded());
    assert!(evals[0].link.is_empty());
}

#[test]
fn rule_5_no_payment_system_in_the_currency() {
    let evals = Affiliate::active()
        .pays(7, "EUR", true)
        .conv(1, "2024-03-05T00:00:00Z", dec!(12.345), "USD")
        .eval();
    assert_eq!(
        skipped(&evals[0]),
        (Reason::NoPaymentSystem, Some(dec!(12.35)))
    );
    assert!(evals[0].link.is_empty());
}

#[test]
fn rule_5_comes_before_rule_6() {
    let evals = Affiliate::active()
        .conv(1, "2024-03-05T00:00:00Z", dec!(-3), "USD")
        .eval();
    assert_eq!(skipped(&evals[0]).0, Reason::NoPaymentSystem);
}

#[test]
fn rule_5_main_payment_system_first_then_lowest_id() {
    let pick = |a: Affiliate| {
        created(&a.conv(1, "2024-03-05T00:00:00Z", dec!(1), "USD").eval()[0]).payment_system_id
    };
    assert_eq!(
        pick(
            Affiliate::active()
                .pays(3, "USD", false)
                .pays(9, "USD", true)
                .pays(8, "USD", false)
        ),
        9
    );
    assert_eq!(
        pick(
            Affiliate::active()
                .pays(9, "USD", true)
                .pays(4, "USD", true)
        ),
        4
    );
    assert_eq!(
        pick(
            Affiliate::active()
                .pays(9, "USD", false)
                .pays(4, "USD", false)
        ),
        4
    );
    // A main payment system in another currency does not count.
    assert_eq!(
        pick(
            Affiliate::active()
                .pays(1, "EUR", true)
                .pays(5, "USD", false)
        ),
        5
    );
}

#[test]
fn rule_6_non_positive_amounts_are_skipped_after_rounding() {
    for (payouts, amount) in [
        (vec![dec!(-5), dec!(2)], dec!(-3.00)),
        (vec![dec!(5), dec!(-5)], dec!(0.00)),
        (vec![dec!(0.004)], dec!(0.00)), // positive, but rounds to zero
        (vec![dec!(-0.005)], dec!(-0.01)),
    ] {
        let mut a = Affiliate::active().pays(7, "USD", true);
        for (i, p) in payouts.iter().enumerate() {
            a = a.conv(i as i64 + 1, "2024-03-05T00:00:00Z", *p, "USD");
        }
        let evals = a.eval();
        assert_eq!(
            skipped(&evals[0]),
            (Reason::NonPositiveAmount, Some(amount)),
            "{payouts:?}"
        );
    }
    // Half a cent is enough.
    let evals = Affiliate::active()
        .pays(7, "USD", true)
        .conv(1, "2024-03-05T00:00:00Z", dec!(0.005), "USD")
        .eval();
    assert_eq!(created(&evals[0]).amount, dec!(0.01));
}

#[test]
fn multi_currency_affiliates_get_one_decision_per_currency() {
    let evals = Affiliate::active()
        .pays(1, "USD", true)
        .pays(2, "JPY", false)
        .pays(3, "KWD", false)
        .conv(1, "2024-03-05T00:00:00Z", dec!(10.10), "USD")
        .conv(2, "2024-03-05T01:00:00Z", dec!(100.5), "JPY")
        .conv(3, "2024-03-05T02:00:00Z", dec!(0.0005), "KWD")
        .conv(4, "2024-03-05T03:00:00Z", dec!(7), "EUR")
        .conv(5, "2024-03-05T04:00:00Z", dec!(0.10), "USD")
        .eval();
    let by: Vec<_> = evals
        .iter()
        .map(|e| (e.currency.as_str(), e.decision))
        .collect();
    assert_eq!(by.len(), 4);
    assert_eq!(
        by.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
        ["EUR", "JPY", "KWD", "USD"]
    );
    assert_eq!(
        skipped(&evals[0]),
        (Reason::NoPaymentSystem, Some(dec!(7.00)))
    );
    assert_eq!(created(&evals[1]).amount, dec!(101));
    assert_eq!(created(&evals[1]).payment_system_id, 2);
    assert_eq!(created(&evals[2]).amount, dec!(0.001));
    assert_eq!(created(&evals[3]).amount, dec!(10.20));
    assert_eq!(evals[3].link, [1, 5]);
}

#[test]
fn overlap_in_one_currency_leaves_the_others_alone() {
    let evals = Affiliate::active()
        .pays(1, "USD", true)
        .pays(2, "EUR", true)
        .conv(1, "2024-03-05T00:00:00Z", dec!(1), "USD")
        .conv(2, "2024-03-05T00:00:00Z", dec!(2), "EUR")
        .invoice(manual("2024-03-04T00:00:00Z", "2024-03-11T00:00:00Z", None))
        .eval();
    assert_eq!(created(&evals[0]).amount, dec!(2.00)); // EUR
    assert_eq!(skipped(&evals[1]).0, Reason::AlreadyInvoiced); // USD
}

#[test]
fn sums_of_many_small_payouts_are_exact() {
    let mut a = Affiliate::active().pays(1, "USD", true);
    let start = t("2024-03-04T00:00:00Z");
    for i in 0..10_000 {
        let at = (start + Duration::seconds(i * 60)).to_rfc3339();
        a = a.conv(i + 1, &at, dec!(0.000001) + dec!(0.01), "USD");
    }
    let evals = a.eval();
    assert_eq!(created(&evals[0]).amount, dec!(100.01)); // 100.01 exactly, not 100.00999…
    assert_eq!(created(&evals[0]).conversions_count, 10_000);
    assert_eq!(evals[0].link.len(), 10_000);
}

#[test]
fn reasons_are_listed_in_the_order_the_rules_apply() {
    use Reason::*;
    let order = [
        AlreadyInvoiced,
        NotActive,
        NoPayableConversions,
        NoPaymentSystem,
        NonPositiveAmount,
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(
        order.map(Reason::as_str),
        [
            "already_invoiced",
            "not_active",
            "no_payable_conversions",
            "no_payment_system",
            "non_positive_amount"
        ]
    );
}

#[test]
fn the_readme_worked_example() {
    use autoinvoice::schedule::{Schedule, planned_run};
    let paris = "Europe/Paris".parse().unwrap();
    let planned = planned_run(
        Schedule::Weekly,
        paris,
        d("2024-04-01"),
        "00:01:00".parse().unwrap(),
    );
    assert_eq!(planned.instant, t("2024-03-31T22:01:00Z"));
    let run = Run {
        period: planned.period,
        key: planned.key,
    };
    assert_eq!(run.period.start, t("2024-03-24T23:00:00Z"));
    let bob = Affiliate::active()
        .pays(1, "USD", true)
        .conv_with(1, "2024-03-25T08:00:00Z", dec!(10.004), "USD", true, true)
        .conv(2, "2024-03-27T12:00:00Z", dec!(5.001), "USD")
        .conv_with(3, "2024-03-28T09:30:00Z", dec!(50.00), "USD", false, false)
        .conv(4, "2024-03-29T18:00:00Z", dec!(2.50), "EUR")
        .invoice(manual(
            "2024-03-19T23:00:00Z",
            "2024-03-25T23:00:00Z",
            Some("2024-03-25T08:00:00Z"),
        ));
    let evals = evaluate(&bob.0, &run).unwrap();
    assert_eq!(
        skipped(&evals[0]),
        (Reason::NoPaymentSystem, Some(dec!(2.50)))
    );
    let usd = created(&evals[1]);
    assert_eq!(
        (usd.from, usd.amount, usd.conversions_count),
        (t("2024-03-25T08:00:00Z"), dec!(5.00), 1)
    );
    assert_eq!(evals[1].link, [2]);
}
