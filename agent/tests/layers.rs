//! The agent's structure (see `src/lib.rs` and ARCHITECTURE.md): folders by concern,
//! in layers; each module may use only its own folder and the layers below it, so
//! there is no import cycle between concerns. Checked on the sources: every
//! `crate::…` path outside comments and test modules must point down. And the
//! libraries with sharp edges stay behind the module that wraps them.

use std::path::Path;

/// Lowest first; the modules of one group may use each other.
const LAYERS: &[&[&str]] = &[
    &["config", "store", "secret", "tls", "backoff"],
    &["observe"],
    &["snmp"],
    &["apply"],
    &["telemetry"],
    &["link"],
    &["tools"],
    &["run"],
];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|g| g.contains(&module))
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without comments and without its test module.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every source file: (path under `src/`, its top module, its code). A test-only
/// file (`snmp/fake.rs`) is code of the tests, not of its folder.
fn modules() -> Vec<(String, String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files
        .iter()
        .filter(|f| !f.ends_with("snmp/fake.rs"))
        .map(|f| {
            let rel = f.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
            let top = rel.split('/').next().unwrap().trim_end_matches(".rs");
            (
                rel.clone(),
                top.to_string(),
                code(&std::fs::read_to_string(f).unwrap()),
            )
        })
        .collect()
}

#[test]
fn every_concern_uses_only_the_layers_below_it() {
    let mut wrong = Vec::new();
    let mut checked = 0;
    for (rel, module, text) in &modules() {
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(mine) = rank(module) else {
            wrong.push(format!("{rel}: module {module} is in no layer"));
            continue;
        };
        let mut rest = text.as_str();
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let names: Vec<String> = match rest.strip_prefix('{') {
                Some(group) => group[..group.find('}').unwrap_or(group.len())]
                    .split(',')
                    .map(|n| n.trim().split("::").next().unwrap_or("").to_string())
                    .filter(|n| !n.is_empty())
                    .collect(),
                None => vec![rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect()],
            };
            for name in names {
                if name == *module {
                    continue;
                }
                checked += 1;
                match rank(&name) {
                    Some(r) if r < mine || (r == mine && LAYERS[r].len() > 1) => {}
                    _ => wrong.push(format!("{rel}: {module} uses crate::{name}")),
                }
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} paths found: is the check reading the sources?"
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Libraries only one concern may use directly.
const CONFINED: &[(&str, &[&str])] = &[
    // async-snmp behind our `Snmp` trait and `Notifications` (it is pinned and
    // pre-1.0: one place to follow its changes).
    ("async_snmp::", &["snmp"]),
    ("sled::", &["store"]),
    // The broker: the link, the daemon's inbound queue, diag's echo test.
    ("rumqttc::", &["link", "run", "tools"]),
    ("axum::", &["tools"]),
];

#[test]
fn wrapped_libraries_stay_behind_their_module() {
    let mut wrong = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (rel, module, text) in &modules() {
        for (word, allowed) in CONFINED {
            if text.contains(word) {
                seen.insert(*word);
                if !allowed.contains(&module.as_str()) {
                    wrong.push(format!("{rel}: {module} names {word}"));
                }
            }
        }
    }
    for (word, _) in CONFINED {
        assert!(seen.contains(word), "{word} found nowhere: stale check?");
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
