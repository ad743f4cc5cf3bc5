//! AI feedback: a judge model choosing between answers under a principle
//! ([`judge`]), picking a prompt's preference pair among its candidates
//! ([`select`]), measuring a judge against human labels ([`metrics`]) and
//! calibrating a judge ensemble on them ([`calibrate`]).

pub mod calibrate;
pub mod drpo;
pub mod judge;
pub mod metrics;
pub mod select;
