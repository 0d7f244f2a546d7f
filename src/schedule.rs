//! Schedule math (SPEC §2): local days in a tenant's time zone, run instants, the period a
//! run covers, and which runs are due at an instant.
//!
//! Pure: no I/O and no clock — `now` is always an argument. Local calendar arithmetic uses
//! the tz database compiled into chrono-tz. Every DST edge is resolved by one definition:
//! "the earliest instant whose local wall time is at or after X" ([`earliest_at_or_after`]).
//! It gives the first instant after a gap, the first occurrence of an ambiguous time, and
//! the start of the next existing date when a whole date was skipped, as §2 requires.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use chrono::{
    DateTime, Datelike, Days, Duration, Months, NaiveDate, NaiveDateTime, NaiveTime, Offset,
    TimeZone as _, Utc, Weekday,
};
use chrono_tz::Tz;

/// Invalid schedule data, each naming the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// Not an IANA zone name known to this build.
    #[error("unknown time zone {0:?} (expected an IANA name such as Europe/Paris)")]
    UnknownTimeZone(String),
    /// Not one of the four schedule values.
    #[error("unknown schedule {0:?} (expected disabled, weekly, biweekly or monthly)")]
    UnknownSchedule(String),
    /// A biweekly anchor must be a Monday.
    #[error("biweekly anchor {0} is a {1}, not a Monday")]
    AnchorNotMonday(NaiveDate, Weekday),
}

/// A tenant's IANA time zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimeZone(Tz);

impl TimeZone {
    /// The underlying chrono-tz zone.
    pub fn tz(self) -> Tz {
        self.0
    }

    /// The zone's IANA name.
    pub fn name(self) -> &'static str {
        self.0.name()
    }

    /// The local calendar date of an instant.
    pub fn local_date(self, t: DateTime<Utc>) -> NaiveDate {
        t.with_timezone(&self.0).date_naive()
    }
}

impl FromStr for TimeZone {
    type Err = ScheduleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<Tz>()
            .map(Self)
            .map_err(|_| ScheduleError::UnknownTimeZone(s.to_owned()))
    }
}

impl From<Tz> for TimeZone {
    fn from(tz: Tz) -> Self {
        Self(tz)
    }
}

impl fmt::Display for TimeZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The auto-generation setting of a tenant (`tenants.invoice_schedule`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Schedule {
    Disabled,
    Weekly,
    Biweekly,
    Monthly,
}

impl Schedule {
    /// The value as stored in the database and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::Weekly => "weekly",
            Self::Biweekly => "biweekly",
            Self::Monthly => "monthly",
        }
    }
}

impl FromStr for Schedule {
    type Err = ScheduleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disabled" => Ok(Self::Disabled),
            "weekly" => Ok(Self::Weekly),
            "biweekly" => Ok(Self::Biweekly),
            "monthly" => Ok(Self::Monthly),
            _ => Err(ScheduleError::UnknownSchedule(s.to_owned())),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The Monday from which biweekly runs are counted in steps of 14 days.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Anchor(NaiveDate);

impl Anchor {
    /// SPEC §2's default anchor, 2024-01-01.
    pub const DEFAULT: Anchor = Anchor(NaiveDate::from_ymd_opt(2024, 1, 1).expect("valid date"));

    /// Accepts a Monday only.
    pub fn new(date: NaiveDate) -> Result<Self, ScheduleError> {
        match date.weekday() {
            Weekday::Mon => Ok(Self(date)),
            other => Err(ScheduleError::AnchorNotMonday(date, other)),
        }
    }

    /// The anchor date.
    pub fn date(self) -> NaiveDate {
        self.0
    }
}

/// A half-open interval of instants `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Period {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Period {
    /// Whether `t` lies in `[start, end)`.
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.start <= t && t < self.end
    }

    /// Whether the half-open interval `[start, end)` shares an instant with this period.
    pub fn intersects(&self, start: DateTime<Utc>, end: DateTime<Utc>) -> bool {
        start < end && start < self.end && self.start < end
    }
}

/// A run's identity: its period as local dates, end exclusive (SPEC §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct RunKey {
    pub start_date: NaiveDate,
    pub end_date: NaiveDate,
}

/// One scheduled run of a tenant: when it fires and what it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PlannedRun {
    /// The local date the schedule names (a Monday, or the 1st).
    pub run_date: NaiveDate,
    /// The run instant.
    pub instant: DateTime<Utc>,
    pub key: RunKey,
    pub period: Period,
}

/// Settings shared by all tenants (from the config file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScheduleSettings {
    /// Local wall time of a run (default 00:01).
    pub run_time: NaiveTime,
    /// How far back missed runs are still caught up (default 35 × 24 h).
    pub catch_up_window: Duration,
    /// Anchor for biweekly tenants without one of their own.
    pub default_anchor: Anchor,
}

impl Default for ScheduleSettings {
    fn default() -> Self {
        Self {
            run_time: NaiveTime::from_hms_opt(0, 1, 0).expect("valid time"),
            catch_up_window: Duration::days(35),
            default_anchor: Anchor::DEFAULT,
        }
    }
}

/// A tenant's schedule setting, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TenantSchedule {
    pub schedule: Schedule,
    pub zone: TimeZone,
    /// The tenant's own biweekly anchor, if any.
    pub anchor: Option<Anchor>,
    /// When the setting last changed: runs at or before it are not due (§2 rule 2).
    pub updated_at: DateTime<Utc>,
}

/// What [`due_runs`] finds at an instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DueRuns {
    /// Runs to execute now, oldest first.
    pub due: Vec<PlannedRun>,
    /// Runs that fell outside the catch-up window, oldest first: record and report, never run.
    pub missed: Vec<PlannedRun>,
}

/// Offset (local − UTC) in force at a UTC instant.
fn offset_at(tz: Tz, utc: NaiveDateTime) -> Duration {
    Duration::seconds(i64::from(
        tz.offset_from_utc_datetime(&utc).fix().local_minus_utc(),
    ))
}

/// How far either side of a wall time its instant can lie: real offsets stay within
/// −12 h … +14 h (−15:56 … +15:13 in the oldest local-mean-time data).
const SEARCH_RADIUS: Duration = Duration::hours(40);
/// Offsets are sampled at this step to find transitions; tzdb never has two transitions
/// closer than this (checked against every zone by the exhaustive property test).
const SAMPLE_STEP: Duration = Duration::hours(6);

/// Offset transitions `(instant, new offset)` in `(lo, hi]`, in order, found by sampling
/// every [`SAMPLE_STEP`] and bisecting to the second (tzdb transitions are whole seconds).
fn transitions(tz: Tz, lo: NaiveDateTime, hi: NaiveDateTime) -> Vec<(NaiveDateTime, Duration)> {
    let mut found = Vec::new();
    let mut prev = lo;
    let mut prev_offset = offset_at(tz, lo);
    while prev < hi {
        let next = (prev + SAMPLE_STEP).min(hi);
        let next_offset = offset_at(tz, next);
        if next_offset != prev_offset {
            // Invariant: offset(a) == prev_offset, offset(b) != prev_offset.
            let (mut a, mut b) = (prev, next);
            while b - a > Duration::seconds(1) {
                let mid = a + Duration::seconds((b - a).num_seconds() / 2);
                if offset_at(tz, mid) == prev_offset {
                    a = mid;
                } else {
                    b = mid;
                }
            }
            found.push((b, offset_at(tz, b)));
        }
        prev = next;
        prev_offset = next_offset;
    }
    found
}

/// The earliest instant whose local wall time (in `tz`) is at or after `local`.
///
/// Between transitions the wall time is `t + offset`, increasing, so each constant-offset
/// segment `[s, e)` contributes `max(s, local − offset)` if that is before `e`; the first
/// segment that contributes holds the answer.
pub fn earliest_at_or_after(tz: TimeZone, local: NaiveDateTime) -> DateTime<Utc> {
    let tz = tz.0;
    let whole = local.with_nanosecond_floor();
    let (lo, hi) = (whole - SEARCH_RADIUS, whole + SEARCH_RADIUS);
    let mut segment_start = lo;
    let mut offset = offset_at(tz, lo);
    for (at, new_offset) in transitions(tz, lo, hi) {
        let candidate = (local - offset).max(segment_start);
        if candidate < at {
            return candidate.and_utc();
        }
        segment_start = at;
        offset = new_offset;
    }
    (local - offset).max(segment_start).and_utc()
}

trait FloorSecond {
    fn with_nanosecond_floor(self) -> Self;
}

impl FloorSecond for NaiveDateTime {
    fn with_nanosecond_floor(self) -> Self {
        self - Duration::nanoseconds(i64::from(self.and_utc().timestamp_subsec_nanos()))
    }
}

/// Start of local day `date`: the earliest instant whose local date is `date` (or, when the
/// whole date was skipped, the start of the next date that exists).
pub fn start_of_day(tz: TimeZone, date: NaiveDate) -> DateTime<Utc> {
    earliest_at_or_after(tz, date.and_time(NaiveTime::MIN))
}

/// Run instant for local day `date`: the earliest instant on `date` whose wall time is at or
/// after `run_time`; past a gap, the first instant after it.
pub fn run_instant(tz: TimeZone, date: NaiveDate, run_time: NaiveTime) -> DateTime<Utc> {
    earliest_at_or_after(tz, date.and_time(run_time))
}

/// Whether `date` is a run day of `schedule` (a Monday, a Monday on the anchor's 14-day
/// beat, or the 1st of a month).
pub fn is_run_date(schedule: Schedule, anchor: Anchor, date: NaiveDate) -> bool {
    match schedule {
        Schedule::Disabled => false,
        Schedule::Weekly => date.weekday() == Weekday::Mon,
        Schedule::Biweekly => {
            date.weekday() == Weekday::Mon && (date - anchor.date()).num_days().rem_euclid(14) == 0
        }
        Schedule::Monthly => date.day() == 1,
    }
}

/// The first local date of the period that a run on `run_date` covers.
fn period_start_date(schedule: Schedule, run_date: NaiveDate) -> NaiveDate {
    match schedule {
        Schedule::Weekly | Schedule::Disabled => run_date - Days::new(7),
        Schedule::Biweekly => run_date - Days::new(14),
        Schedule::Monthly => run_date - Months::new(1),
    }
}

/// The run of `schedule` on `run_date` (which must be a run date): instant, key and period.
pub fn planned_run(
    schedule: Schedule,
    tz: TimeZone,
    run_date: NaiveDate,
    run_time: NaiveTime,
) -> PlannedRun {
    let start_date = period_start_date(schedule, run_date);
    PlannedRun {
        run_date,
        instant: run_instant(tz, run_date, run_time),
        key: RunKey {
            start_date,
            end_date: run_date,
        },
        period: Period {
            start: start_of_day(tz, start_date),
            end: start_of_day(tz, run_date),
        },
    }
}

/// Run dates of `schedule` from `from` to `to`, both inclusive, in order.
pub fn run_dates(
    schedule: Schedule,
    anchor: Anchor,
    from: NaiveDate,
    to: NaiveDate,
) -> impl Iterator<Item = NaiveDate> {
    let (first, step) = match schedule {
        Schedule::Disabled => (None, Days::new(1)),
        Schedule::Weekly => (Some(next_monday(from)), Days::new(7)),
        Schedule::Biweekly => {
            let monday = next_monday(from);
            let behind = (monday - anchor.date()).num_days().rem_euclid(14);
            let first = if behind == 0 {
                monday
            } else {
                monday + Days::new((14 - behind) as u64)
            };
            (Some(first), Days::new(14))
        }
        Schedule::Monthly => {
            let first_of_month = from.with_day(1).expect("day 1 exists");
            let first = if first_of_month < from {
                first_of_month + Months::new(1)
            } else {
                first_of_month
            };
            (Some(first), Days::new(0))
        }
    };
    let monthly = schedule == Schedule::Monthly;
    std::iter::successors(first, move |&d| {
        if monthly {
            d.checked_add_months(Months::new(1))
        } else {
            d.checked_add_days(step)
        }
    })
    .take_while(move |&d| d <= to)
}

fn next_monday(date: NaiveDate) -> NaiveDate {
    let ahead = (7 - date.weekday().num_days_from_monday()) % 7;
    date + Days::new(u64::from(ahead))
}

impl TenantSchedule {
    fn anchor(&self, settings: &ScheduleSettings) -> Anchor {
        self.anchor.unwrap_or(settings.default_anchor)
    }

    /// Planned runs with instants in `(after, until]`, oldest first (the setting's
    /// `updated_at` is not applied here).
    pub fn runs_between(
        &self,
        settings: &ScheduleSettings,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> impl Iterator<Item = PlannedRun> {
        // A run instant's local date is its run date or later, and a fold across midnight can
        // set a local date back by one: two days of margin either side, then exact filtering.
        let from = self.zone.local_date(after) - Days::new(2);
        let to = self.zone.local_date(until) + Days::new(2);
        let (schedule, zone, run_time) = (self.schedule, self.zone, settings.run_time);
        run_dates(schedule, self.anchor(settings), from, to)
            .map(move |d| planned_run(schedule, zone, d, run_time))
            .filter(move |r| after < r.instant && r.instant <= until)
    }

    /// The first run with an instant after `after` that the setting is in force for, or
    /// `None` when disabled. This is what a tenant's timer sleeps until.
    pub fn next_run(
        &self,
        settings: &ScheduleSettings,
        after: DateTime<Utc>,
    ) -> Option<PlannedRun> {
        let after = after.max(self.updated_at);
        let anchor = self.anchor(settings);
        let from = self.zone.local_date(after) - Days::new(2);
        run_dates(self.schedule, anchor, from, NaiveDate::MAX)
            .map(|d| planned_run(self.schedule, self.zone, d, settings.run_time))
            .find(|r| r.instant > after)
    }
}

/// The runs of a tenant due at `now` (SPEC §2), oldest first, and the missed ones.
///
/// `completed` holds the keys of runs recorded as completed; `latest_recorded` is the run
/// instant of the tenant's latest recorded run of any status (`None` when it has none: then
/// nothing is missed, as history before the first run is not guessed at).
pub fn due_runs(
    tenant: &TenantSchedule,
    settings: &ScheduleSettings,
    now: DateTime<Utc>,
    completed: &HashSet<RunKey>,
    latest_recorded: Option<DateTime<Utc>>,
) -> DueRuns {
    let window_start = now - settings.catch_up_window;
    let after_update = tenant.updated_at;
    // Due: updated_at < t, window_start <= t <= now. `runs_between` is open below, so
    // step the inclusive window edge back by the smallest instant step (1 µs).
    let due_from = after_update.max(window_start - Duration::microseconds(1));
    let due = tenant
        .runs_between(settings, due_from, now)
        .filter(|r| !completed.contains(&r.key))
        .collect();
    let missed = match latest_recorded {
        Some(latest) if latest.max(after_update) < window_start => tenant
            .runs_between(settings, latest.max(after_update), window_start)
            .filter(|r| r.instant < window_start && !completed.contains(&r.key))
            .collect(),
        _ => Vec::new(),
    };
    DueRuns { due, missed }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(name: &str) -> TimeZone {
        name.parse().unwrap()
    }
    fn date(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }
    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }
    fn hm(h: u32, m: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(h, m, 0).unwrap()
    }

    #[test]
    fn parse_errors_name_the_value() {
        let e = "Mars/Olympus".parse::<TimeZone>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown time zone \"Mars/Olympus\" (expected an IANA name such as Europe/Paris)"
        );
        let e = "fortnightly".parse::<Schedule>().unwrap_err();
        assert!(e.to_string().contains("\"fortnightly\""), "{e}");
        let e = Anchor::new(date("2024-01-02")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "biweekly anchor 2024-01-02 is a Tue, not a Monday"
        );
        assert!(Anchor::new(date("2024-01-08")).is_ok());
        for s in ["disabled", "weekly", "biweekly", "monthly"] {
            assert_eq!(s.parse::<Schedule>().unwrap().as_str(), s);
        }
        assert!("Weekly".parse::<Schedule>().is_err());
    }

    #[test]
    fn asuncion_midnight_that_does_not_exist() {
        // 2023-10-01 00:00 → 01:00 (UTC−4 → UTC−3): the day starts at 01:00 local = 04:00Z.
        let tz = zone("America/Asuncion");
        assert_eq!(
            start_of_day(tz, date("2023-10-01")),
            utc("2023-10-01T04:00:00Z")
        );
        assert_eq!(
            run_instant(tz, date("2023-10-01"), hm(0, 1)),
            utc("2023-10-01T04:00:00Z")
        );
        // It is a 1st: the monthly run covers September, which started at UTC−4.
        let run = planned_run(Schedule::Monthly, tz, date("2023-10-01"), hm(0, 1));
        assert_eq!(run.period.start, utc("2023-09-01T04:00:00Z"));
        assert_eq!(run.period.end, utc("2023-10-01T04:00:00Z"));
        assert_eq!(run.key.start_date, date("2023-09-01"));
        assert_eq!(run.key.end_date, date("2023-10-01"));
        // A run time after the gap is unaffected.
        assert_eq!(
            run_instant(tz, date("2023-10-01"), hm(1, 30)),
            utc("2023-10-01T04:30:00Z")
        );
    }

    #[test]
    fn paris_weeks_across_both_dst_changes() {
        let tz = zone("Europe/Paris");
        // Spring forward on Sunday 2024-03-31: the week before Monday 1 April is 167 h.
        let spring = planned_run(Schedule::Weekly, tz, date("2024-04-01"), hm(0, 1));
        assert_eq!(spring.instant, utc("2024-03-31T22:01:00Z"));
        assert_eq!(spring.period.start, utc("2024-03-24T23:00:00Z"));
        assert_eq!(spring.period.end, utc("2024-03-31T22:00:00Z"));
        assert_eq!(
            spring.period.end - spring.period.start,
            Duration::hours(167)
        );
        // Fall back on Sunday 2024-10-27: the week before Monday 28 October is 169 h.
        let autumn = planned_run(Schedule::Weekly, tz, date("2024-10-28"), hm(0, 1));
        assert_eq!(autumn.instant, utc("2024-10-27T23:01:00Z"));
        assert_eq!(autumn.period.start, utc("2024-10-20T22:00:00Z"));
        assert_eq!(autumn.period.end, utc("2024-10-27T23:00:00Z"));
        assert_eq!(
            autumn.period.end - autumn.period.start,
            Duration::hours(169)
        );
        // A run time inside the spring gap moves to the end of the gap.
        assert_eq!(
            run_instant(tz, date("2024-03-31"), hm(2, 30)),
            utc("2024-03-31T01:00:00Z")
        );
        // An ambiguous run time takes its first occurrence (CEST, UTC+2).
        assert_eq!(
            run_instant(tz, date("2024-10-27"), hm(2, 30)),
            utc("2024-10-27T00:30:00Z")
        );
    }

    #[test]
    fn ambiguous_midnight_takes_the_first_occurrence() {
        // Havana falls back at 01:00 to 00:00 on 2023-11-05: 00:00 happens twice.
        let tz = zone("America/Havana");
        assert_eq!(
            start_of_day(tz, date("2023-11-05")),
            utc("2023-11-05T04:00:00Z")
        );
        assert_eq!(
            run_instant(tz, date("2023-11-05"), hm(0, 1)),
            utc("2023-11-05T04:01:00Z")
        );
    }

    #[test]
    fn a_skipped_date_starts_at_the_next_date() {
        // Samoa skipped 2011-12-30 entirely (UTC−10 → UTC+14).
        let tz = zone("Pacific/Apia");
        assert_eq!(
            start_of_day(tz, date("2011-12-30")),
            utc("2011-12-30T10:00:00Z")
        );
        assert_eq!(
            start_of_day(tz, date("2011-12-31")),
            utc("2011-12-30T10:00:00Z")
        );
        assert_eq!(
            run_instant(tz, date("2011-12-30"), hm(0, 1)),
            utc("2011-12-30T10:00:00Z")
        );
    }

    #[test]
    fn kathmandu_quarter_hour_offset() {
        let tz = zone("Asia/Kathmandu");
        let run = planned_run(Schedule::Weekly, tz, date("2024-01-08"), hm(0, 1));
        assert_eq!(run.instant, utc("2024-01-07T18:16:00Z"));
        assert_eq!(run.period.start, utc("2023-12-31T18:15:00Z"));
        assert_eq!(run.period.end, utc("2024-01-07T18:15:00Z"));
    }

    #[test]
    fn monthly_periods_in_leap_and_plain_februaries() {
        let tz = zone("UTC");
        let leap = planned_run(Schedule::Monthly, tz, date("2024-03-01"), hm(0, 1));
        assert_eq!(leap.key.start_date, date("2024-02-01"));
        assert_eq!(leap.period.end - leap.period.start, Duration::days(29));
        let plain = planned_run(Schedule::Monthly, tz, date("2023-03-01"), hm(0, 1));
        assert_eq!(plain.period.end - plain.period.start, Duration::days(28));
        // January run covers December of the year before.
        let jan = planned_run(Schedule::Monthly, tz, date("2024-01-01"), hm(0, 1));
        assert_eq!(jan.key.start_date, date("2023-12-01"));
        let dates: Vec<_> = run_dates(
            Schedule::Monthly,
            Anchor::DEFAULT,
            date("2024-01-02"),
            date("2024-04-01"),
        )
        .collect();
        assert_eq!(
            dates,
            [date("2024-02-01"), date("2024-03-01"), date("2024-04-01")]
        );
    }

    #[test]
    fn biweekly_parity_with_default_and_custom_anchor() {
        let from = date("2023-12-01");
        let to = date("2024-02-29");
        let default: Vec<_> = run_dates(Schedule::Biweekly, Anchor::DEFAULT, from, to).collect();
        assert_eq!(
            default,
            [
                "2023-12-04",
                "2023-12-18",
                "2024-01-01",
                "2024-01-15",
                "2024-01-29",
                "2024-02-12",
                "2024-02-26"
            ]
            .map(date)
        );
        let custom = Anchor::new(date("2024-01-08")).unwrap();
        let shifted: Vec<_> = run_dates(Schedule::Biweekly, custom, from, to).collect();
        assert_eq!(
            shifted,
            [
                "2023-12-11",
                "2023-12-25",
                "2024-01-08",
                "2024-01-22",
                "2024-02-05",
                "2024-02-19"
            ]
            .map(date)
        );
        // Mondays before the anchor count too (negative multiples of 14 days).
        assert!(is_run_date(Schedule::Biweekly, custom, date("2023-12-25")));
        assert!(!is_run_date(Schedule::Biweekly, custom, date("2024-01-01")));
        let run = planned_run(
            Schedule::Biweekly,
            zone("UTC"),
            date("2024-01-15"),
            hm(0, 1),
        );
        assert_eq!(run.key.start_date, date("2024-01-01"));
        assert_eq!(run.period.end - run.period.start, Duration::days(14));
    }

    fn weekly_paris(updated_at: &str) -> TenantSchedule {
        TenantSchedule {
            schedule: Schedule::Weekly,
            zone: zone("Europe/Paris"),
            anchor: None,
            updated_at: utc(updated_at),
        }
    }

    #[test]
    fn a_run_is_due_at_exactly_its_instant() {
        let s = ScheduleSettings::default();
        let t = weekly_paris("2024-01-01T00:00:00Z");
        let instant = utc("2024-03-03T23:01:00Z"); // Monday 4 March 00:01 CET
        let none = HashSet::new();
        let before = due_runs(&t, &s, instant - Duration::microseconds(1), &none, None);
        assert!(before.due.iter().all(|r| r.instant != instant));
        let at = due_runs(&t, &s, instant, &none, None);
        assert_eq!(at.due.last().unwrap().instant, instant);
    }

    #[test]
    fn schedule_updated_just_before_or_after_the_instant() {
        let s = ScheduleSettings::default();
        let instant = utc("2024-03-03T23:01:00Z");
        let now = instant + Duration::hours(1);
        let none = HashSet::new();
        let just_before = weekly_paris("2024-03-03T23:00:59.999999Z");
        let due = due_runs(&just_before, &s, now, &none, None).due;
        assert_eq!(due.iter().map(|r| r.instant).collect::<Vec<_>>(), [instant]);
        // Updated at the very instant: the setting was not in force before it.
        let at = weekly_paris("2024-03-03T23:01:00Z");
        assert!(due_runs(&at, &s, now, &none, None).due.is_empty());
        let just_after = weekly_paris("2024-03-03T23:01:00.000001Z");
        assert!(due_runs(&just_after, &s, now, &none, None).due.is_empty());
    }

    #[test]
    fn catch_up_window_of_35_days_is_inclusive() {
        let s = ScheduleSettings::default();
        let t = weekly_paris("2020-01-01T00:00:00Z");
        let oldest = utc("2024-01-28T23:01:00Z"); // Monday 29 January 00:01 CET
        let none = HashSet::new();
        let now = oldest + Duration::days(35);
        let due = due_runs(&t, &s, now, &none, None).due;
        assert_eq!(due.len(), 6);
        assert_eq!(due[0].instant, oldest);
        assert!(
            due.windows(2).all(|w| w[0].instant < w[1].instant),
            "oldest first"
        );
        let later = due_runs(&t, &s, now + Duration::microseconds(1), &none, None).due;
        assert_eq!(later.len(), 5);
        assert_ne!(later[0].instant, oldest);
    }

    #[test]
    fn completed_runs_are_not_due_again() {
        let s = ScheduleSettings::default();
        let t = weekly_paris("2020-01-01T00:00:00Z");
        let now = utc("2024-03-05T12:00:00Z");
        let all = due_runs(&t, &s, now, &HashSet::new(), None).due;
        let completed: HashSet<_> = all.iter().take(2).map(|r| r.key).collect();
        let rest = due_runs(&t, &s, now, &completed, None).due;
        assert_eq!(rest, all[2..]);
    }

    #[test]
    fn missed_runs_lie_between_the_latest_recorded_run_and_the_window() {
        let s = ScheduleSettings::default();
        let t = weekly_paris("2020-01-01T00:00:00Z");
        let now = utc("2024-03-05T12:00:00Z");
        let none = HashSet::new();
        assert!(
            due_runs(&t, &s, now, &none, None).missed.is_empty(),
            "no history, nothing missed"
        );
        let latest = utc("2024-01-07T23:01:00Z"); // Monday 8 January
        let missed = due_runs(&t, &s, now, &none, Some(latest)).missed;
        let dates: Vec<_> = missed.iter().map(|r| r.run_date).collect();
        assert_eq!(dates, ["2024-01-15", "2024-01-22", "2024-01-29"].map(date));
        assert!(missed.iter().all(|r| r.instant < now - s.catch_up_window));
    }

    #[test]
    fn disabled_runs_nothing() {
        let s = ScheduleSettings::default();
        let t = TenantSchedule {
            schedule: Schedule::Disabled,
            ..weekly_paris("2020-01-01T00:00:00Z")
        };
        let now = utc("2024-03-05T12:00:00Z");
        let found = due_runs(
            &t,
            &s,
            now,
            &HashSet::new(),
            Some(utc("2021-01-01T00:00:00Z")),
        );
        assert_eq!(found, DueRuns::default());
        assert_eq!(t.next_run(&s, now), None);
    }

    #[test]
    fn next_run_is_strictly_after() {
        let s = ScheduleSettings::default();
        let t = weekly_paris("2020-01-01T00:00:00Z");
        let instant = utc("2024-03-03T23:01:00Z");
        assert_eq!(
            t.next_run(&s, instant - Duration::microseconds(1))
                .unwrap()
                .instant,
            instant
        );
        assert_eq!(
            t.next_run(&s, instant).unwrap().instant,
            utc("2024-03-10T23:01:00Z")
        );
        // A setting changed after `after` pushes the next run past the change.
        let changed = weekly_paris("2024-03-05T00:00:00Z");
        assert_eq!(
            changed
                .next_run(&s, utc("2024-03-01T00:00:00Z"))
                .unwrap()
                .instant,
            utc("2024-03-10T23:01:00Z")
        );
    }
}
