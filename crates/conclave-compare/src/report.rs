//! Medians and spread over repeats, and what the comparison writes: `compare-<time>.json`,
//! `report.md` (the table, the charts, and plain words on which differences the spread covers),
//! and one SVG chart per metric ([`crate::chart`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::{Comparison, RunRecord};

/// A metric over the repeats of one way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Runs counted.
    pub runs: usize,
}

impl Spread {
    pub fn of(values: &[f64]) -> Spread {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let runs = sorted.len();
        if runs == 0 {
            return Spread::default();
        }
        let median = if runs % 2 == 1 {
            sorted[runs / 2]
        } else {
            (sorted[runs / 2 - 1] + sorted[runs / 2]) / 2.0
        };
        Spread {
            median,
            min: sorted[0],
            max: sorted[runs - 1],
            runs,
        }
    }

    /// Whether the two ranges overlap: the difference of the medians is within the spread.
    pub fn overlaps(&self, other: &Spread) -> bool {
        self.min <= other.max && other.min <= self.max
    }
}

/// A metric of a run: its key in the JSON, its words, its unit, and how to read it.
pub struct Metric {
    pub key: &'static str,
    pub label: &'static str,
    /// Lower is better (for the plain-words comparison); else it is only reported.
    pub lower_is_better: bool,
    pub value: fn(&RunRecord) -> f64,
}

/// Every metric, in the report's order.
pub const METRICS: &[Metric] = &[
    Metric {
        key: "check_passed",
        label: "check passed (share of runs)",
        lower_is_better: false,
        value: |r| f64::from(u8::from(r.check_passed)),
    },
    Metric {
        key: "wall_secs",
        label: "wall time (s)",
        lower_is_better: true,
        value: |r| r.wall_secs,
    },
    Metric {
        key: "cost_usd",
        label: "cost (USD)",
        lower_is_better: true,
        value: |r| r.cost_usd,
    },
    Metric {
        key: "input_tokens",
        label: "input tokens (cache included)",
        lower_is_better: true,
        value: |r| r.input_tokens as f64,
    },
    Metric {
        key: "output_tokens",
        label: "output tokens",
        lower_is_better: true,
        value: |r| r.output_tokens as f64,
    },
    Metric {
        key: "cache_read_tokens",
        label: "cache read tokens",
        lower_is_better: false,
        value: |r| r.cache_read_tokens as f64,
    },
    Metric {
        key: "cache_creation_tokens",
        label: "cache write tokens",
        lower_is_better: false,
        value: |r| r.cache_creation_tokens as f64,
    },
    Metric {
        key: "turns",
        label: "model calls",
        lower_is_better: true,
        value: |r| r.turns as f64,
    },
    Metric {
        key: "agents",
        label: "agents",
        lower_is_better: false,
        value: |r| r.agents as f64,
    },
    Metric {
        key: "files_changed",
        label: "files changed",
        lower_is_better: false,
        value: |r| r.files_changed as f64,
    },
    Metric {
        key: "merge_conflicts",
        label: "merge conflicts",
        lower_is_better: true,
        value: |r| r.merge_conflicts as f64,
    },
    Metric {
        key: "send_backs",
        label: "send-backs",
        lower_is_better: true,
        value: |r| r.send_backs as f64,
    },
    Metric {
        key: "lease_denials",
        label: "lease denials",
        lower_is_better: true,
        value: |r| r.lease_denials as f64,
    },
    Metric {
        key: "coordination_tokens",
        label: "coordination tokens (estimated)",
        lower_is_better: true,
        value: |r| r.coordination_tokens as f64,
    },
    Metric {
        key: "coordination_percent",
        label: "coordination (% of input)",
        lower_is_better: true,
        value: |r| r.coordination_percent,
    },
];

/// Per way (in the order first met), per metric: the spread over the runs that ran.
pub fn summarize(runs: &[RunRecord]) -> BTreeMap<String, BTreeMap<String, Spread>> {
    let mut summary = BTreeMap::new();
    for way in ways_in_order(runs) {
        let ran: Vec<&RunRecord> = runs
            .iter()
            .filter(|r| r.way == way && r.ended != "error")
            .collect();
        let metrics = METRICS
            .iter()
            .map(|metric| {
                let values: Vec<f64> = ran.iter().map(|r| (metric.value)(r)).collect();
                (metric.key.to_string(), Spread::of(&values))
            })
            .collect();
        summary.insert(way, metrics);
    }
    summary
}

/// The ways of the runs, in the order they first ran.
pub fn ways_in_order(runs: &[RunRecord]) -> Vec<String> {
    let mut ways: Vec<String> = Vec::new();
    for run in runs {
        if !ways.contains(&run.way) {
            ways.push(run.way.clone());
        }
    }
    ways
}

/// Writes the JSON, the charts and the Markdown report into `folder`.
pub fn write_report(folder: &Path, comparison: &Comparison) -> anyhow::Result<()> {
    let json = folder.join(format!("{}.json", comparison.name));
    std::fs::write(&json, serde_json::to_string_pretty(comparison)?)
        .with_context(|| format!("cannot write {}", json.display()))?;
    let ways = ways_in_order(&comparison.runs);
    for metric in METRICS {
        let bars: Vec<(String, Spread)> = ways
            .iter()
            .map(|way| {
                let spread = comparison
                    .summary
                    .get(way)
                    .and_then(|metrics| metrics.get(metric.key))
                    .copied()
                    .unwrap_or_default();
                (way.clone(), spread)
            })
            .collect();
        crate::chart::bar_chart(
            &folder.join(format!("{}.svg", metric.key)),
            metric.label,
            &bars,
            comparison.scripted,
        )?;
    }
    std::fs::write(folder.join("report.md"), markdown(comparison))
        .context("cannot write report.md")?;
    Ok(())
}

/// The banner of a comparison against the scripted stand-in.
pub const SCRIPTED_BANNER: &str = "SCRIPTED: the model turns were played by Conclave's scripted \
stand-in for the Anthropic API. The figures show what each way's machinery does and costs in \
tokens for a fixed script, not how well a model does the task.";

/// The Markdown report.
pub fn markdown(comparison: &Comparison) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "# Comparison {}\n", comparison.name);
    if comparison.scripted {
        let _ = writeln!(text, "> **{SCRIPTED_BANNER}**\n");
    }
    let _ = writeln!(
        text,
        "Started {} at commit `{}`; ways: {}; {} repeat{} each{}{}.\n",
        comparison.started_at,
        short(&comparison.commit),
        comparison.ways.join(", "),
        comparison.repeat,
        if comparison.repeat == 1 { "" } else { "s" },
        comparison
            .budget_usd
            .map(|b| format!("; budget ${b:.2} a run"))
            .unwrap_or_default(),
        format_args!("; timeout {} s a run", comparison.timeout_secs),
    );
    let _ = writeln!(text, "Check: `{}`\n", comparison.check);
    let _ = writeln!(
        text,
        "<details><summary>Task</summary>\n\n```text\n{}\n```\n</details>\n",
        comparison.task.trim_end()
    );

    let _ = writeln!(text, "## Runs\n");
    let _ = writeln!(
        text,
        "| way | run | ended | check | wall s | cost $ | input | output | cache read | cache write | calls | agents | files | conflicts | send-backs | denials | coordination |"
    );
    let _ = writeln!(text, "|{}", "---|".repeat(17));
    for run in &comparison.runs {
        let _ = writeln!(
            text,
            "| {} | {} | {} | {} | {:.1} | {:.4} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} % (≈ {} tokens) |",
            run.way,
            run.repeat,
            run.ended,
            check_word(run),
            run.wall_secs,
            run.cost_usd,
            run.input_tokens,
            run.output_tokens,
            run.cache_read_tokens,
            run.cache_creation_tokens,
            run.turns,
            run.agents,
            run.files_changed,
            run.merge_conflicts,
            run.send_backs,
            run.lease_denials,
            run.coordination_percent,
            run.coordination_tokens,
        );
    }
    let errors: Vec<&RunRecord> = comparison
        .runs
        .iter()
        .filter(|r| r.error.is_some())
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(text, "\nWhat went wrong:\n");
        for run in errors {
            let _ = writeln!(
                text,
                "- {} run {}: {}",
                run.way,
                run.repeat,
                run.error.as_deref().unwrap_or_default()
            );
        }
    }

    let ways = ways_in_order(&comparison.runs);
    let _ = writeln!(text, "\n## Medians and spread\n");
    let _ = writeln!(
        text,
        "Each cell is the median over the runs of the way, with the least and most in brackets \
         when there are several.\n"
    );
    let _ = write!(text, "| metric |");
    for way in &ways {
        let _ = write!(text, " {way} |");
    }
    let _ = writeln!(text, "\n|---|{}", "---|".repeat(ways.len()));
    for metric in METRICS {
        let _ = write!(text, "| {} |", metric.label);
        for way in &ways {
            let spread = spread_of(comparison, way, metric.key);
            let _ = write!(text, " {} |", spread_text(&spread));
        }
        let _ = writeln!(text);
    }

    let _ = writeln!(text, "\n## What the spread says\n");
    for line in plain_words(comparison, &ways) {
        let _ = writeln!(text, "- {line}");
    }

    let _ = writeln!(text, "\n## Charts\n");
    for metric in METRICS {
        let _ = writeln!(text, "![{}]({}.svg)\n", metric.label, metric.key);
    }
    let _ = writeln!(
        text,
        "## How to read it\n\nToken totals are the API's own counts, summed over every model \
         call of every agent of the run. Coordination tokens are estimated from characters at \
         {} characters a token: the Conclave tool definitions and protocol text each call \
         carries, Conclave tool calls and results, text injected at session start and by \
         wake-ups, and handoffs, each counted once per call that carried it. See docs/compare.md.",
        comparison.chars_per_token
    );
    text
}

fn spread_of(comparison: &Comparison, way: &str, key: &str) -> Spread {
    comparison
        .summary
        .get(way)
        .and_then(|metrics| metrics.get(key))
        .copied()
        .unwrap_or_default()
}

fn check_word(run: &RunRecord) -> String {
    match (run.check_passed, run.check_exit) {
        (true, _) => "passed".into(),
        (false, Some(code)) => format!("failed ({code})"),
        (false, None) if run.ended == "error" || run.ended == "interrupted" => "not run".into(),
        (false, None) => "failed (timeout)".into(),
    }
}

fn spread_text(spread: &Spread) -> String {
    if spread.runs == 0 {
        return "–".into();
    }
    if spread.runs == 1 || (spread.max - spread.min).abs() < f64::EPSILON {
        return number(spread.median);
    }
    format!(
        "{} [{}–{}]",
        number(spread.median),
        number(spread.min),
        number(spread.max)
    )
}

/// A number as a person reads it: integers as such, else four significant places at most.
pub fn number(value: f64) -> String {
    if value.fract().abs() < 1e-9 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else if value.abs() >= 100.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.4}")
    }
}

/// For each metric where lower is better: the best way, and for every other way whether the
/// difference is within the spread of the repeats. With one run per way, it says that no spread
/// was measured.
pub fn plain_words(comparison: &Comparison, ways: &[String]) -> Vec<String> {
    let mut lines = Vec::new();
    let passed: Vec<String> = ways
        .iter()
        .map(|way| {
            let runs: Vec<&RunRecord> = comparison.runs.iter().filter(|r| &r.way == way).collect();
            let passed = runs.iter().filter(|r| r.check_passed).count();
            format!("{way} {passed} of {}", runs.len())
        })
        .collect();
    lines.push(format!("The check passed: {}.", passed.join(", ")));
    if comparison.repeat <= 1 {
        lines.push(
            "One run per way: no spread was measured, so no difference below can be told from \
             chance. Run with --repeat 3 or more to see the spread."
                .into(),
        );
    }
    for metric in METRICS.iter().filter(|m| m.lower_is_better) {
        let spreads: Vec<(&String, Spread)> = ways
            .iter()
            .map(|way| (way, spread_of(comparison, way, metric.key)))
            .filter(|(_, spread)| spread.runs > 0)
            .collect();
        let Some((_, best_spread)) = spreads
            .iter()
            .min_by(|a, b| a.1.median.total_cmp(&b.1.median))
            .copied()
        else {
            continue;
        };
        if spreads.len() < 2 {
            continue;
        }
        if spreads
            .iter()
            .all(|(_, spread)| spread.median == best_spread.median && spread.min == spread.max)
        {
            lines.push(format!(
                "{}: the same for every way ({}).",
                capitalize(metric.label),
                number(best_spread.median)
            ));
            continue;
        }
        let tied: Vec<&str> = spreads
            .iter()
            .filter(|(_, spread)| spread.median == best_spread.median)
            .map(|(way, _)| way.as_str())
            .collect();
        let mut within = Vec::new();
        let mut beyond = Vec::new();
        for (way, spread) in &spreads {
            if tied.contains(&way.as_str()) {
                continue;
            }
            if comparison.repeat > 1 && spread.overlaps(&best_spread) {
                within.push(way.as_str());
            } else {
                beyond.push(way.as_str());
            }
        }
        let mut line = format!(
            "{}: lowest median for {} ({}).",
            capitalize(metric.label),
            tied.join(" and "),
            number(best_spread.median)
        );
        if !within.is_empty() {
            let _ = write!(
                line,
                " The difference from {} is within the spread of the repeats: not a real difference on this evidence.",
                within.join(", ")
            );
        }
        if !beyond.is_empty() && comparison.repeat > 1 {
            let _ = write!(line, " {} lie outside its spread.", beyond.join(", "));
        }
        lines.push(line);
    }
    lines
}

fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(way: &str, repeat: u32, cost: f64) -> RunRecord {
        RunRecord {
            way: way.into(),
            repeat,
            ended: "finished".into(),
            cost_usd: cost,
            check_passed: true,
            check_exit: Some(0),
            ..RunRecord::default()
        }
    }

    #[test]
    fn medians_and_spread_of_odd_and_even_counts() {
        let odd = Spread::of(&[3.0, 1.0, 2.0]);
        assert_eq!((odd.median, odd.min, odd.max, odd.runs), (2.0, 1.0, 3.0, 3));
        let even = Spread::of(&[4.0, 1.0, 2.0, 3.0]);
        assert_eq!(even.median, 2.5);
        assert_eq!(Spread::of(&[]).runs, 0);
    }

    #[test]
    fn overlapping_ranges_are_said_to_be_within_the_spread() {
        let runs = vec![
            run("single", 1, 1.0),
            run("team", 1, 1.5),
            run("single", 2, 2.0),
            run("team", 2, 3.0),
            run("single", 3, 1.2),
            run("team", 3, 9.0),
            run("loop", 1, 5.0),
            run("loop", 2, 6.0),
            run("loop", 3, 7.0),
        ];
        let comparison = Comparison {
            name: "compare-x".into(),
            repeat: 3,
            summary: summarize(&runs),
            runs,
            ..Comparison::default()
        };
        let ways = ways_in_order(&comparison.runs);
        let words = plain_words(&comparison, &ways);
        let cost = words
            .iter()
            .find(|line| line.starts_with("Cost (USD)"))
            .expect("a cost line");
        assert!(cost.contains("lowest median for single (1.2000)"), "{cost}");
        assert!(cost.contains("from team is within the spread"), "{cost}");
        assert!(cost.contains("loop lie outside its spread"), "{cost}");
        assert!(words[0].contains("single 3 of 3"), "{words:?}");
    }

    #[test]
    fn one_run_per_way_says_no_spread_was_measured() {
        let runs = vec![run("single", 1, 1.0), run("team", 1, 2.0)];
        let comparison = Comparison {
            name: "compare-x".into(),
            repeat: 1,
            scripted: true,
            summary: summarize(&runs),
            runs,
            ..Comparison::default()
        };
        let words = plain_words(&comparison, &ways_in_order(&comparison.runs));
        assert!(words.iter().any(|l| l.contains("no spread was measured")));
        assert!(
            words
                .iter()
                .any(|l| l == "Lease denials: the same for every way (0)."),
            "{words:?}"
        );
        assert!(!words.iter().any(|l| l.contains("within the spread")));
        let report = markdown(&comparison);
        assert!(report.contains("SCRIPTED"), "the scripted banner");
        assert!(report.contains("![cost (USD)](cost_usd.svg)"));
    }
}
