//! What a run costs: a price table, a spend meter with a cap, and the
//! `--dry-run` estimate.
//!
//! **Prices** are USD per million input and output tokens. The provider
//! table ([`crate::provider::registry`]) holds, per provider, the prices of
//! its common models with the date each price was read; `--price-in`
//! and `--price-out` (or `price_in`/`price_out` in `cai.toml`) override it,
//! and are needed for a model the table lacks. Local servers cost nothing
//! unless you give a price. Model names match exactly or by prefix (a dated
//! snapshot such as `gpt-4o-mini-2024-07-18` uses the `gpt-4o-mini` row);
//! a `vendor/` prefix (OpenRouter, Together) is ignored.
//!
//! **`--max-cost USD`** caps the spend of one invocation: before each
//! request the engine reserves its worst-case cost (estimated input tokens
//! plus the full `--max-tokens` of output) and stops the run cleanly (exit
//! 3, resumable) instead of sending a request whose reservation would pass
//! the cap; when the reply arrives the reservation is replaced by the cost
//! of its reported `usage`. Requests answered from the journal of an
//! earlier run cost nothing.
//!
//! **`--dry-run`** sends nothing. It renders each prompt's real first
//! request and estimates its input tokens as characters / 4 plus 4 per
//! message. Later stages grow the same conversation: each reply is assumed
//! to be [`REPLY_FRACTION`] of `--max-tokens` long, and each critique or
//! revision request is the template rendered with every principle of the
//! constitution (averaged) around a reply of that length. Output tokens are
//! estimated at the same fraction of `--max-tokens`; the upper bound uses
//! all of it. Requests a resume would answer from the journal are counted
//! as if they were sent.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

pub use crate::provider::registry::PriceRow;
use crate::provider::registry::{Prices, ENTRIES};

/// Every price row of the provider table ([`crate::provider::registry`]),
/// in table order.
pub fn price_rows() -> impl Iterator<Item = &'static PriceRow> {
    ENTRIES.iter().flat_map(|e| match e.prices {
        Prices::Table(rows) => rows,
        Prices::Free | Prices::Unlisted => &[],
    })
}

/// Fraction of `--max-tokens` a reply is assumed to use in estimates.
pub const REPLY_FRACTION: f64 = 0.5;

/// The table row for `model`: exact name, else the longest prefix.
pub fn lookup(model: &str) -> Option<&'static PriceRow> {
    let m = model
        .rsplit('/')
        .next()
        .unwrap_or(model)
        .to_ascii_lowercase();
    price_rows().find(|r| r.model == m).or_else(|| {
        price_rows()
            .filter(|r| m.starts_with(r.model))
            .max_by_key(|r| r.model.len())
    })
}

/// The price in force for a run, and where it came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Price {
    pub input_per_m: f64,
    pub output_per_m: f64,
    /// Input tokens read from the provider's prompt cache.
    pub cached_in_per_m: f64,
    /// Input tokens written to the provider's prompt cache.
    pub cache_write_per_m: f64,
    /// `"--price-in/--price-out"`, or `"price table: MODEL as of DATE"`.
    pub source: String,
}

impl Price {
    /// USD for a number of tokens, every input token at the full price.
    pub fn cost(&self, tokens_in: u64, tokens_out: u64) -> f64 {
        (tokens_in as f64 * self.input_per_m + tokens_out as f64 * self.output_per_m) / 1e6
    }

    /// USD for a reply's usage: cached and cache-written input tokens at
    /// their own prices, the rest of the input at the full one.
    pub fn cost_usage(&self, u: &crate::provider::Usage) -> f64 {
        let cached = u.cached_tokens.min(u.prompt_tokens);
        let written = u.cache_write_tokens.min(u.prompt_tokens - cached);
        let plain = u.prompt_tokens - cached - written;
        (plain as f64 * self.input_per_m
            + cached as f64 * self.cached_in_per_m
            + written as f64 * self.cache_write_per_m
            + u.completion_tokens as f64 * self.output_per_m)
            / 1e6
    }

    /// Every price times `factor` (the batch discount).
    pub fn scaled(&self, factor: f64, why: &str) -> Price {
        Price {
            input_per_m: self.input_per_m * factor,
            output_per_m: self.output_per_m * factor,
            cached_in_per_m: self.cached_in_per_m * factor,
            cache_write_per_m: self.cache_write_per_m * factor,
            source: format!("{}, {why}", self.source),
        }
    }
}

/// The price for `model`: the overrides if given (a missing half is taken
/// from the table, else 0), else the table, else `None`.
pub fn resolve(model: &str, price_in: Option<f64>, price_out: Option<f64>) -> Option<Price> {
    let table = lookup(model);
    if price_in.is_some() || price_out.is_some() {
        let input = price_in.or(table.map(|r| r.input_per_m)).unwrap_or(0.0);
        // The table's cache discounts, as ratios, carry over to a given
        // input price; without a row the cache is priced like input.
        let ratio = |part: fn(&PriceRow) -> f64| {
            table
                .filter(|r| r.input_per_m > 0.0)
                .map_or(1.0, |r| part(r) / r.input_per_m)
        };
        return Some(Price {
            input_per_m: input,
            output_per_m: price_out.or(table.map(|r| r.output_per_m)).unwrap_or(0.0),
            cached_in_per_m: input * ratio(|r| r.cached_in_per_m),
            cache_write_per_m: input * ratio(|r| r.cache_write_per_m),
            source: "--price-in/--price-out".into(),
        });
    }
    table.map(|r| Price {
        input_per_m: r.input_per_m,
        output_per_m: r.output_per_m,
        cached_in_per_m: r.cached_in_per_m,
        cache_write_per_m: r.cache_write_per_m,
        source: if r.cache_as_of == r.as_of {
            format!("price table: {} as of {}", r.model, r.as_of)
        } else {
            format!(
                "price table: {} as of {} (cache prices as of {})",
                r.model, r.as_of, r.cache_as_of
            )
        },
    })
}

/// Micro-dollars, so spend can live in atomics.
pub fn to_micros(usd: f64) -> u64 {
    (usd.max(0.0) * 1e6).round() as u64
}

pub fn from_micros(m: u64) -> f64 {
    m as f64 / 1e6
}

/// Reservations against a spend cap, shared by every request of a run.
#[derive(Debug)]
pub struct Budget {
    cap: u64,
    /// Spent plus reserved for requests in flight.
    committed: AtomicU64,
}

impl Budget {
    pub fn new(cap_usd: f64) -> Self {
        Self {
            cap: to_micros(cap_usd),
            committed: AtomicU64::new(0),
        }
    }

    /// Reserves `micros`; `false` (and nothing reserved) if that would
    /// pass the cap.
    pub fn reserve(&self, micros: u64) -> bool {
        self.committed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                let next = c.saturating_add(micros);
                (next <= self.cap).then_some(next)
            })
            .is_ok()
    }

    /// Replaces a reservation by what the request really cost.
    pub fn settle(&self, reserved: u64, actual: u64) {
        if actual >= reserved {
            self.committed
                .fetch_add(actual - reserved, Ordering::AcqRel);
        } else {
            let _ = self
                .committed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                    Some(c.saturating_sub(reserved - actual))
                });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_matches_exact_then_longest_prefix() {
        assert_eq!(lookup("gpt-4o").unwrap().model, "gpt-4o");
        assert_eq!(
            lookup("gpt-4o-mini-2024-07-18").unwrap().model,
            "gpt-4o-mini"
        );
        assert_eq!(lookup("openai/gpt-4.1-mini").unwrap().model, "gpt-4.1-mini");
        assert_eq!(
            lookup("gemini-2.5-flash-lite").unwrap().model,
            "gemini-2.5-flash-lite"
        );
        assert!(lookup("my-local-model").is_none());
    }

    #[test]
    fn overrides_win_and_fill_from_the_table() {
        let p = resolve("gpt-4o-mini", Some(1.0), None).unwrap();
        assert_eq!((p.input_per_m, p.output_per_m), (1.0, 0.60));
        assert!(resolve("unknown", None, None).is_none());
        let p = resolve("unknown", None, Some(2.0)).unwrap();
        assert_eq!((p.input_per_m, p.output_per_m), (0.0, 2.0));
        assert!((p.cost(1_000_000, 500_000) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn budget_refuses_what_would_pass_the_cap() {
        let b = Budget::new(1.0);
        assert!(b.reserve(600_000));
        assert!(!b.reserve(500_000));
        b.settle(600_000, 100_000);
        assert!(b.reserve(500_000));
        assert!(!b.reserve(500_000));
    }
}
