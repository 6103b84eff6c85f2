//! One result, one JSON line: what every suite prints and `table` reads.
//!
//! ```text
//! {"suite":"latency","metric":"get_state","params":{"iterations":20000},
//!  "median":11.2,"p99":19.8,"min":9.7,"max":240.1,"n":20000,"unit":"us",
//!  "baseline":8.9,"baseline_is":"raw SCM_RIGHTS round trip","ratio":1.26,
//!  "ratio_is":"median/baseline","target":{"of":"ratio","at_most":1.5,
//!  "text":"≤ 1.5× the raw round trip","met":true}}
//! ```
//!
//! `median`, `p99`, `min` and `max` summarise `n` samples (for a single
//! measurement all four are that value). `baseline` is measured in the same run,
//! and `ratio_is` says which way `ratio` divides. `target` is the issue's goal
//! for this figure and whether this run met it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One result line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The suite: `latency`, `handover`, `zero_copy`, `memory`, `throughput`.
    pub suite: String,
    /// The figure within the suite.
    pub metric: String,
    /// The workload's parameters.
    pub params: Map<String, Value>,
    /// Median of the samples.
    pub median: f64,
    /// 99th percentile (nearest rank).
    pub p99: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
    /// Number of samples.
    pub n: usize,
    /// Unit of `median`, `p99`, `min`, `max` and `baseline`.
    pub unit: String,
    /// The baseline's median, measured in the same run.
    pub baseline: Option<f64>,
    /// What the baseline is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_is: Option<String>,
    /// `median` against `baseline`, divided as `ratio_is` says.
    pub ratio: Option<f64>,
    /// `"median/baseline"` or `"baseline/median"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio_is: Option<String>,
    /// The goal for this figure, if the issue sets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
}

/// A goal and whether it was met.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// What is compared: `"median"` or `"ratio"`.
    pub of: String,
    /// The figure must not exceed this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_most: Option<f64>,
    /// The figure must reach this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_least: Option<f64>,
    /// The goal in words, as the docs state it.
    pub text: String,
    /// Whether this run met it.
    pub met: bool,
}

/// Median, p99, min and max of some samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Median (the lower middle for an even count).
    pub median: f64,
    /// 99th percentile, nearest rank.
    pub p99: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// How many.
    pub n: usize,
}

impl Summary {
    /// Summarise `samples`; an empty slice gives zeros.
    #[must_use]
    pub fn of(samples: &[f64]) -> Summary {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        if n == 0 {
            return Summary {
                median: 0.0,
                p99: 0.0,
                min: 0.0,
                max: 0.0,
                n,
            };
        }
        Summary {
            median: sorted[(n - 1) / 2],
            p99: sorted[nearest_rank(n, 0.99)],
            min: sorted[0],
            max: sorted[n - 1],
            n,
        }
    }

    /// A single measurement.
    #[must_use]
    pub fn one(value: f64) -> Summary {
        Summary::of(&[value])
    }
}

/// Index of the `p` quantile in a sorted slice of `n`, nearest-rank method.
fn nearest_rank(n: usize, p: f64) -> usize {
    let rank = (p * n as f64).ceil() as usize;
    rank.clamp(1, n) - 1
}

/// Three decimals are more than any of these figures can support.
#[must_use]
pub fn round(x: f64) -> f64 {
    if x.abs() >= 1e6 {
        x.round()
    } else {
        (x * 1000.0).round() / 1000.0
    }
}

impl Record {
    /// A result with no baseline yet.
    #[must_use]
    pub fn new(suite: &str, metric: &str, unit: &str, s: Summary) -> Record {
        Record {
            suite: suite.to_owned(),
            metric: metric.to_owned(),
            params: Map::new(),
            median: round(s.median),
            p99: round(s.p99),
            min: round(s.min),
            max: round(s.max),
            n: s.n,
            unit: unit.to_owned(),
            baseline: None,
            baseline_is: None,
            ratio: None,
            ratio_is: None,
            target: None,
        }
    }

    /// Add a workload parameter.
    #[must_use]
    pub fn param(mut self, key: &str, value: impl Into<Value>) -> Record {
        self.params.insert(key.to_owned(), value.into());
        self
    }

    /// Set the baseline; `ratio` becomes `median / baseline`.
    #[must_use]
    pub fn baseline(mut self, baseline: f64, what: &str) -> Record {
        self.baseline = Some(round(baseline));
        self.baseline_is = Some(what.to_owned());
        self.ratio = (baseline > 0.0).then(|| round(self.median / baseline));
        self.ratio_is = Some("median/baseline".to_owned());
        self
    }

    /// Set a baseline that `median` is not divided by (it was subtracted, say):
    /// `ratio` stays null.
    #[must_use]
    pub fn baseline_only(mut self, baseline: f64, what: &str) -> Record {
        self.baseline = Some(round(baseline));
        self.baseline_is = Some(what.to_owned());
        self
    }

    /// Set the baseline; `ratio` becomes `baseline / median` (a speed-up).
    #[must_use]
    pub fn baseline_speedup(mut self, baseline: f64, what: &str) -> Record {
        self = self.baseline(baseline, what);
        self.ratio = (self.median > 0.0).then(|| round(baseline / self.median));
        self.ratio_is = Some("baseline/median".to_owned());
        self
    }

    /// The goal: `of` ("median" or "ratio") must not exceed `limit`.
    #[must_use]
    pub fn at_most(self, of: &str, limit: f64, text: &str) -> Record {
        self.goal(of, Some(limit), None, text)
    }

    /// The goal: `of` ("median" or "ratio") must reach `limit`.
    #[must_use]
    pub fn at_least(self, of: &str, limit: f64, text: &str) -> Record {
        self.goal(of, None, Some(limit), text)
    }

    fn goal(mut self, of: &str, at_most: Option<f64>, at_least: Option<f64>, text: &str) -> Record {
        let figure = match of {
            "ratio" => self.ratio,
            _ => Some(self.median),
        };
        let met = figure
            .is_some_and(|x| at_most.is_none_or(|m| x <= m) && at_least.is_none_or(|m| x >= m));
        self.target = Some(Target {
            of: of.to_owned(),
            at_most,
            at_least,
            text: text.to_owned(),
            met,
        });
        self
    }

    /// The JSON line, without its newline.
    #[must_use]
    pub fn to_line(&self) -> String {
        // Serializing plain structs with finite numbers cannot fail; a NaN
        // becomes null, which is still a line.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_uses_nearest_rank() {
        let samples: Vec<f64> = (1..=200).map(f64::from).collect();
        let s = Summary::of(&samples);
        assert_eq!(
            (s.median, s.p99, s.min, s.max, s.n),
            (100.0, 198.0, 1.0, 200.0, 200)
        );
        let one = Summary::one(7.0);
        assert_eq!(
            (one.median, one.p99, one.min, one.max),
            (7.0, 7.0, 7.0, 7.0)
        );
        assert_eq!(Summary::of(&[]).n, 0);
    }

    #[test]
    fn ratios_divide_the_way_they_say() {
        let slow = Record::new("s", "m", "us", Summary::one(3.0)).baseline(2.0, "raw");
        assert_eq!(slow.ratio, Some(1.5));
        assert_eq!(slow.ratio_is.as_deref(), Some("median/baseline"));
        let fast = Record::new("s", "m", "ms", Summary::one(2.0)).baseline_speedup(600.0, "copy");
        assert_eq!(fast.ratio, Some(300.0));
        assert_eq!(fast.ratio_is.as_deref(), Some("baseline/median"));
    }

    #[test]
    fn targets_are_judged_on_what_they_name() {
        let r = Record::new("s", "m", "us", Summary::one(3.0)).baseline(2.0, "raw");
        assert!(
            !r.clone()
                .at_most("ratio", 1.4, "")
                .target
                .expect("target")
                .met
        );
        assert!(
            r.clone()
                .at_most("ratio", 1.5, "")
                .target
                .expect("target")
                .met
        );
        assert!(
            r.clone()
                .at_least("median", 3.0, "")
                .target
                .expect("target")
                .met
        );
        assert!(!r.at_least("median", 3.1, "").target.expect("target").met);
    }

    #[test]
    fn a_line_round_trips() {
        let r = Record::new("latency", "get_state", "us", Summary::of(&[1.0, 2.0]))
            .param("iterations", 2)
            .baseline(1.0, "raw")
            .at_most("ratio", 1.5, "≤ 1.5×");
        let back: Record = serde_json::from_str(&r.to_line()).expect("parse");
        assert_eq!(back, r);
    }
}
