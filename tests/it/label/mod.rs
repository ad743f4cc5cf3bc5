//! Integration tests of AI-feedback judging: `cai label` and
//! `cai generate --preference judge` against local fake judges.

mod e2e;
mod judge;
mod metrics;
mod support;
