//! autoinvoice: generates affiliate invoices on each network's schedule, in its time zone.
//!
//! The pure core — [`schedule`] (SPEC §2), [`rules`] (§3) and [`money`] — takes values and
//! returns values; storage, the daemon and HTTP are built around it.

pub mod money;
pub mod rules;
pub mod schedule;
