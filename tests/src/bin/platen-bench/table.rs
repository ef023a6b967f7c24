//! Figures, goals and their printing: a table for people, JSON for machines.

use serde_json::{json, Value};

/// One measured figure.
pub struct Figure {
    pub section: &'static str,
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
}

/// Which way a goal's ratio must fall.
#[derive(Clone, Copy)]
pub enum Bound {
    AtMost,
    AtLeast,
}

/// A goal of the issue, stated as a ratio of two figures of the same run (or of a
/// figure and a fixed limit, for the footprint).
pub struct Goal {
    pub section: &'static str,
    pub name: String,
    /// How the ratio is formed, in words (`Platen p50 / floor p50`).
    pub ratio_of: String,
    pub ratio: f64,
    pub bound: Bound,
    pub limit: f64,
}

impl Goal {
    pub fn met(&self) -> bool {
        match self.bound {
            Bound::AtMost => self.ratio <= self.limit,
            Bound::AtLeast => self.ratio >= self.limit,
        }
    }
    fn limit_text(&self) -> String {
        match self.bound {
            Bound::AtMost => format!("≤ {}", self.limit),
            Bound::AtLeast => format!("≥ {}", self.limit),
        }
    }
}

#[derive(Default)]
pub struct Results {
    pub figures: Vec<Figure>,
    pub goals: Vec<Goal>,
    pub notes: Vec<String>,
}

impl Results {
    pub fn figure(
        &mut self,
        section: &'static str,
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
    ) {
        self.figures.push(Figure {
            section,
            name: name.into(),
            value,
            unit,
        });
    }

    pub fn goal(
        &mut self,
        section: &'static str,
        name: impl Into<String>,
        ratio_of: impl Into<String>,
        ratio: f64,
        bound: Bound,
        limit: f64,
    ) {
        self.goals.push(Goal {
            section,
            name: name.into(),
            ratio_of: ratio_of.into(),
            ratio,
            bound,
            limit,
        });
    }

    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    /// The figures and goals as Markdown tables (pasteable into the guide's performance page).
    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str("| section | figure | value |\n|---|---|---:|\n");
        for f in &self.figures {
            s.push_str(&format!(
                "| {} | {} | {} {} |\n",
                f.section,
                f.name,
                format_value(f.value),
                f.unit
            ));
        }
        if !self.goals.is_empty() {
            s.push_str("\n| goal | ratio | measured | limit | met |\n|---|---|---:|---:|---|\n");
            for g in &self.goals {
                s.push_str(&format!(
                    "| {}: {} | {} | {:.2} | {} | {} |\n",
                    g.section,
                    g.name,
                    g.ratio_of,
                    g.ratio,
                    g.limit_text(),
                    if g.met() { "yes" } else { "**no**" }
                ));
            }
        }
        for n in &self.notes {
            s.push_str(&format!("\n- {n}"));
        }
        if !self.notes.is_empty() {
            s.push('\n');
        }
        s
    }

    pub fn to_json(&self, machine: Value) -> Value {
        json!({
            "machine": machine,
            "figures": self.figures.iter().map(|f| json!({
                "section": f.section, "name": f.name, "value": f.value, "unit": f.unit,
            })).collect::<Vec<_>>(),
            "goals": self.goals.iter().map(|g| json!({
                "section": g.section, "name": g.name, "ratio_of": g.ratio_of,
                "ratio": g.ratio,
                "bound": match g.bound { Bound::AtMost => "at_most", Bound::AtLeast => "at_least" },
                "limit": g.limit, "met": g.met(),
            })).collect::<Vec<_>>(),
            "notes": self.notes,
        })
    }
}

/// Three significant figures, no exponent.
pub fn format_value(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || v == v.trunc() && a < 1e15 {
        format!("{:.0}", v)
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The `p` quantile (0..=1) of sorted samples, nearest rank.
pub fn quantile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Sorted copies of durations in milliseconds.
pub fn sorted_ms(d: &[std::time::Duration]) -> Vec<f64> {
    let mut v: Vec<f64> = d.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    v.sort_by(f64::total_cmp);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_formatting() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 51.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert!(quantile(&[], 0.5).is_nan());
        assert_eq!(format_value(4.3219), "4.32");
        assert_eq!(format_value(27901.4), "27901");
        assert_eq!(format_value(0.1234), "0.123");
        assert_eq!(format_value(12.0), "12");
    }

    #[test]
    fn goals_judge_their_bound() {
        let mut r = Results::default();
        r.goal("a", "x", "a / b", 1.4, Bound::AtMost, 1.5);
        r.goal("a", "y", "a / b", 0.4, Bound::AtLeast, 0.5);
        assert!(r.goals[0].met());
        assert!(!r.goals[1].met());
        let t = r.render();
        assert!(
            t.contains("| a: y | a / b | 0.40 | ≥ 0.5 | **no** |"),
            "{t}"
        );
    }
}
