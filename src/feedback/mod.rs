//! AI feedback: a judge model choosing between answers under a principle
//! ([`judge`]), picking a prompt's preference pair among its candidates
//! ([`select`]), measuring a judge against human labels ([`metrics`]),
//! calibrating a judge ensemble on them ([`calibrate`]), DRPO's prompt
//! search ([`drpo`]) and the retrieval of in-context examples at inference
//! ([`examples`]).

pub mod calibrate;
pub mod drpo;
pub mod examples;
pub mod judge;
pub mod metrics;
pub mod select;
