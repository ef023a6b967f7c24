//! The plan catalog and its migration rules: file format, validation, resolution.
//!
//! Pure: no I/O. A catalog is a TOML file of `[[plan]]` and `[[rule]]` tables (see
//! `packaging/catalog.example.toml`). A rule matches a source and a target — a plan
//! (`plan:ID`), a group (`group:NAME`) or `any` — and, optionally, conditions over the
//! tenant's usage in the current billing period; it decides `refuse` (with a code and a
//! message) or `allow` with a timing.
//!
//! Resolution is deterministic: of the rules whose selectors and conditions all
//! match, the most specific wins. Specificity is, in this order, the sum of the
//! selector ranks (plan 2, group 1, any 0), then whether the rule has conditions.
//! Validation proves the rest on every ordered pair of distinct plans, exactly (not
//! by sampling at random): usage is only compared with constants, so the outcome can
//! change only at the constants the rules name; checking just below, at and just
//! above each of them covers every possible usage. It reports
//!
//! * an error when two equally specific rules can both match the same request,
//! * an error when there is no catch-all (`from = "any"`, `to = "any"`, no `when`),
//! * a warning for each rule that can never decide (unreachable).

use crate::billing::period;
use crate::model::{Decision, SuppliesState, TelemetryState, Timing, Usage, Verdict};
use crate::model::{Plan, ServiceKind};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use platen_protocol::Id;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Largest catalog file accepted, in bytes.
pub const MAX_CATALOG_BYTES: usize = 1024 * 1024;
/// Longest `after DURATION` timing.
pub const MAX_AFTER: Duration = Duration::from_secs(3650 * 86400);

// ---------------------------------------------------------------------------------
// Rules

/// Which plans a rule side matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    Plan(Id),
    Group(String),
    Any,
}

impl Selector {
    fn rank(&self) -> u8 {
        match self {
            Selector::Plan(_) => 2,
            Selector::Group(_) => 1,
            Selector::Any => 0,
        }
    }

    pub fn matches(&self, plan: &Plan) -> bool {
        match self {
            Selector::Plan(id) => &plan.id == id,
            Selector::Group(g) => plan.groups.iter().any(|x| x == g),
            Selector::Any => true,
        }
    }
}

impl FromStr for Selector {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "any" {
            return Ok(Selector::Any);
        }
        if let Some(p) = s.strip_prefix("plan:") {
            return p
                .parse::<Id>()
                .map(Selector::Plan)
                .map_err(|e| format!("{s:?}: {e}"));
        }
        if let Some(g) = s.strip_prefix("group:") {
            if !g.is_empty() {
                return Ok(Selector::Group(g.to_string()));
            }
        }
        Err(format!(
            "{s:?} is not a selector: write \"plan:ID\", \"group:NAME\" or \"any\""
        ))
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Plan(p) => write!(f, "plan:{p}"),
            Selector::Group(g) => write!(f, "group:{g}"),
            Selector::Any => f.write_str("any"),
        }
    }
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl Cmp {
    fn parse(s: &str) -> Option<Cmp> {
        Some(match s {
            "<" => Cmp::Lt,
            "<=" => Cmp::Le,
            ">" => Cmp::Gt,
            ">=" => Cmp::Ge,
            "=" | "==" => Cmp::Eq,
            "!=" => Cmp::Ne,
            _ => return None,
        })
    }

    /// `a op b`, where `b` = None is an unlimited page cap (larger than any count).
    fn holds(self, a: u64, b: Option<u64>) -> bool {
        match b {
            Some(b) => match self {
                Cmp::Lt => a < b,
                Cmp::Le => a <= b,
                Cmp::Gt => a > b,
                Cmp::Ge => a >= b,
                Cmp::Eq => a == b,
                Cmp::Ne => a != b,
            },
            None => matches!(self, Cmp::Lt | Cmp::Le | Cmp::Ne),
        }
    }
}

/// Whose page cap a usage condition compares with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapOf {
    Source,
    Target,
}

/// The right-hand side of a `used` condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pages {
    Count(u64),
    /// `percent`% of a plan's page cap (a plan without a cap has no limit).
    CapPercent {
        percent: u32,
        of: CapOf,
    },
}

impl Pages {
    fn resolve(self, source: &Plan, target: &Plan) -> Option<u64> {
        match self {
            Pages::Count(n) => Some(n),
            Pages::CapPercent { percent, of } => {
                let plan = match of {
                    CapOf::Source => source,
                    CapOf::Target => target,
                };
                page_cap(plan).map(|cap| {
                    // Rounded up: "90% of 1000" is 900, "90% of 1001" is 901.
                    let v = u128::from(cap) * u128::from(percent);
                    u64::try_from(v.div_ceil(100)).unwrap_or(u64::MAX)
                })
            }
        }
    }
}

macro_rules! named {
    ($t:ty { $($v:ident = $s:literal),* }) => {
        impl FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok(<$t>::$v),)*
                    _ => Err(format!("{s:?}: expected one of {}", [$($s),*].join(", "))),
                }
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $(<$t>::$v => $s,)* })
            }
        }
    };
}
named!(TelemetryState { None = "none", Partial = "partial", Complete = "complete" });
named!(SuppliesState { Ok = "ok", Low = "low", Empty = "empty", Unknown = "unknown" });

/// One usage condition of a rule, e.g. `used > target.page_cap`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Pages printed in the current period; false when the period has no telemetry.
    Used(Cmp, Pages),
    /// Whole days left in the current period after today (0 on its last day).
    DaysLeft(Cmp, u32),
    Telemetry {
        equal: bool,
        state: TelemetryState,
    },
    Supplies {
        equal: bool,
        state: SuppliesState,
    },
}

impl FromStr for Condition {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let bad = |why: &str| format!("condition {text:?}: {why}");
        let (lhs, op, rhs) = match words.as_slice() {
            [l, o, r @ ..] if !r.is_empty() => (*l, *o, r),
            _ => {
                return Err(bad(
                    "write `SUBJECT OP VALUE`, e.g. `used > target.page_cap`",
                ))
            }
        };
        let cmp = Cmp::parse(op).ok_or_else(|| bad("the operator is one of < <= > >= = !="))?;
        let equality = || match cmp {
            Cmp::Eq => Ok(true),
            Cmp::Ne => Ok(false),
            _ => Err(bad("only = and != compare states")),
        };
        match (lhs, rhs) {
            ("used", [v]) => Ok(Condition::Used(cmp, pages(v, None).map_err(|e| bad(&e))?)),
            ("used", [pct, v]) => Ok(Condition::Used(
                cmp,
                pages(v, Some(pct)).map_err(|e| bad(&e))?,
            )),
            ("days_left", [v]) => Ok(Condition::DaysLeft(
                cmp,
                v.parse()
                    .map_err(|_| bad("days_left compares with a whole number"))?,
            )),
            ("telemetry", [v]) => Ok(Condition::Telemetry {
                equal: equality()?,
                state: v.parse().map_err(|e: String| bad(&e))?,
            }),
            ("supplies", [v]) => Ok(Condition::Supplies {
                equal: equality()?,
                state: v.parse().map_err(|e: String| bad(&e))?,
            }),
            ("used" | "days_left" | "telemetry" | "supplies", _) => Err(bad("too many words")),
            _ => Err(bad(
                "the subject is one of used, days_left, telemetry, supplies",
            )),
        }
    }
}

fn pages(v: &str, percent: Option<&str>) -> Result<Pages, String> {
    let of = match v {
        "target.page_cap" => Some(CapOf::Target),
        "source.page_cap" => Some(CapOf::Source),
        _ => None,
    };
    match (of, percent) {
        (None, None) => v
            .parse()
            .map(Pages::Count)
            .map_err(|_| format!("{v:?} is not a page count, target.page_cap or source.page_cap")),
        (Some(of), None) => Ok(Pages::CapPercent { percent: 100, of }),
        (Some(of), Some(p)) => p
            .strip_suffix('%')
            .and_then(|n| n.parse().ok())
            .filter(|n: &u32| *n <= 10_000)
            .map(|percent| Pages::CapPercent { percent, of })
            .ok_or_else(|| format!("{p:?} is not a percentage like 90%")),
        (None, Some(_)) => Err("a percentage applies to target.page_cap or source.page_cap".into()),
    }
}

/// Which way a migration goes, by the plans' monthly fees (then their page caps when
/// the fees are equal): `upgrade` to a dearer (or larger) plan, `downgrade` to a
/// cheaper (or smaller) one, `lateral` otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Upgrade,
    Downgrade,
    Lateral,
}

impl Direction {
    pub fn of(source: &Plan, target: &Plan) -> Direction {
        let key = |p: &Plan| (p.service.monthly_fee(), page_cap(p).unwrap_or(0));
        match key(target).cmp(&key(source)) {
            std::cmp::Ordering::Greater => Direction::Upgrade,
            std::cmp::Ordering::Less => Direction::Downgrade,
            std::cmp::Ordering::Equal => Direction::Lateral,
        }
    }
}

impl FromStr for Direction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "upgrade" => Ok(Direction::Upgrade),
            "downgrade" => Ok(Direction::Downgrade),
            "lateral" => Ok(Direction::Lateral),
            _ => Err(format!(
                "direction {s:?}: write upgrade, downgrade or lateral"
            )),
        }
    }
}

/// One migration rule, as loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub id: String,
    /// Line of its `[[rule]]` table in the catalog file.
    pub line: usize,
    pub from: Selector,
    pub to: Selector,
    /// Only migrations that go this way ([`Direction::of`]); counts like a group
    /// selector in the rule's specificity.
    pub direction: Option<Direction>,
    pub when: Vec<Condition>,
    /// The conditions as written (shown in decisions and listings).
    pub when_text: Vec<String>,
    pub decision: Decision,
}

impl Rule {
    /// (selector ranks, has conditions): larger is more specific.
    pub fn specificity(&self) -> (u8, bool) {
        let direction = u8::from(self.direction.is_some());
        (
            self.from.rank() + self.to.rank() + direction,
            !self.when.is_empty(),
        )
    }

    fn is_catch_all(&self) -> bool {
        self.from == Selector::Any
            && self.to == Selector::Any
            && self.direction.is_none()
            && self.when.is_empty()
    }

    fn selects(&self, source: &Plan, target: &Plan) -> bool {
        self.from.matches(source)
            && self.to.matches(target)
            && self
                .direction
                .is_none_or(|d| d == Direction::of(source, target))
    }

    fn holds(&self, source: &Plan, target: &Plan, u: &Usage) -> bool {
        self.when.iter().all(|c| match c {
            Condition::Used(cmp, pages) => match u.used {
                Some(used) if u.telemetry != TelemetryState::None => {
                    cmp.holds(used, pages.resolve(source, target))
                }
                _ => false,
            },
            Condition::DaysLeft(cmp, n) => cmp.holds(u64::from(u.days_left), Some(u64::from(*n))),
            Condition::Telemetry { equal, state } => (u.telemetry == *state) == *equal,
            Condition::Supplies { equal, state } => (u.supplies == *state) == *equal,
        })
    }
}

// ---------------------------------------------------------------------------------
// The catalog

/// A loaded, validated catalog.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// `[contracts]`: what the provider allows across contracts.
    pub contracts: ContractPolicy,
    pub plans: BTreeMap<Id, Plan>,
    /// In file order.
    pub rules: Vec<Rule>,
    /// Things worth knowing that do not stop the catalog from loading.
    pub warnings: Vec<Problem>,
}

/// The catalog's `[contracts]` table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractPolicy {
    /// Allow one printer in several contracts of its tenant. Off by default: two
    /// contracts would push their settings to the same device in turn, and both would
    /// be billed for it.
    #[serde(default)]
    pub allow_shared_printers: bool,
}

/// One problem in a catalog file, with its line (0 when it concerns the whole file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "line {}: {}", self.line, self.message)
        } else {
            f.write_str(&self.message)
        }
    }
}

/// Why a catalog did not load: every error found, and the warnings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogErrors {
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

impl fmt::Display for CatalogErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.errors.iter().map(|p| p.to_string()).collect();
        f.write_str(&lines.join("; "))
    }
}

impl std::error::Error for CatalogErrors {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    #[serde(default)]
    contracts: ContractPolicy,
    #[serde(default, rename = "plan")]
    plans: Vec<toml::Spanned<Plan>>,
    #[serde(default, rename = "rule")]
    rules: Vec<toml::Spanned<RuleFormat>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFormat {
    id: String,
    from: String,
    to: String,
    direction: Option<String>,
    #[serde(default)]
    when: Vec<String>,
    refuse: Option<RefuseFormat>,
    allow: Option<String>,
    /// Free text for the reader of the file.
    #[serde(default)]
    #[allow(dead_code)]
    note: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefuseFormat {
    code: String,
    message: String,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map(|s| s.bytes().filter(|b| *b == b'\n').count() + 1)
        .unwrap_or(0)
}

fn is_code(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl Catalog {
    /// Parse and validate a catalog file's text.
    pub fn parse(text: &str) -> Result<Catalog, CatalogErrors> {
        let fail = |line, message: String| CatalogErrors {
            errors: vec![Problem { line, message }],
            warnings: vec![],
        };
        if text.len() > MAX_CATALOG_BYTES {
            return Err(fail(
                0,
                format!("the file is larger than {MAX_CATALOG_BYTES} bytes"),
            ));
        }
        let file: FileFormat = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(0);
            fail(line, e.message().to_string())
        })?;
        let mut errors = Vec::new();
        let mut plans = BTreeMap::new();
        for sp in file.plans {
            let line = line_of(text, sp.span().start);
            let plan = sp.into_inner();
            if let Err(e) = plan.validate() {
                errors.push(Problem {
                    line,
                    message: format!("plan {}: {e}", plan.id),
                });
            }
            if plans.contains_key(&plan.id) {
                errors.push(Problem {
                    line,
                    message: format!("plan {} is defined twice", plan.id),
                });
            }
            plans.insert(plan.id.clone(), plan);
        }
        let groups: BTreeSet<&String> = plans.values().flat_map(|p| &p.groups).collect();
        let mut rules: Vec<Rule> = Vec::new();
        let mut ids = BTreeSet::new();
        for sp in file.rules {
            let line = line_of(text, sp.span().start);
            let r = sp.into_inner();
            let errors_before = errors.len();
            let mut err = |message: String| {
                errors.push(Problem {
                    line,
                    message: format!("rule {:?}: {message}", r.id),
                })
            };
            if !is_code(&r.id) {
                err("the id is 1-64 characters from a-z, 0-9, '_'".into());
            }
            if !ids.insert(r.id.clone()) {
                err("the id is used twice".into());
            }
            let mut side = |s: &str, what: &str| -> Option<Selector> {
                match s.parse::<Selector>() {
                    Ok(Selector::Plan(p)) if !plans.contains_key(&p) => {
                        err(format!("{what}: no plan {p} in the catalog"));
                        None
                    }
                    Ok(Selector::Group(g)) if !groups.contains(&g) => {
                        err(format!("{what}: no plan is in group {g:?}"));
                        None
                    }
                    Ok(s) => Some(s),
                    Err(e) => {
                        err(format!("{what}: {e}"));
                        None
                    }
                }
            };
            let from = side(&r.from, "from");
            let to = side(&r.to, "to");
            let direction = match r.direction.as_deref().map(str::parse::<Direction>) {
                None => None,
                Some(Ok(d)) => Some(d),
                Some(Err(e)) => {
                    err(e);
                    None
                }
            };
            let mut when = Vec::new();
            for c in &r.when {
                match c.parse::<Condition>() {
                    Ok(c) => when.push(c),
                    Err(e) => err(e),
                }
            }
            let decision = match (r.refuse, r.allow) {
                (Some(f), None) => {
                    if !is_code(&f.code) {
                        err(format!(
                            "refuse.code {:?}: 1-64 characters from a-z, 0-9, '_'",
                            f.code
                        ));
                    }
                    if f.message.trim().is_empty() {
                        err("refuse.message must not be empty".into());
                    }
                    Some(Decision::Refuse {
                        code: f.code,
                        message: f.message,
                    })
                }
                (None, Some(a)) => match a.parse() {
                    Ok(Timing::After(d)) if d > MAX_AFTER => {
                        err(format!("allow: {a:?} is longer than ten years"));
                        None
                    }
                    Ok(timing) => Some(Decision::Allow { timing }),
                    Err(e) => {
                        err(format!("allow: {e}"));
                        None
                    }
                },
                _ => {
                    err(
                        "give exactly one of `refuse = {{ code, message }}` or `allow = TIMING`"
                            .into(),
                    );
                    None
                }
            };
            // A rule with any error stays out of the pair checks (no follow-on noise).
            if let (Some(from), Some(to), Some(decision), true) =
                (from, to, decision, errors.len() == errors_before)
            {
                rules.push(Rule {
                    id: r.id,
                    line,
                    from,
                    to,
                    direction,
                    when,
                    when_text: r.when,
                    decision,
                });
            }
        }
        let mut catalog = Catalog {
            contracts: file.contracts,
            plans,
            rules,
            warnings: vec![],
        };
        let (errs, warnings) = catalog.check();
        errors.extend(errs);
        errors.sort_by_key(|p| p.line);
        if errors.is_empty() {
            catalog.warnings = warnings;
            Ok(catalog)
        } else {
            Err(CatalogErrors { errors, warnings })
        }
    }

    /// Resolve a migration: the winning rule's verdict. `None` only when no rule
    /// matches, which a validated catalog (it has a catch-all) rules out.
    pub fn decide(&self, source: &Plan, target: &Plan, usage: &Usage) -> Option<Verdict> {
        let best = self.candidates(source, target, usage).into_iter().next()?;
        Some(Verdict {
            rule: best.id.clone(),
            rule_line: best.line,
            decision: best.decision.clone(),
        })
    }

    /// Matching rules, most specific first (file order among equals).
    fn candidates<'a>(&'a self, source: &Plan, target: &Plan, usage: &Usage) -> Vec<&'a Rule> {
        let mut v: Vec<&Rule> = self
            .rules
            .iter()
            .filter(|r| r.selects(source, target) && r.holds(source, target, usage))
            .collect();
        v.sort_by_key(|r| std::cmp::Reverse(r.specificity()));
        v
    }

    /// Ties, the catch-all and reachability, proven over every plan pair.
    fn check(&self) -> (Vec<Problem>, Vec<Problem>) {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        if !self.rules.iter().any(Rule::is_catch_all) {
            errors.push(Problem {
                line: 0,
                message: "no catch-all rule: add one with from = \"any\", to = \"any\" and no `when`, so every migration has a decision".into(),
            });
        }
        let mut reached: BTreeSet<usize> = BTreeSet::new();
        let mut selected: BTreeSet<usize> = BTreeSet::new();
        let mut ties: BTreeMap<(usize, usize), String> = BTreeMap::new();
        for source in self.plans.values() {
            for target in self.plans.values() {
                if source.id == target.id {
                    continue;
                }
                let on_pair: Vec<usize> = (0..self.rules.len())
                    .filter(|&i| self.rules[i].selects(source, target))
                    .collect();
                selected.extend(&on_pair);
                for usage in self.sample_points(source, target, &on_pair) {
                    let mut m: Vec<usize> = on_pair
                        .iter()
                        .copied()
                        .filter(|&i| self.rules[i].holds(source, target, &usage))
                        .collect();
                    m.sort_by_key(|&i| std::cmp::Reverse(self.rules[i].specificity()));
                    let Some(&first) = m.first() else { continue };
                    let top = self.rules[first].specificity();
                    // Tied rules all count as reached: the tie is the error to fix.
                    reached.extend(
                        m.iter()
                            .take_while(|&&i| self.rules[i].specificity() == top),
                    );
                    for &other in m[1..]
                        .iter()
                        .take_while(|&&i| self.rules[i].specificity() == top)
                    {
                        ties.entry((first, other)).or_insert_with(|| {
                            format!(
                                "{} → {} with {}",
                                source.id,
                                target.id,
                                describe_usage(&usage)
                            )
                        });
                    }
                }
            }
        }
        for ((a, b), example) in ties {
            let (ra, rb) = (&self.rules[a], &self.rules[b]);
            errors.push(Problem {
                line: rb.line,
                message: format!(
                    "rules {:?} (line {}) and {:?} are equally specific and both match {example}: make one more specific or add a condition that separates them",
                    ra.id, ra.line, rb.id
                ),
            });
        }
        for (i, r) in self.rules.iter().enumerate() {
            if reached.contains(&i) {
                continue;
            }
            let why = if !selected.contains(&i) {
                "it matches no pair of distinct plans in the catalog"
            } else {
                "more specific rules decide every case it matches"
            };
            warnings.push(Problem {
                line: r.line,
                message: format!("rule {:?} is unreachable: {why}", r.id),
            });
        }
        (errors, warnings)
    }

    /// Every usage that can make a difference for this pair: each constant a rule
    /// compares with, one below and one above; each state.
    fn sample_points(&self, source: &Plan, target: &Plan, rules: &[usize]) -> Vec<Usage> {
        let mut used: BTreeSet<u64> = BTreeSet::from([0]);
        let mut days: BTreeSet<u32> = BTreeSet::from([0, 30]);
        for &i in rules {
            for c in &self.rules[i].when {
                match c {
                    Condition::Used(_, p) => {
                        if let Some(v) = p.resolve(source, target) {
                            used.extend([v.saturating_sub(1), v, v.saturating_add(1)]);
                        }
                    }
                    Condition::DaysLeft(_, n) => {
                        days.extend([n.saturating_sub(1), *n, n.saturating_add(1)]);
                    }
                    Condition::Telemetry { .. } | Condition::Supplies { .. } => {}
                }
            }
        }
        let mut out = Vec::new();
        for telemetry in [
            TelemetryState::None,
            TelemetryState::Partial,
            TelemetryState::Complete,
        ] {
            let counts: Vec<Option<u64>> = if telemetry == TelemetryState::None {
                vec![None]
            } else {
                used.iter().copied().map(Some).collect()
            };
            for &u in &counts {
                for &d in &days {
                    for supplies in [
                        SuppliesState::Ok,
                        SuppliesState::Low,
                        SuppliesState::Empty,
                        SuppliesState::Unknown,
                    ] {
                        out.push(Usage {
                            used: u,
                            telemetry,
                            days_left: d,
                            supplies,
                        });
                    }
                }
            }
        }
        out
    }
}

fn describe_usage(u: &Usage) -> String {
    format!(
        "used {}, telemetry {}, days_left {}, supplies {}",
        u.used.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
        u.telemetry,
        u.days_left,
        u.supplies
    )
}

/// A plan's monthly page cap, if it has one.
pub fn page_cap(plan: &Plan) -> Option<u64> {
    match plan.service {
        ServiceKind::FlatRatePrint { page_cap, .. } => Some(page_cap),
        _ => None,
    }
}

/// Whole days left in the period after the local day of `now`.
pub fn days_left(tz: Tz, now: DateTime<Utc>) -> u32 {
    let p = period::containing(tz, now);
    let today = now.with_timezone(&tz).date_naive();
    let last = (p.end - chrono::Duration::seconds(1))
        .with_timezone(&tz)
        .date_naive();
    u32::try_from((last - today).num_days().max(0)).unwrap_or(0)
}

/// When a migration allowed with `timing` at `now` takes effect. `term` is the
/// contract's start and term length in periods (none: month to month).
pub fn effective_time(
    timing: Timing,
    now: DateTime<Utc>,
    tz: Tz,
    term: (DateTime<Utc>, Option<u32>),
) -> DateTime<Utc> {
    match timing {
        Timing::Immediate => now,
        Timing::NextPeriod => period::next(tz, &period::containing(tz, now)).start,
        Timing::After(d) => chrono::Duration::from_std(d.min(MAX_AFTER))
            .ok()
            .and_then(|d| now.checked_add_signed(d))
            .unwrap_or(now),
        Timing::EndOfTerm => {
            let (start, months) = term;
            let months = months.unwrap_or(1).max(1);
            // The term starts with the period the contract started in and renews
            // for the same length: the first term boundary after now.
            let mut p = period::containing(tz, start);
            loop {
                for _ in 0..months {
                    p = period::next(tz, &p);
                }
                if p.start > now || p.year > 9000 {
                    return p.start;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const PLANS: &str = r#"
[[plan]]
id = "flat-1000"
name = "Flat 1000"
groups = ["flat", "mono"]
service = { kind = "flat_rate_print", monthly_fee = 4900, page_cap = 1000 }

[[plan]]
id = "flat-500"
name = "Flat 500"
groups = ["flat", "mono"]
service = { kind = "flat_rate_print", monthly_fee = 2900, page_cap = 500 }

[[plan]]
id = "color-2000"
name = "Colour 2000"
groups = ["flat", "color"]
service = { kind = "flat_rate_print", monthly_fee = 9900, page_cap = 2000 }

[[plan]]
id = "toner"
name = "Toner delivery"
groups = ["delivery"]
service = { kind = "consumables_delivery", monthly_fee = 1500, item = "TK-1" }
"#;

    const CATCH_ALL: &str = r#"
[[rule]]
id = "default"
from = "any"
to = "any"
allow = "immediate"
"#;

    fn catalog(rules: &str) -> Catalog {
        Catalog::parse(&format!("{PLANS}{CATCH_ALL}{rules}")).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn errors(text: &str) -> Vec<Problem> {
        Catalog::parse(text).unwrap_err().errors
    }

    fn usage(used: Option<u64>) -> Usage {
        Usage {
            used,
            telemetry: if used.is_some() {
                TelemetryState::Complete
            } else {
                TelemetryState::None
            },
            days_left: 10,
            supplies: SuppliesState::Ok,
        }
    }

    fn decide(c: &Catalog, from: &str, to: &str, u: &Usage) -> String {
        let p = |id: &str| c.plans[&id.parse::<Id>().unwrap()].clone();
        let v = c.decide(&p(from), &p(to), u).expect("a catch-all exists");
        match v.decision {
            Decision::Refuse { code, .. } => format!("{}: refuse {code}", v.rule),
            Decision::Allow { timing } => format!("{}: {timing}", v.rule),
        }
    }

    const KYOCERA: &str = r#"
[[rule]]
id = "downgrade"
from = "group:flat"
to = "group:flat"
allow = "immediate"

[[rule]]
id = "downgrade_over_cap_waits"
from = "group:flat"
to = "group:flat"
when = ["used > target.page_cap"]
allow = "next_period"

[[rule]]
id = "small_over_cap_refused"
from = "plan:flat-1000"
to = "plan:flat-500"
when = ["used > target.page_cap"]
refuse = { code = "usage_over_target_cap", message = "more pages printed than the target plan allows" }

[[rule]]
id = "small_needs_usage"
from = "plan:flat-1000"
to = "plan:flat-500"
when = ["telemetry = none"]
refuse = { code = "usage_unknown", message = "no telemetry this period" }

[[rule]]
id = "small"
from = "plan:flat-1000"
to = "plan:flat-500"
allow = "immediate"

[[rule]]
id = "to_delivery"
from = "any"
to = "plan:toner"
allow = "end_of_term"

[[rule]]
id = "mono_to_color_late"
from = "group:mono"
to = "plan:color-2000"
when = ["days_left < 3"]
allow = "next_period"
"#;

    #[test]
    fn resolution_table() {
        let c = catalog(KYOCERA);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let late = Usage {
            days_left: 2,
            ..usage(Some(0))
        };
        let cases: Vec<(&str, &str, Usage, &str)> = vec![
            // plan → plan beats group → group; a condition beats none.
            (
                "flat-1000",
                "flat-500",
                usage(Some(400)),
                "small: immediate",
            ),
            (
                "flat-1000",
                "flat-500",
                usage(Some(500)),
                "small: immediate",
            ),
            (
                "flat-1000",
                "flat-500",
                usage(Some(501)),
                "small_over_cap_refused: refuse usage_over_target_cap",
            ),
            (
                "flat-1000",
                "flat-500",
                usage(None),
                "small_needs_usage: refuse usage_unknown",
            ),
            // Timing by usage (group → group): the same pair, two times.
            (
                "color-2000",
                "flat-1000",
                usage(Some(1000)),
                "downgrade: immediate",
            ),
            (
                "color-2000",
                "flat-1000",
                usage(Some(1001)),
                "downgrade_over_cap_waits: next_period",
            ),
            // A usage condition is false without telemetry: the unconditioned rule.
            (
                "color-2000",
                "flat-1000",
                usage(None),
                "downgrade: immediate",
            ),
            // Upgrade: used never above a larger cap.
            (
                "flat-500",
                "flat-1000",
                usage(Some(499)),
                "downgrade: immediate",
            ),
            // any → plan (2) beats the catch-all; group → plan with a condition (3).
            (
                "flat-500",
                "toner",
                usage(Some(10)),
                "to_delivery: end_of_term",
            ),
            (
                "flat-500",
                "color-2000",
                late.clone(),
                "mono_to_color_late: next_period",
            ),
            (
                "flat-500",
                "color-2000",
                usage(Some(0)),
                "downgrade: immediate",
            ),
            // Out of every group: the catch-all.
            ("toner", "flat-500", usage(Some(0)), "default: immediate"),
        ];
        for (from, to, u, want) in cases {
            assert_eq!(decide(&c, from, to, &u), want, "{from} → {to} {u:?}");
        }
    }

    #[test]
    fn caps_percentages_and_plans_without_a_cap() {
        let c = catalog(
            r#"
[[rule]]
id = "near_cap"
from = "group:flat"
to = "any"
when = ["used >= 90% source.page_cap"]
refuse = { code = "near_cap", message = "m" }
"#,
        );
        assert_eq!(
            decide(&c, "flat-1000", "toner", &usage(Some(899))),
            "default: immediate"
        );
        assert_eq!(
            decide(&c, "flat-1000", "toner", &usage(Some(900))),
            "near_cap: refuse near_cap"
        );
        // toner has no cap: `used >= 90% source.page_cap` never holds.
        let t = catalog(
            r#"
[[rule]]
id = "from_uncapped"
from = "plan:toner"
to = "any"
when = ["used > source.page_cap"]
refuse = { code = "x", message = "m" }
"#,
        );
        assert_eq!(t.warnings.len(), 1, "never true: {:?}", t.warnings);
        assert!(t.warnings[0].message.contains("from_uncapped"));
        assert_eq!(
            decide(&t, "toner", "flat-500", &usage(Some(u64::MAX))),
            "default: immediate"
        );
    }

    #[test]
    fn states_and_days() {
        let c = catalog(
            r#"
[[rule]]
id = "empty_supplies"
from = "any"
to = "plan:toner"
when = ["supplies = empty"]
allow = "immediate"

[[rule]]
id = "to_toner"
from = "any"
to = "plan:toner"
allow = "after 14d"

[[rule]]
id = "partial"
from = "any"
to = "plan:flat-500"
when = ["telemetry != complete"]
refuse = { code = "partial_usage", message = "m" }
"#,
        );
        let mut u = usage(Some(5));
        assert_eq!(
            decide(&c, "flat-1000", "toner", &u),
            "to_toner: after 14days"
        );
        u.supplies = SuppliesState::Empty;
        assert_eq!(
            decide(&c, "flat-1000", "toner", &u),
            "empty_supplies: immediate"
        );
        u.telemetry = TelemetryState::Partial;
        assert_eq!(
            decide(&c, "flat-1000", "flat-500", &u),
            "partial: refuse partial_usage"
        );
        u.telemetry = TelemetryState::Complete;
        assert_eq!(
            decide(&c, "flat-1000", "flat-500", &u),
            "default: immediate"
        );
    }

    #[test]
    fn validation_errors_name_their_lines() {
        let base = format!("{PLANS}{CATCH_ALL}");
        let base_lines = base.lines().count();
        let rule = |body: &str| format!("{base}\n[[rule]]\nid = \"r\"\n{body}\n");
        let cases: Vec<(String, &str)> = vec![
            (rule("from = \"plan:gold\"\nto = \"any\"\nallow = \"immediate\""), "no plan gold"),
            (rule("from = \"group:vip\"\nto = \"any\"\nallow = \"immediate\""), "no plan is in group \"vip\""),
            (rule("from = \"gold\"\nto = \"any\"\nallow = \"immediate\""), "is not a selector"),
            (rule("from = \"any\"\nto = \"any\"\nwhen = [\"used >> 5\"]\nallow = \"immediate\""), "operator"),
            (rule("from = \"any\"\nto = \"any\"\nwhen = [\"pages > 5\"]\nallow = \"immediate\""), "subject"),
            (rule("from = \"any\"\nto = \"any\"\nwhen = [\"telemetry > none\"]\nallow = \"immediate\""), "only = and !="),
            (rule("from = \"any\"\nto = \"any\"\nwhen = [\"supplies = green\"]\nallow = \"immediate\""), "expected one of ok, low"),
            (rule("from = \"any\"\nto = \"any\"\nwhen = [\"used > 90% 1000\"]\nallow = \"immediate\""), "percentage applies"),
            (rule("from = \"any\"\nto = \"any\"\nallow = \"tomorrow\""), "timing is immediate"),
            (rule("from = \"any\"\nto = \"any\"\nallow = \"after 99years\""), "longer than ten years"),
            (rule("from = \"any\"\nto = \"any\""), "exactly one of"),
            (rule("from = \"any\"\nto = \"any\"\nallow = \"immediate\"\nrefuse = { code = \"x\", message = \"m\" }"), "exactly one of"),
            (rule("from = \"any\"\nto = \"any\"\nwhen = [\"days_left < 3\"]\nrefuse = { code = \"Bad Code\", message = \"m\" }"), "refuse.code"),
        ];
        for (text, want) in cases {
            let e = errors(&text);
            assert_eq!(e.len(), 1, "{want}: {e:?}");
            assert!(e[0].message.contains(want), "{want}: {e:?}");
            assert_eq!(e[0].line, base_lines + 2, "{want}: the [[rule]] line");
        }
        // Syntax errors and unknown keys: the line of the offending text.
        let e = errors("[[plan]]\nid = \"a\"\nname = \"A\"\nservice = { kind = \"basic\", monthly_fee = 1 }\ncolour = true\n");
        assert_eq!(e[0].line, 5, "{e:?}");
        assert!(e[0].message.contains("colour"), "{e:?}");
        let e = errors("[[rule]\n");
        assert_eq!(e[0].line, 1, "{e:?}");
        // Duplicates.
        let e = errors(&format!("{base}{CATCH_ALL}"));
        assert!(e.iter().any(|p| p.message.contains("used twice")), "{e:?}");
        let dup =
            "[[plan]]\nid = \"a\"\nname = \"A\"\nservice = { kind = \"basic\", monthly_fee = 1 }\n";
        let e = errors(&format!("{dup}{dup}{CATCH_ALL}"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(
            (e[0].line, e[0].message.as_str()),
            (5, "plan a is defined twice")
        );
    }

    #[test]
    fn a_catalog_needs_a_catch_all() {
        let e = errors(&format!(
            "{PLANS}\n[[rule]]\nid = \"x\"\nfrom = \"any\"\nto = \"any\"\nwhen = [\"used < 10\"]\nallow = \"immediate\"\n"
        ));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].message.contains("no catch-all"), "{e:?}");
        assert_eq!(e[0].line, 0);
    }

    /// Direction: a rule can speak of every downgrade without listing the pairs; it
    /// counts like a group in the specificity, and the pair checks see it.
    #[test]
    fn direction_selects_upgrades_and_downgrades() {
        let p = |id: &str| {
            let c = catalog("");
            c.plans[&id.parse::<Id>().unwrap()].clone()
        };
        for (from, to, want) in [
            ("flat-1000", "flat-500", Direction::Downgrade),
            ("flat-500", "flat-1000", Direction::Upgrade),
            ("flat-500", "color-2000", Direction::Upgrade),
            ("color-2000", "toner", Direction::Downgrade),
            ("toner", "flat-500", Direction::Upgrade),
        ] {
            assert_eq!(Direction::of(&p(from), &p(to)), want, "{from} → {to}");
        }
        // Equal fees: the page cap decides; equal in both: lateral.
        let mut a = p("flat-500");
        let mut b = p("flat-500");
        b.id = "flat-500b".parse().unwrap();
        assert_eq!(Direction::of(&a, &b), Direction::Lateral);
        a.service = ServiceKind::FlatRatePrint {
            monthly_fee: 2900,
            page_cap: 400,
        };
        assert_eq!(Direction::of(&a, &b), Direction::Upgrade);

        let c = catalog(
            "
[[rule]]
id = \"downgrade_over_target_cap\"
from = \"any\"
to = \"any\"
direction = \"downgrade\"
when = [\"used > target.page_cap\"]
allow = \"next_period\"
",
        );
        let over = usage(Some(700));
        assert_eq!(
            decide(&c, "flat-1000", "flat-500", &over),
            "downgrade_over_target_cap: next_period"
        );
        assert_eq!(
            decide(&c, "flat-500", "flat-1000", &over),
            "default: immediate",
            "an upgrade"
        );
        assert_eq!(
            decide(&c, "flat-1000", "flat-500", &usage(Some(100))),
            "default: immediate"
        );
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);

        // A direction rule ties with a group rule of the same rank on a pair both match.
        let e = errors(&format!(
            "{PLANS}{CATCH_ALL}
[[rule]]
id = \"down\"
from = \"any\"
to = \"any\"
direction = \"downgrade\"
allow = \"next_period\"

[[rule]]
id = \"to_mono\"
from = \"any\"
to = \"group:mono\"
allow = \"immediate\"
"
        ));
        assert!(
            e.iter()
                .any(|p| p.message.contains("\"down\"") && p.message.contains("\"to_mono\"")),
            "{e:?}"
        );
        // A direction no pair of the selectors can take: unreachable.
        let c = catalog(
            "
[[rule]]
id = \"never\"
from = \"plan:flat-500\"
to = \"plan:color-2000\"
direction = \"downgrade\"
allow = \"next_period\"
",
        );
        assert!(
            c.warnings
                .iter()
                .any(|w| w.message.contains("\"never\" is unreachable")),
            "{:?}",
            c.warnings
        );
        let e = errors(&format!(
            "{PLANS}{CATCH_ALL}
[[rule]]
id = \"sideways\"
from = \"any\"
to = \"any\"
direction = \"sideways\"
allow = \"immediate\"
"
        ));
        assert!(
            e[0].message.contains("write upgrade, downgrade or lateral"),
            "{e:?}"
        );
    }

    #[test]
    fn ties_are_errors_only_when_both_can_match() {
        // Plan → group vs group → plan: both specificity 3, both match flat-1000 → flat-500.
        let e = errors(&format!(
            "{PLANS}{CATCH_ALL}
[[rule]]
id = \"a\"
from = \"plan:flat-1000\"
to = \"group:mono\"
allow = \"immediate\"

[[rule]]
id = \"b\"
from = \"group:flat\"
to = \"plan:flat-500\"
allow = \"next_period\"
"
        ));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].message.contains("\"a\"")
                && e[0].message.contains("\"b\"")
                && e[0].message.contains("flat-1000 → flat-500"),
            "{e:?}"
        );
        // Two conditioned rules on one pair whose conditions overlap at 501..=999.
        let e = errors(&format!(
            "{PLANS}{CATCH_ALL}
[[rule]]
id = \"over_small\"
from = \"plan:flat-1000\"
to = \"plan:flat-500\"
when = [\"used > 500\"]
allow = \"next_period\"

[[rule]]
id = \"under_big\"
from = \"plan:flat-1000\"
to = \"plan:flat-500\"
when = [\"used < 1000\"]
allow = \"immediate\"
"
        ));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].message.contains("used 501"),
            "the example is the first overlap: {e:?}"
        );
        // Disjoint conditions at the same specificity are fine.
        catalog(
            "
[[rule]]
id = \"over\"
from = \"plan:flat-1000\"
to = \"plan:flat-500\"
when = [\"used > 500\"]
allow = \"next_period\"

[[rule]]
id = \"under\"
from = \"plan:flat-1000\"
to = \"plan:flat-500\"
when = [\"used <= 500\"]
allow = \"immediate\"
",
        );
    }

    #[test]
    fn unreachable_rules_are_reported() {
        let c = catalog(
            r#"
[[rule]]
id = "never_pair"
from = "plan:toner"
to = "plan:toner"
allow = "immediate"

[[rule]]
id = "shadowed"
from = "group:mono"
to = "group:mono"
allow = "next_period"

[[rule]]
id = "mono_1000_500"
from = "plan:flat-1000"
to = "plan:flat-500"
allow = "immediate"

[[rule]]
id = "mono_500_1000"
from = "plan:flat-500"
to = "plan:flat-1000"
allow = "immediate"
"#,
        );
        let w: Vec<String> = c.warnings.iter().map(|p| p.to_string()).collect();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("never_pair") && w[0].contains("no pair of distinct plans"),
            "{w:?}"
        );
        assert!(
            w[1].contains("shadowed") && w[1].contains("more specific rules decide"),
            "{w:?}"
        );
    }

    #[test]
    fn conditions_parse() {
        let ok: Vec<(&str, Condition)> = vec![
            (
                "used > target.page_cap",
                Condition::Used(
                    Cmp::Gt,
                    Pages::CapPercent {
                        percent: 100,
                        of: CapOf::Target,
                    },
                ),
            ),
            (
                "used <= 80% source.page_cap",
                Condition::Used(
                    Cmp::Le,
                    Pages::CapPercent {
                        percent: 80,
                        of: CapOf::Source,
                    },
                ),
            ),
            ("used == 0", Condition::Used(Cmp::Eq, Pages::Count(0))),
            ("days_left < 5", Condition::DaysLeft(Cmp::Lt, 5)),
            (
                "telemetry = none",
                Condition::Telemetry {
                    equal: true,
                    state: TelemetryState::None,
                },
            ),
            (
                "supplies != ok",
                Condition::Supplies {
                    equal: false,
                    state: SuppliesState::Ok,
                },
            ),
        ];
        for (s, want) in ok {
            assert_eq!(s.parse::<Condition>().unwrap(), want, "{s}");
        }
        for bad in [
            "",
            "used",
            "used >",
            "used > -1",
            "days_left < soon",
            "used > 5 6",
            "used > 90 target.page_cap",
        ] {
            assert!(bad.parse::<Condition>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn effective_times() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let now = Utc.with_ymd_and_hms(2026, 3, 20, 12, 0, 0).unwrap();
        let start = Utc.with_ymd_and_hms(2026, 1, 15, 9, 0, 0).unwrap();
        let berlin_midnight = |y, m| {
            Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).unwrap()
                - chrono::Duration::hours(if (4..=10).contains(&m) { 2 } else { 1 })
        };
        let cases: Vec<(Timing, Option<u32>, DateTime<Utc>)> = vec![
            (Timing::Immediate, None, now),
            (Timing::NextPeriod, None, berlin_midnight(2026, 4)),
            (
                Timing::After(Duration::from_secs(86400)),
                None,
                now + chrono::Duration::days(1),
            ),
            // Month to month: the term ends with the period.
            (Timing::EndOfTerm, None, berlin_midnight(2026, 4)),
            // Twelve periods from January 2026: January 2027.
            (Timing::EndOfTerm, Some(12), berlin_midnight(2027, 1)),
            // Two: March → May (Jan–Feb, Mar–Apr).
            (Timing::EndOfTerm, Some(2), berlin_midnight(2026, 5)),
        ];
        for (timing, term, want) in cases {
            assert_eq!(
                effective_time(timing, now, tz, (start, term)),
                want,
                "{timing} {term:?}"
            );
        }
        assert_eq!(
            effective_time(
                Timing::After(Duration::from_secs(u64::MAX)),
                now,
                tz,
                (start, None)
            ),
            now + chrono::Duration::days(3650),
            "capped, no overflow"
        );
    }

    #[test]
    fn days_left_in_the_local_period() {
        let tz: Tz = "Asia/Tokyo".parse().unwrap();
        let cases = [
            // 2026-01-31 23:30 Tokyo is 14:30 UTC: the last local day.
            (Utc.with_ymd_and_hms(2026, 1, 31, 14, 30, 0).unwrap(), 0),
            // 2026-01-31 15:30 UTC is 1 February in Tokyo: 27 days left.
            (Utc.with_ymd_and_hms(2026, 1, 31, 15, 30, 0).unwrap(), 27),
            (Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(), 30),
        ];
        for (now, want) in cases {
            assert_eq!(days_left(tz, now), want, "{now}");
        }
    }

    #[test]
    fn timings_round_trip_as_text() {
        for s in [
            "immediate",
            "next_period",
            "end_of_term",
            "after 14days",
            "after 1h 30m",
        ] {
            let t: Timing = s.parse().unwrap();
            let back: Timing = t.to_string().parse().unwrap();
            assert_eq!(t, back, "{s}");
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(serde_json::from_str::<Timing>(&json).unwrap(), t);
        }
    }
}
