//! Property tests: every schedule function against a brute-force reference that steps
//! through time minute by minute, over zones of the whole tz database and years 1970–2100.
//!
//! Cases per property: 10,000 by default; set `AUTOINVOICE_PROPTEST_CASES` for more.
//! `cargo test --release --test schedule_props -- --ignored` runs the exhaustive variant:
//! every chrono-tz zone, every offset transition 1970–2100.

use std::collections::HashSet;

use chrono::{
    DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, Offset as _, TimeZone as _,
    Timelike, Utc, Weekday,
};
use chrono_tz::{TZ_VARIANTS, Tz};
use proptest::prelude::*;

use autoinvoice::schedule::{
    Anchor, RunKey, Schedule, ScheduleSettings, TenantSchedule, TimeZone, due_runs, is_run_date,
    planned_run, run_dates, run_instant, start_of_day,
};

fn cases() -> u32 {
    std::env::var("AUTOINVOICE_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Zones whose history has the edges §2 cares about; drawn as often as all others together.
const EDGE_ZONES: &[&str] = &[
    "Europe/Paris",
    "America/Asuncion",
    "Asia/Kathmandu",
    "Pacific/Apia",
    "America/Havana",
    "Asia/Beirut",
    "America/Santiago",
    "America/Sao_Paulo",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Africa/Casablanca",
    "Africa/Cairo",
    "Asia/Tehran",
    "Europe/Dublin",
    "Africa/Monrovia",
    "America/Caracas",
    "Pacific/Kiritimati",
    "Etc/GMT+12",
    "America/St_Johns",
    "Antarctica/Troll",
];

fn zone_strategy() -> impl Strategy<Value = Tz> {
    prop_oneof![
        proptest::sample::select(EDGE_ZONES).prop_map(|z| z.parse::<Tz>().unwrap()),
        proptest::sample::select(TZ_VARIANTS.to_vec()),
    ]
}

fn date_strategy() -> impl Strategy<Value = NaiveDate> {
    let first = NaiveDate::from_ymd_opt(1970, 1, 3).unwrap();
    let last = NaiveDate::from_ymd_opt(2100, 12, 29).unwrap();
    (0..=(last - first).num_days()).prop_map(move |d| first + Duration::days(d))
}

fn run_time_strategy() -> impl Strategy<Value = NaiveTime> {
    prop_oneof![
        Just(NaiveTime::from_hms_opt(0, 1, 0).unwrap()),
        (0u32..24, 0u32..60).prop_map(|(h, m)| NaiveTime::from_hms_opt(h, m, 0).unwrap()),
    ]
}

fn local(tz: Tz, t: DateTime<Utc>) -> NaiveDateTime {
    t.with_timezone(&tz).naive_local()
}

/// Brute force: the first instant, stepping minute by minute (then second by second inside
/// the last minute), that satisfies `reached`. Starts 15 h before `target` read as UTC,
/// which is before any 1970+ offset could put it.
fn brute_first(
    tz: Tz,
    target: NaiveDateTime,
    reached: impl Fn(NaiveDateTime) -> bool,
) -> DateTime<Utc> {
    let mut t = (target - Duration::hours(15)).and_utc();
    t = t - Duration::seconds(i64::from(t.second()));
    assert!(
        !reached(local(tz, t)),
        "search must start before the answer"
    );
    while !reached(local(tz, t)) {
        t += Duration::minutes(1);
    }
    let mut s = t - Duration::minutes(1);
    while !reached(local(tz, s)) {
        s += Duration::seconds(1);
    }
    s
}

/// §2 literally: the earliest instant whose local date is `date`, or a later date when
/// `date` was skipped.
fn brute_start_of_day(tz: Tz, date: NaiveDate) -> DateTime<Utc> {
    brute_first(tz, date.and_time(NaiveTime::MIN), |l| l.date() >= date)
}

/// §2 literally: the earliest instant on `date` with wall time at or after `run_time`; past
/// a gap (or a skipped date), the first instant after it.
fn brute_run_instant(tz: Tz, date: NaiveDate, run_time: NaiveTime) -> DateTime<Utc> {
    brute_first(tz, date.and_time(run_time), |l| {
        l.date() > date || (l.date() == date && l.time() >= run_time)
    })
}

/// The run-day test written independently of `is_run_date`.
fn brute_is_run_date(schedule: Schedule, anchor: NaiveDate, d: NaiveDate) -> bool {
    let monday = d.weekday() == Weekday::Mon;
    match schedule {
        Schedule::Disabled => false,
        Schedule::Weekly => monday,
        Schedule::Biweekly => {
            let mut days = (d - anchor).num_days();
            while days < 0 {
                days += 14 * 1000;
            }
            monday && days % 14 == 0
        }
        Schedule::Monthly => d.day() == 1,
    }
}

fn schedule_strategy() -> impl Strategy<Value = Schedule> {
    prop_oneof![
        Just(Schedule::Weekly),
        Just(Schedule::Biweekly),
        Just(Schedule::Monthly),
        Just(Schedule::Disabled),
    ]
}

fn monday_strategy() -> impl Strategy<Value = NaiveDate> {
    // 2024-01-01 is a Monday; anchors up to ~40 years either side.
    (-2000i64..2000).prop_map(|w| NaiveDate::from_ymd_opt(2024, 1, 1).unwrap() + Duration::weeks(w))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn start_of_day_matches_brute_force(tz in zone_strategy(), d in date_strategy()) {
        prop_assert_eq!(start_of_day(tz.into(), d), brute_start_of_day(tz, d), "{} {}", tz, d);
    }

    #[test]
    fn run_instant_matches_brute_force(
        tz in zone_strategy(), d in date_strategy(), rt in run_time_strategy()
    ) {
        prop_assert_eq!(run_instant(tz.into(), d, rt), brute_run_instant(tz, d, rt), "{} {} {}", tz, d, rt);
    }

    #[test]
    fn planned_run_matches_brute_force(
        tz in zone_strategy(),
        schedule in prop_oneof![Just(Schedule::Weekly), Just(Schedule::Biweekly), Just(Schedule::Monthly)],
        d in date_strategy(),
        anchor in monday_strategy(),
        rt in run_time_strategy(),
    ) {
        // Snap the date onto the schedule's next run date, with the reference run-day test.
        let run_date = (0..400)
            .map(|i| d + Duration::days(i))
            .find(|&x| brute_is_run_date(schedule, anchor, x))
            .unwrap();
        let run = planned_run(schedule, tz.into(), run_date, rt);
        let expected_start_date = match schedule {
            Schedule::Weekly => run_date - Duration::days(7),
            Schedule::Biweekly => run_date - Duration::days(14),
            _ => {
                let (y, m) = if run_date.month() == 1 { (run_date.year() - 1, 12) } else { (run_date.year(), run_date.month() - 1) };
                NaiveDate::from_ymd_opt(y, m, 1).unwrap()
            }
        };
        prop_assert_eq!(run.key, RunKey { start_date: expected_start_date, end_date: run_date });
        prop_assert_eq!(run.instant, brute_run_instant(tz, run_date, rt));
        prop_assert_eq!(run.period.start, brute_start_of_day(tz, expected_start_date));
        prop_assert_eq!(run.period.end, brute_start_of_day(tz, run_date));
        prop_assert!(run.period.start < run.period.end);
    }

    #[test]
    fn run_dates_are_exactly_the_run_days(
        schedule in schedule_strategy(), anchor in monday_strategy(),
        from in date_strategy(), span in 0i64..120,
    ) {
        let to = from + Duration::days(span);
        let anchor_v = Anchor::new(anchor).unwrap();
        let got: Vec<_> = run_dates(schedule, anchor_v, from, to).collect();
        let expected: Vec<_> = (0..=span)
            .map(|i| from + Duration::days(i))
            .filter(|&x| brute_is_run_date(schedule, anchor, x))
            .collect();
        prop_assert_eq!(&got, &expected);
        for x in got {
            prop_assert!(is_run_date(schedule, anchor_v, x));
        }
    }

    #[test]
    fn due_runs_match_the_definition(
        tz in zone_strategy(),
        schedule in schedule_strategy(),
        anchor in monday_strategy(),
        now_day in date_strategy(),
        now_secs in 0i64..86_400,
        now_micros in 0i64..1_000_000,
        updated_ago_secs in 0i64..(90 * 86_400),
        window_secs in prop_oneof![Just(35 * 86_400i64), 0i64..(60 * 86_400)],
        latest_ago_secs in proptest::option::of(0i64..(150 * 86_400)),
        completed_mask in any::<u64>(),
        rt in run_time_strategy(),
    ) {
        let now = (now_day.and_time(NaiveTime::MIN) + Duration::seconds(now_secs)
            + Duration::microseconds(now_micros)).and_utc();
        let settings = ScheduleSettings {
            run_time: rt,
            catch_up_window: Duration::seconds(window_secs),
            default_anchor: Anchor::new(anchor).unwrap(),
        };
        let tenant = TenantSchedule {
            schedule,
            zone: tz.into(),
            anchor: None,
            updated_at: now - Duration::seconds(updated_ago_secs),
        };
        let latest = latest_ago_secs.map(|s| now - Duration::seconds(s));
        // Every run day from well before any bound to after now, with its real instant.
        let zone: TimeZone = tz.into();
        let first = zone.local_date(tenant.updated_at.min(latest.unwrap_or(now)).min(now - settings.catch_up_window)) - Duration::days(3);
        let last = zone.local_date(now) + Duration::days(3);
        let candidates: Vec<_> = (0..=(last - first).num_days())
            .map(|i| first + Duration::days(i))
            .filter(|&x| brute_is_run_date(schedule, anchor, x))
            .map(|x| planned_run(schedule, zone, x, rt))
            .collect();
        let completed: HashSet<RunKey> = candidates
            .iter()
            .enumerate()
            .filter(|(i, _)| completed_mask & (1 << (i % 64)) != 0)
            .map(|(_, r)| r.key)
            .collect();
        let found = due_runs(&tenant, &settings, now, &completed, latest);
        let expected_due: Vec<_> = candidates
            .iter()
            .filter(|r| r.instant <= now
                && r.instant > tenant.updated_at
                && r.instant >= now - settings.catch_up_window
                && !completed.contains(&r.key))
            .copied()
            .collect();
        let expected_missed: Vec<_> = candidates
            .iter()
            .filter(|r| r.instant <= now
                && r.instant > tenant.updated_at
                && r.instant < now - settings.catch_up_window
                && !completed.contains(&r.key)
                && latest.is_some_and(|l| r.instant > l))
            .copied()
            .collect();
        prop_assert_eq!(found.due, expected_due);
        prop_assert_eq!(found.missed, expected_missed);
    }

    #[test]
    fn next_run_is_the_first_run_after(
        tz in zone_strategy(),
        schedule in schedule_strategy(),
        anchor in monday_strategy(),
        day in date_strategy(),
        secs in 0i64..86_400,
        updated_offset_secs in -(20 * 86_400i64)..(20 * 86_400),
        rt in run_time_strategy(),
    ) {
        let after = (day.and_time(NaiveTime::MIN) + Duration::seconds(secs)).and_utc();
        let settings = ScheduleSettings { run_time: rt, catch_up_window: Duration::days(35), default_anchor: Anchor::new(anchor).unwrap() };
        let tenant = TenantSchedule {
            schedule,
            zone: tz.into(),
            anchor: None,
            updated_at: after + Duration::seconds(updated_offset_secs),
        };
        let bound = after.max(tenant.updated_at);
        let zone: TimeZone = tz.into();
        let start = zone.local_date(bound) - Duration::days(3);
        let expected = (0..120)
            .map(|i| start + Duration::days(i))
            .filter(|&x| brute_is_run_date(schedule, anchor, x))
            .map(|x| planned_run(schedule, zone, x, rt))
            .find(|r| r.instant > bound);
        prop_assert_eq!(tenant.next_run(&settings, after), expected);
    }
}

/// Every zone of chrono-tz, every transition 1970–2100: the local days around it start and
/// run exactly where the brute force says. Minutes to run; `--ignored` in release.
#[test]
#[ignore = "exhaustive: run with --release -- --ignored"]
fn every_zone_every_transition() {
    let first = NaiveDate::from_ymd_opt(1970, 1, 2).unwrap();
    let last = NaiveDate::from_ymd_opt(2100, 12, 30).unwrap();
    let run_time = NaiveTime::from_hms_opt(0, 1, 0).unwrap();
    let mut checked = 0u64;
    for &tz in TZ_VARIANTS.iter() {
        let offset = |d: NaiveDate| {
            tz.offset_from_utc_datetime(&d.and_time(NaiveTime::MIN))
                .fix()
        };
        let mut d = first;
        while d < last {
            let next = d + Duration::days(1);
            if offset(d) != offset(next) {
                for day in [d - Duration::days(1), d, next, next + Duration::days(1)] {
                    assert_eq!(
                        start_of_day(tz.into(), day),
                        brute_start_of_day(tz, day),
                        "{tz} {day}"
                    );
                    assert_eq!(
                        run_instant(tz.into(), day, run_time),
                        brute_run_instant(tz, day, run_time),
                        "{tz} {day}"
                    );
                    checked += 1;
                }
            }
            d = next;
        }
    }
    eprintln!(
        "checked {checked} local days around transitions in {} zones",
        TZ_VARIANTS.len()
    );
}
