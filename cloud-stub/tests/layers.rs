//! The cloud crate's layers (see `src/lib.rs` and ARCHITECTURE.md): each module of a
//! layer may use only the layers below it. Checked on the sources: every `crate::…`
//! path outside comments and test modules must point down.

use std::path::Path;

/// Lowest first.
const LAYERS: &[&str] = &[
    "model", "store", "billing", "plans", "fleet", "link", "engine", "webhooks", "ops", "http",
    "server", "config",
];

/// What `crate::X` names at the crate root beyond the modules (re-exports of `link`).
const ROOT_ITEMS: &[(&str, &str)] = &[
    ("Cloud", "link"),
    ("CloudError", "link"),
    ("ReportEvent", "link"),
    ("BrokerAuth", "link"),
    ("Counters", "link"),
    ("INGEST_BATCH", "link"),
];

fn rank(layer: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == layer)
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

/// Every source file of the crate: (path under `src/`, its top module, its code).
fn modules() -> Vec<(String, String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files
        .iter()
        .map(|f| {
            let rel = f.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
            let layer = rel.split('/').next().unwrap().trim_end_matches(".rs");
            let layer = layer.to_string();
            (rel, layer, code(&std::fs::read_to_string(f).unwrap()))
        })
        .collect()
}

#[test]
fn every_layer_uses_only_the_layers_below_it() {
    let mut wrong = Vec::new();
    let mut checked = 0;
    for (rel, layer, text) in &modules() {
        let layer = layer.as_str();
        if layer == "lib" || layer == "main" {
            continue;
        }
        let Some(mine) = rank(layer) else {
            wrong.push(format!("{rel}: module {layer} is in no layer"));
            continue;
        };
        let mut rest = text.as_str();
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            // `crate::name…` or `crate::{a, b::c, …}`: the first segment of each.
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
                let target = ROOT_ITEMS
                    .iter()
                    .find(|(item, _)| *item == name)
                    .map(|(_, l)| *l)
                    .unwrap_or(name.as_str());
                if target == layer {
                    continue;
                }
                checked += 1;
                match rank(target) {
                    Some(r) if r < mine => {}
                    _ => wrong.push(format!("{rel}: {layer} uses crate::{name} ({target})")),
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

/// Words only some layers may use, and the layers that may.
const CONFINED: &[(&str, &[&str])] = &[
    // Nothing outside the store names a backend.
    ("sled::", &["store"]),
    ("tokio_postgres", &["store"]),
    // Only the HTTP layer speaks in status codes (the CLI's client reads them too).
    ("StatusCode", &["http", "main"]),
    ("axum", &["http", "server", "main"]),
    ("status: u16", &["http"]),
];

#[test]
fn backends_and_status_codes_stay_in_their_layers() {
    let mut wrong = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (rel, layer, text) in &modules() {
        let layer = layer.as_str();
        for (word, allowed) in CONFINED {
            if text.contains(word) {
                seen.insert(*word);
                if !allowed.contains(&layer) {
                    wrong.push(format!("{rel}: {layer} names {word}"));
                }
            }
        }
    }
    // Each word is found where it belongs: the check reads what it means to.
    for (word, _) in CONFINED {
        assert!(seen.contains(word), "{word} found nowhere: stale check?");
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
