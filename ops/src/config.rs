//! Config files: TOML, overridden by `PLATEN_…` environment variables, every problem
//! reported at once with its location.
//!
//! An environment variable `PLATEN_A__B__C` sets the key `a.b.c` (segments separated
//! by `__`, lower-cased; a number selects an array element: `PLATEN_PRINTER__0__COMMUNITY`
//! is the first `[[printer]]`'s `community`). Only variables whose first segment is one
//! of the daemon's top-level keys are taken; other `PLATEN_` variables (such as
//! `PLATEN_LOG_FORMAT`) are left alone. A value is read as an integer, `true`/`false`
//! or a TOML array (`["a", "b"]`) when it looks like one and the setting takes one,
//! otherwise as a string — so `PLATEN_BROKER__PASSWORD=12345` is still a password.
//!
//! Loading collects, in one pass: the TOML syntax error (then it stops: nothing else
//! can be read), every unknown key, every value of the wrong type, and every failed
//! check of the daemon's own validation. Each [`Problem`] names its field and where
//! the value came from: `agent.toml:12` or `env PLATEN_BROKER__PORT`.

use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// One step of a path into the config: a key or an array index.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A path into the config, displayed `printer[0].community`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct FieldPath(pub Vec<Seg>);

impl FieldPath {
    /// Parse `a.b[0].c` (the display form). Never fails: odd input gives odd keys.
    pub fn parse(s: &str) -> FieldPath {
        let mut segs = Vec::new();
        for part in s.split('.').filter(|p| !p.is_empty()) {
            let mut rest = part;
            if let Some(open) = rest.find('[') {
                let key = &rest[..open];
                if !key.is_empty() {
                    segs.push(Seg::Key(key.to_string()));
                }
                rest = &rest[open..];
                while let Some(stripped) = rest.strip_prefix('[') {
                    let Some(close) = stripped.find(']') else {
                        break;
                    };
                    match stripped[..close].parse() {
                        Ok(i) => segs.push(Seg::Index(i)),
                        Err(_) => segs.push(Seg::Key(stripped[..close].to_string())),
                    }
                    rest = &stripped[close + 1..];
                }
            } else {
                segs.push(Seg::Key(rest.to_string()));
            }
        }
        FieldPath(segs)
    }

    fn starts_with(&self, prefix: &FieldPath) -> bool {
        self.0.starts_with(&prefix.0)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(top level)");
        }
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A line of the file (1-based).
    Line(usize),
    /// An environment variable.
    Env(String),
    /// The file as a whole (e.g. a missing key).
    File,
}

/// One thing wrong with a config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub field: FieldPath,
    pub location: Location,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{}", render(path, problems))]
    Problems {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The problems (one for a read or syntax error).
    pub fn count(&self) -> usize {
        match self {
            ConfigError::Problems { problems, .. } => problems.len(),
            _ => 1,
        }
    }
}

fn render(path: &Path, problems: &[Problem]) -> String {
    let lines: Vec<String> = problems
        .iter()
        .map(|p| {
            let at = match &p.location {
                Location::Line(n) => format!("{}:{n}", path.display()),
                Location::Env(var) => format!("{} (env {var})", path.display()),
                Location::File => path.display().to_string(),
            };
            format!("{at}: {}: {}", p.field, p.message)
        })
        .collect();
    lines.join("\n")
}

/// What the daemon's own checks return: the field and what is wrong with it.
pub type Check = (FieldPath, String);

/// A loaded file: where each value came from, for locating problems.
pub struct Source {
    path: PathBuf,
    text: String,
    doc: Option<toml_edit::ImDocument<String>>,
    /// Paths set by environment variables, with the variable's name.
    env: Vec<(FieldPath, String)>,
}

impl Source {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The environment variables that overrode the file: `(variable, field)`.
    pub fn overrides(&self) -> impl Iterator<Item = (&str, &FieldPath)> {
        self.env.iter().map(|(p, v)| (v.as_str(), p))
    }

    /// Where `field`'s value came from: the overriding variable, else the line of its
    /// key (or of the nearest enclosing key) in the file.
    pub fn locate(&self, field: &FieldPath) -> Location {
        if let Some((_, var)) = self
            .env
            .iter()
            .filter(|(p, _)| field.starts_with(p))
            .max_by_key(|(p, _)| p.0.len())
        {
            return Location::Env(var.clone());
        }
        let Some(doc) = &self.doc else {
            return Location::File;
        };
        match offset_of(Node::Table(doc.as_table()), &field.0, None) {
            Some(offset) => Location::Line(line_of(&self.text, offset)),
            None => Location::File,
        }
    }

    /// Turn the daemon's checks into an error (or `Ok` when there are none).
    pub fn problems(&self, checks: Vec<Check>) -> Result<(), ConfigError> {
        if checks.is_empty() {
            return Ok(());
        }
        Err(ConfigError::Problems {
            path: self.path.clone(),
            problems: checks
                .into_iter()
                .map(|(field, message)| Problem {
                    location: self.locate(&field),
                    field,
                    message,
                })
                .collect(),
        })
    }
}

/// A node of the parsed document (elements of `[[x]]` are tables, not items).
#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a toml_edit::Item),
    Table(&'a toml_edit::Table),
    Value(&'a toml_edit::Value),
}

/// The byte offset of the deepest key (or array element) of `segs` found in `node`.
fn offset_of(node: Node<'_>, segs: &[Seg], best: Option<usize>) -> Option<usize> {
    let Some((seg, rest)) = segs.split_first() else {
        return best;
    };
    match seg {
        Seg::Key(k) => {
            let table: Option<&dyn toml_edit::TableLike> = match node {
                Node::Item(i) => i.as_table_like(),
                Node::Table(t) => Some(t),
                Node::Value(v) => v.as_inline_table().map(|t| t as &dyn toml_edit::TableLike),
            };
            match table.and_then(|t| t.get_key_value(k)) {
                Some((key, item)) => {
                    offset_of(Node::Item(item), rest, key.span().map(|s| s.start).or(best))
                }
                None => best,
            }
        }
        Seg::Index(i) => match node {
            Node::Item(toml_edit::Item::ArrayOfTables(a)) => match a.get(*i) {
                Some(t) => offset_of(Node::Table(t), rest, t.span().map(|s| s.start).or(best)),
                None => best,
            },
            Node::Item(toml_edit::Item::Value(v)) | Node::Value(v) => match element(v, *i) {
                Some(e) => offset_of(Node::Value(e), rest, e.span().map(|s| s.start).or(best)),
                None => best,
            },
            _ => best,
        },
    }
}

fn element(v: &toml_edit::Value, i: usize) -> Option<&toml_edit::Value> {
    v.as_array().and_then(|a| a.get(i))
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(offset)
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// A daemon's configuration file: its keys, its checks; loading, and the
/// `config show` command, come with it.
pub trait ConfigFile: DeserializeOwned + serde::Serialize + Sized {
    /// Top-level keys that `PLATEN_…` variables may override.
    const ENV_ROOTS: &'static [&'static str];

    /// Every check beyond the types, each with its field.
    fn checks(&self) -> Vec<Check>;

    /// Read `path` with this process's `PLATEN_…` overrides.
    fn load_file(path: &Path) -> Result<(Self, Source), ConfigError> {
        load(path, &process_env(), Self::ENV_ROOTS, Self::checks)
    }

    /// Parse text with the given overrides; `path` is only used in messages.
    fn parse_text(
        text: &str,
        path: &Path,
        env: &[(String, String)],
    ) -> Result<(Self, Source), ConfigError> {
        parse(text, path, env, Self::ENV_ROOTS, Self::checks)
    }

    /// `config show`: print the effective configuration (exit 0), or the problems
    /// (exit 2).
    fn show_command(path: &Path) -> std::process::ExitCode {
        let shown = Self::load_file(path)
            .map_err(|e| e.to_string())
            .and_then(|(c, source)| show(&c, &source));
        match shown {
            Ok(text) => {
                print!("{text}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                std::process::ExitCode::from(2)
            }
        }
    }
}

/// The `PLATEN_…` variables of this process.
pub fn process_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with(PREFIX))
        .collect()
}

const PREFIX: &str = "PLATEN_";
/// Most problems collected before giving up (each type error costs one more pass).
const MAX_PROBLEMS: usize = 64;

/// Read `path`, apply `env` overrides for the `roots` keys, deserialize, run `check`.
pub fn load<T: DeserializeOwned>(
    path: &Path,
    env: &[(String, String)],
    roots: &[&str],
    check: impl FnOnce(&T) -> Vec<Check>,
) -> Result<(T, Source), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    parse(&text, path, env, roots, check)
}

/// [`load`] from text; `path` is only used in messages.
pub fn parse<T: DeserializeOwned>(
    text: &str,
    path: &Path,
    env: &[(String, String)],
    roots: &[&str],
    check: impl FnOnce(&T) -> Vec<Check>,
) -> Result<(T, Source), ConfigError> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
        path: path.into(),
        message: e.to_string().trim_end().replace('\n', "\n  "),
    })?;
    let mut source = Source {
        path: path.into(),
        text: text.to_string(),
        doc: toml_edit::ImDocument::parse(text.to_string()).ok(),
        env: Vec::new(),
    };
    let mut problems = Vec::new();
    // Overrides, in a stable order.
    let mut vars: Vec<&(String, String)> = env.iter().collect();
    vars.sort();
    let mut literal = Vec::new(); // env paths typed as non-strings (may retry as text)
    for (var, raw) in vars {
        let Some(field) = env_path(var, roots) else {
            continue;
        };
        let value = env_value(raw);
        if !value.is_str() {
            literal.push((field.clone(), raw.clone()));
        }
        match set(&mut table, &field, value) {
            Ok(()) => source.env.push((field, var.clone())),
            Err(message) => problems.push(Problem {
                field,
                location: Location::Env(var.clone()),
                message,
            }),
        }
    }
    // Deserialize; on a type error note it, drop the value and go again, and for a
    // missing key put in a stand-in, so that one run names every problem.
    let mut stand_ins: Vec<(FieldPath, usize)> = Vec::new();
    let value = loop {
        let mut unknown = Vec::new();
        let mut note =
            |p: serde_ignored::Path<'_>| unknown.push(FieldPath::parse(&ignored_path(&p)));
        let de = serde_ignored::Deserializer::new(toml::Value::Table(table.clone()), &mut note);
        let result: Result<T, _> = serde_path_to_error::deserialize(de);
        match result {
            Ok(v) => {
                for field in unknown {
                    problems.push(Problem {
                        location: source.locate(&field),
                        message: "unknown key".into(),
                        field,
                    });
                }
                break Some(v);
            }
            Err(e) => {
                let mut field = FieldPath::parse(&e.path().to_string());
                // toml appends "in `key`" on a new line; the field is shown anyway.
                let message = e.inner().to_string();
                let message = message.lines().next().unwrap_or_default().to_string();
                let wrong_type = message.starts_with("invalid type");
                if wrong_type {
                    if let Some(i) = literal.iter().position(|(p, _)| *p == field) {
                        // An env value that looked like a number or a list: try it as text.
                        let (p, raw) = literal.swap_remove(i);
                        let _ = set(&mut table, &p, toml::Value::String(raw));
                        continue;
                    }
                    if let Some(slot) = stand_ins.iter_mut().find(|(p, _)| *p == field) {
                        slot.1 += 1;
                        let placed =
                            stand_in(slot.1).is_some_and(|v| set(&mut table, &field, v).is_ok());
                        if placed {
                            continue;
                        }
                        break None;
                    }
                }
                if let Some(name) = missing_field(&message) {
                    let location = source.locate(&field);
                    field.0.push(Seg::Key(name));
                    problems.push(Problem {
                        location,
                        field: field.clone(),
                        message: "missing (required)".into(),
                    });
                    let placed = problems.len() < MAX_PROBLEMS
                        && stand_in(0).is_some_and(|v| set(&mut table, &field, v).is_ok());
                    if !placed {
                        break None;
                    }
                    stand_ins.push((field, 0));
                    continue;
                }
                problems.push(Problem {
                    location: source.locate(&field),
                    field: field.clone(),
                    message,
                });
                if problems.len() >= MAX_PROBLEMS || !remove(&mut table, &field) {
                    break None;
                }
            }
        }
    };
    if let Some(v) = &value {
        for (field, message) in check(v) {
            // A stand-in for a missing key has been reported already.
            if stand_ins.iter().any(|(p, _)| field.starts_with(p)) {
                continue;
            }
            problems.push(Problem {
                location: source.locate(&field),
                field,
                message,
            });
        }
    }
    match value {
        Some(v) if problems.is_empty() => Ok((v, source)),
        _ => Err(ConfigError::Problems {
            path: path.into(),
            problems,
        }),
    }
}

/// `missing field `host`` → `host`.
fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    Some(rest.split('`').next()?.to_string())
}

/// Stand-ins for a missing key, tried in turn until one has the key's type.
fn stand_in(attempt: usize) -> Option<toml::Value> {
    Some(match attempt {
        0 => toml::Value::String(String::new()),
        1 => toml::Value::Integer(0),
        2 => toml::Value::Boolean(false),
        3 => toml::Value::Table(toml::Table::new()),
        4 => toml::Value::Array(Vec::new()),
        _ => return None,
    })
}

/// `PLATEN_BROKER__PORT` → `broker.port`, when `broker` is one of `roots`.
fn env_path(var: &str, roots: &[&str]) -> Option<FieldPath> {
    let rest = var.strip_prefix(PREFIX)?;
    let mut segs = Vec::new();
    for part in rest.split("__") {
        if part.is_empty() {
            return None;
        }
        segs.push(match part.parse::<usize>() {
            Ok(i) if !segs.is_empty() => Seg::Index(i),
            _ => Seg::Key(part.to_ascii_lowercase()),
        });
    }
    match segs.first() {
        Some(Seg::Key(root)) if roots.contains(&root.as_str()) => Some(FieldPath(segs)),
        _ => None,
    }
}

fn env_value(raw: &str) -> toml::Value {
    if let Ok(i) = raw.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    match raw {
        "true" => return toml::Value::Boolean(true),
        "false" => return toml::Value::Boolean(false),
        _ => {}
    }
    if raw.trim_start().starts_with('[') {
        if let Ok(mut t) = toml::from_str::<toml::Table>(&format!("v = {raw}")) {
            if let Some(v) = t.remove("v") {
                return v;
            }
        }
    }
    toml::Value::String(raw.to_string())
}

/// Set `field` in `table`, creating tables on the way; array elements must exist.
fn set(table: &mut toml::Table, field: &FieldPath, value: toml::Value) -> Result<(), String> {
    let Some((last, parents)) = field.0.split_last() else {
        return Err("empty path".into());
    };
    let mut here = Slot::Table(table);
    for seg in parents {
        here = here.child(seg, true)?;
    }
    match (here, last) {
        (Slot::Table(t), Seg::Key(k)) => {
            t.insert(k.clone(), value);
            Ok(())
        }
        (Slot::Array(a), Seg::Index(i)) => match a.get_mut(*i) {
            Some(v) => {
                *v = value;
                Ok(())
            }
            None => Err(format!(
                "there is no element {i} (the file has {})",
                a.len()
            )),
        },
        _ => Err("does not match the shape of the file".into()),
    }
}

/// Remove `field` from `table`; false when there is nothing to remove.
fn remove(table: &mut toml::Table, field: &FieldPath) -> bool {
    let Some((last, parents)) = field.0.split_last() else {
        return false;
    };
    let mut here = Slot::Table(table);
    for seg in parents {
        match here.child(seg, false) {
            Ok(next) => here = next,
            Err(_) => return false,
        }
    }
    match (here, last) {
        (Slot::Table(t), Seg::Key(k)) => t.remove(k).is_some(),
        (Slot::Array(a), Seg::Index(i)) if *i < a.len() => {
            a.remove(*i);
            true
        }
        _ => false,
    }
}

enum Slot<'a> {
    Table(&'a mut toml::Table),
    Array(&'a mut Vec<toml::Value>),
}

impl<'a> Slot<'a> {
    fn child(self, seg: &Seg, create: bool) -> Result<Slot<'a>, String> {
        let next = match (self, seg) {
            (Slot::Table(t), Seg::Key(k)) => {
                if create && !t.contains_key(k) {
                    t.insert(k.clone(), toml::Value::Table(toml::Table::new()));
                }
                t.get_mut(k)
            }
            (Slot::Array(a), Seg::Index(i)) => {
                let len = a.len();
                match a.get_mut(*i) {
                    Some(v) => Some(v),
                    None => return Err(format!("there is no element {i} (the file has {len})")),
                }
            }
            _ => None,
        };
        match next {
            Some(toml::Value::Table(t)) => Ok(Slot::Table(t)),
            Some(toml::Value::Array(a)) => Ok(Slot::Array(a)),
            _ => Err("does not match the shape of the file".into()),
        }
    }
}

/// serde_ignored's path (`printer.0.foo`, options shown as `?`) as our display form.
fn ignored_path(p: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match p {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        P::Map { parent, key } => {
            let parent = ignored_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            ignored_path(parent)
        }
    }
}

/// A TOML rendering of `value` for `config show`, with the variables that overrode
/// the file listed first as comments.
pub fn show<T: serde::Serialize>(value: &T, source: &Source) -> Result<String, String> {
    let body = toml::to_string_pretty(value).map_err(|e| e.to_string())?;
    let mut out = format!("# effective configuration: {}\n", source.path.display());
    let overrides: BTreeMap<&str, String> = source
        .overrides()
        .map(|(var, field)| (var, field.to_string()))
        .collect();
    for (var, field) in overrides {
        out.push_str(&format!("# {field} from env {var}\n"));
    }
    out.push('\n');
    out.push_str(&body);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    struct Conf {
        name: String,
        #[serde(default)]
        count: u32,
        broker: Broker,
        #[serde(default, rename = "printer")]
        printers: Vec<Printer>,
    }
    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    struct Broker {
        host: String,
        #[serde(default)]
        port: u16,
        password: Option<String>,
        #[serde(default)]
        tags: Vec<String>,
        #[serde(default)]
        tls: bool,
    }
    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    struct Printer {
        id: String,
        community: String,
    }

    const ROOTS: &[&str] = &["name", "count", "broker", "printer"];
    const TEXT: &str = "name = \"gw\"\n\n[broker]\nhost = \"h\"\nport = 1883\n\n[[printer]]\nid = \"p1\"\ncommunity = \"c1\"\n\n[[printer]]\nid = \"p2\"\ncommunity = \"c2\"\n";

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn run(text: &str, vars: &[(&str, &str)]) -> Result<(Conf, Source), ConfigError> {
        parse(text, Path::new("x.toml"), &env(vars), ROOTS, |c: &Conf| {
            let mut v = Vec::new();
            for (i, p) in c.printers.iter().enumerate() {
                if p.community.is_empty() {
                    v.push((
                        FieldPath::parse(&format!("printer[{i}].community")),
                        "must not be empty".to_string(),
                    ));
                }
            }
            v
        })
    }

    fn problems(text: &str, vars: &[(&str, &str)]) -> String {
        run(text, vars).err().expect("should fail").to_string()
    }

    #[test]
    fn paths_round_trip() {
        for s in ["a", "a.b", "printer[0].community", "a[1][2].b"] {
            assert_eq!(FieldPath::parse(s).to_string(), s);
        }
    }

    #[test]
    fn env_overrides_with_types_from_the_setting() {
        let (c, src) = run(
            TEXT,
            &[
                ("PLATEN_BROKER__PORT", "8883"),
                ("PLATEN_BROKER__PASSWORD", "12345"),
                ("PLATEN_BROKER__TLS", "true"),
                ("PLATEN_BROKER__TAGS", "[\"a\", \"b\"]"),
                ("PLATEN_PRINTER__1__COMMUNITY", "s3cret"),
                ("PLATEN_NAME", "true"),
                ("PLATEN_LOG_FORMAT", "json"), // not a config key: left alone
                ("OTHER", "x"),
            ],
        )
        .unwrap();
        assert_eq!(c.broker.port, 8883);
        assert_eq!(
            c.broker.password.as_deref(),
            Some("12345"),
            "numbers stay text for text settings"
        );
        assert!(c.broker.tls);
        assert_eq!(c.broker.tags, ["a", "b"]);
        assert_eq!(c.printers[1].community, "s3cret");
        assert_eq!(c.printers[0].community, "c1");
        assert_eq!(c.name, "true");
        assert_eq!(
            src.locate(&FieldPath::parse("broker.port")),
            Location::Env("PLATEN_BROKER__PORT".into())
        );
        assert_eq!(
            src.locate(&FieldPath::parse("broker.host")),
            Location::Line(4)
        );
        assert_eq!(
            src.locate(&FieldPath::parse("printer[1].id")),
            Location::Line(12)
        );
        assert_eq!(src.overrides().count(), 6);
    }

    #[test]
    fn every_problem_at_once_with_its_line() {
        let text = TEXT
            .replace("port = 1883", "port = \"x\"\nhots = 1")
            .replace("community = \"c2\"", "community = \"\"\ncolor = true")
            .replace("name = \"gw\"", "name = \"gw\"\ncount = -1");
        let out = problems(&text, &[]);
        let want = [
            "x.toml:2: count: invalid value: integer `-1`, expected u32",
            "x.toml:6: broker.port: invalid type: string \"x\", expected u16",
            "x.toml:7: broker.hots: unknown key",
            "x.toml:16: printer[1].color: unknown key",
            "x.toml:15: printer[1].community: must not be empty",
        ];
        for w in want {
            assert!(out.contains(w), "wanted {w:?} in\n{out}");
        }
        assert_eq!(out.lines().count(), want.len(), "{out}");
    }

    #[test]
    fn env_problems_name_the_variable() {
        let out = problems(
            TEXT,
            &[
                ("PLATEN_BROKER__PORT", "99999"),
                ("PLATEN_PRINTER__5__COMMUNITY", "x"),
                ("PLATEN_BROKER__HOTS", "y"),
            ],
        );
        assert!(out.contains("x.toml (env PLATEN_PRINTER__5__COMMUNITY): printer[5].community: there is no element 5 (the file has 2)"), "{out}");
        assert!(
            out.contains("x.toml (env PLATEN_BROKER__PORT): broker.port: invalid value"),
            "{out}"
        );
        assert!(
            out.contains("x.toml (env PLATEN_BROKER__HOTS): broker.hots: unknown key"),
            "{out}"
        );
    }

    #[test]
    fn missing_keys_and_syntax_errors() {
        let out = problems(&TEXT.replace("host = \"h\"\n", ""), &[]);
        assert!(
            out.contains("x.toml:3: broker.host: missing (required)"),
            "{out}"
        );
        // Everything else is still found in the same run.
        let text = TEXT
            .replace("host = \"h\"\n", "hots = 1\n")
            .replace("name = \"gw\"\n", "");
        let out = problems(&text, &[]);
        assert!(out.contains("x.toml: name: missing (required)"), "{out}");
        assert!(
            out.contains("x.toml:2: broker.host: missing (required)"),
            "{out}"
        );
        assert!(out.contains("x.toml:3: broker.hots: unknown key"), "{out}");
        assert_eq!(out.lines().count(), 3, "{out}");
        // A missing table is a stand-in too; its own required keys follow.
        let out = problems("name = \"x\"\n", &[]);
        assert!(out.contains("broker: missing (required)"), "{out}");
        assert!(out.contains("broker.host: missing (required)"), "{out}");
        // …but the environment can supply it.
        let (c, _) = run(
            &TEXT.replace("host = \"h\"\n", ""),
            &[("PLATEN_BROKER__HOST", "e")],
        )
        .unwrap();
        assert_eq!(c.broker.host, "e");
        let err = run("name = ", &[]).err().unwrap();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn show_lists_overrides() {
        let (c, src) = run(TEXT, &[("PLATEN_BROKER__PORT", "8883")]).unwrap();
        let out = show(&c, &src).unwrap();
        assert!(
            out.contains("# broker.port from env PLATEN_BROKER__PORT"),
            "{out}"
        );
        assert!(out.contains("port = 8883"), "{out}");
    }
}
