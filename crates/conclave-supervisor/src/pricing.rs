//! What a model call costs, priced from its usage while a turn is still running, so that cost
//! grows on the card during a long turn and a budget can stop it in the middle. The client's own
//! `total_cost_usd` at the turn's end is the truth: the estimate is replaced by it then.

/// Dollars per million tokens of one model family.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    pub input: f64,
    pub output: f64,
    /// Writing the prompt cache (5-minute cache: 1.25 × input).
    pub cache_write: f64,
    /// Reading the prompt cache (0.1 × input).
    pub cache_read: f64,
}

const fn rates(input: f64, output: f64) -> Rates {
    Rates {
        input,
        output,
        cache_write: input * 1.25,
        cache_read: input * 0.1,
    }
}

/// Anthropic's list prices, as published on 2025-11-24 (https://www.anthropic.com/pricing).
/// Matched by the start of the model id, most specific first; a model not listed is priced at
/// the turn's end only.
const RATE_TABLE: &[(&str, Rates)] = &[
    ("claude-opus-4-5", rates(5.0, 25.0)),
    ("claude-opus-4", rates(15.0, 75.0)),
    ("claude-3-opus", rates(15.0, 75.0)),
    ("claude-sonnet-4", rates(3.0, 15.0)),
    ("claude-3-7-sonnet", rates(3.0, 15.0)),
    ("claude-3-5-sonnet", rates(3.0, 15.0)),
    ("claude-haiku-4-5", rates(1.0, 5.0)),
    ("claude-3-5-haiku", rates(0.8, 4.0)),
    ("claude-3-haiku", rates(0.25, 1.25)),
];

/// The tokens of one model call (an `assistant` line's `message.usage`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub input: i64,
    pub output: i64,
    pub cache_read: i64,
    pub cache_creation: i64,
}

/// The rates of `model`, if the table knows it.
pub fn rates_of(model: &str) -> Option<Rates> {
    RATE_TABLE
        .iter()
        .find(|(prefix, _)| model.starts_with(prefix))
        .map(|(_, rates)| *rates)
}

/// What one call of `model` with `usage` costs, in dollars; `None` for a model not in the
/// table.
pub fn price(model: &str, usage: &Usage) -> Option<f64> {
    let rates = rates_of(model)?;
    let per_million = |tokens: i64, rate: f64| tokens.max(0) as f64 * rate / 1_000_000.0;
    Some(
        per_million(usage.input, rates.input)
            + per_million(usage.output, rates.output)
            + per_million(usage.cache_read, rates.cache_read)
            + per_million(usage.cache_creation, rates.cache_write),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_priced_per_family_and_unknown_models_are_not() {
        let usage = Usage {
            input: 1_000_000,
            output: 100_000,
            cache_read: 1_000_000,
            cache_creation: 1_000_000,
        };
        let sonnet = price("claude-sonnet-4-5-20250929", &usage).expect("sonnet is listed");
        assert!((sonnet - (3.0 + 1.5 + 0.3 + 3.75)).abs() < 1e-9, "{sonnet}");
        let opus_4_5 = price("claude-opus-4-5", &usage).expect("listed");
        let opus_4_1 = price("claude-opus-4-1", &usage).expect("listed");
        assert!(opus_4_5 < opus_4_1, "the more specific entry wins");
        assert_eq!(price("some-other-model", &usage), None);
    }
}
