//! autoinvoice: generates affiliate invoices on each network's schedule, in its time zone.
//!
//! The pure core — [`schedule`] (SPEC §2), [`rules`] (§3) and [`money`] — takes values and
//! returns values. [`store`] is the one place for SQL, [`engine`] runs one run end to end,
//! [`config`] turns the file and environment into typed settings, and [`commands`] are the
//! CLI's commands.

pub mod actors;
pub mod clock;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod engine;
pub mod http;
#[path = "../migrations/mod.rs"]
pub mod migrations;
pub mod money;
pub mod notify;
pub mod rules;
pub mod schedule;
pub mod store;
pub mod telemetry;
