//! AI feedback: a judge model choosing between answers under a principle
//! ([`judge`]), picking a prompt's preference pair among its candidates
//! ([`select`]), and measuring a judge against human labels ([`metrics`]).

pub mod drpo;
pub mod judge;
pub mod metrics;
pub mod select;
