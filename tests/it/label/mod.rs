//! Integration tests of AI-feedback judging: `cai label` (with its
//! calibration and arena file) and `cai generate --preference judge`
//! against local fake judges; `cai validate` on a paper-format
//! constitution.

mod calibrate;
mod e2e;
mod judge;
mod metrics;
mod paper_format;
mod support;
