//! Rapport under pressure, measured from outside.
//!
//! `rapport-load` drives simulated people against `rapport serve` over the same HTTP + SSE API
//! the page uses, and reports what they experienced: time to the first text, to the whole
//! reply, the server's queue wait, throughput, errors, fairness and the server's memory. The
//! same harness runs the chaos drills, which break things on purpose and then check every
//! conversation against what the server acknowledged.
//!
//! The flow of a run follows the modules: [`server`] starts `rapport serve`, [`client`] is one
//! person's session, [`run`] is many people at once, [`report`] and [`sweep`] summarise and chart
//! ([`stats`], [`chart`]); [`chaos`] keeps the ledgers and checks them, [`drills`] are the
//! disruptions, [`faults`] is the fault-injecting proxy in front of a real model server;
//! [`abuse`] is a hostile crowd (cookie-less readers, cookie-dropping flooders) beside one
//! patient guest; [`latency`] is one person's scripted conversation, timed turn by turn with
//! each reply's trace.

pub mod abuse;
pub mod chaos;
pub mod chart;
pub mod cli;
pub mod client;
pub mod drills;
pub mod faults;
pub mod latency;
pub mod report;
pub mod run;
pub mod server;
pub mod stats;
pub mod sweep;

/// The messages people send, from `datasets/load/messages.txt`, compiled in so the binary runs
/// from anywhere.
pub fn default_messages() -> Vec<String> {
    run::read_messages(include_str!("../../../datasets/load/messages.txt"))
}
