//! The guide (`docs/`, mdBook) and the front-door README are tested like code:
//! - the book builds without a warning;
//! - every link between pages, every anchor, every repository file linked exists;
//! - every shell block is run (`<!-- run -->`: it must succeed with the freshly built
//!   binaries first on PATH) or says why not (`<!-- not-run: why -->`);
//! - the demo output shown comes from a real run of the demo;
//! - the example configuration files shown are the packaged ones and pass `check`.

use platen_e2e::workspace_bin;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every Markdown file of the guide, and the root documents that link into it.
fn documents() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    let mut v = Vec::new();
    walk(&root().join("docs/src"), &mut v);
    for f in ["README.md", "ARCHITECTURE.md", "protocol/README.md"] {
        v.push(root().join(f));
    }
    v.sort();
    v
}

/// The text of a page with its `{{#include FILE}}` lines replaced by the file.
fn expanded(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        match line
            .trim()
            .strip_prefix("{{#include ")
            .and_then(|r| r.strip_suffix("}}"))
        {
            Some(inc) => {
                let p = path.parent().unwrap().join(inc.trim());
                out.push_str(
                    &std::fs::read_to_string(&p)
                        .unwrap_or_else(|e| panic!("{}: include {inc}: {e}", path.display())),
                );
                out.push('\n');
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Lines outside fenced code blocks.
fn prose(text: &str) -> Vec<&str> {
    let mut fence = false;
    text.lines()
        .filter(|l| {
            if l.trim_start().starts_with("```") {
                fence = !fence;
                return false;
            }
            !fence
        })
        .collect()
}

/// mdBook's anchor of a heading: lower case, letters, digits, '-' and '_' kept,
/// white space to '-', the rest dropped (inline code and link syntax first removed).
fn slug(heading: &str) -> String {
    let mut text = String::new();
    let mut chars = heading.chars().peekable();
    // [text](url) → text
    while let Some(c) = chars.next() {
        match c {
            '[' => {}
            ']' if chars.peek() == Some(&'(') => {
                for c in chars.by_ref() {
                    if c == ')' {
                        break;
                    }
                }
            }
            _ => text.push(c),
        }
    }
    text.trim()
        .chars()
        .filter_map(|c| {
            if c.is_alphanumeric() || c == '_' || c == '-' {
                Some(c.to_lowercase().next().unwrap_or(c))
            } else if c.is_whitespace() {
                Some('-')
            } else {
                None
            }
        })
        .collect()
}

fn anchors(path: &Path) -> BTreeSet<String> {
    let text = expanded(path);
    prose(&text)
        .iter()
        .filter_map(|l| {
            let t = l.trim_start();
            let n = t.chars().take_while(|c| *c == '#').count();
            (1..=6)
                .contains(&n)
                .then(|| t[n..].strip_prefix(' '))
                .flatten()
                .map(slug)
        })
        .collect()
}

/// `](target)` links in prose, inline code removed.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose(text) {
        let mut clean = String::new();
        let mut code = false;
        for c in line.chars() {
            if c == '`' {
                code = !code;
                clean.push('`');
            } else if !code {
                clean.push(c);
            }
        }
        let mut rest = clean.as_str();
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(j) = after.find(')') else { break };
            out.push(after[..j].to_string());
            rest = &after[j..];
        }
    }
    out
}

#[test]
fn every_link_and_anchor_resolves() {
    let mut problems = Vec::new();
    let mut cache: HashMap<PathBuf, BTreeSet<String>> = HashMap::new();
    let mut checked = 0;
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        for link in links(&text) {
            if link.starts_with("http://")
                || link.starts_with("https://")
                || link.starts_with("mailto:")
            {
                continue;
            }
            checked += 1;
            let (target, anchor) = match link.split_once('#') {
                Some((t, a)) => (t, Some(a)),
                None => (link.as_str(), None),
            };
            let path = if target.is_empty() {
                doc.clone()
            } else {
                doc.parent().unwrap().join(target)
            };
            if !path.exists() {
                problems.push(format!("{}: {link}: no such file", doc.display()));
                continue;
            }
            if let Some(a) = anchor {
                let set = cache.entry(path.clone()).or_insert_with(|| anchors(&path));
                if !set.contains(a) {
                    problems.push(format!(
                        "{}: {link}: no heading with anchor #{a} in {}",
                        doc.display(),
                        path.display()
                    ));
                }
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} links found: is the parser right?"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Every page of the guide is in SUMMARY.md (mdBook would silently leave it out).
#[test]
fn every_page_is_in_the_summary() {
    let src = root().join("docs/src");
    let summary = std::fs::read_to_string(src.join("SUMMARY.md")).unwrap();
    for doc in documents() {
        let Ok(rel) = doc.strip_prefix(&src) else {
            continue;
        };
        let rel = rel.display().to_string();
        if rel == "SUMMARY.md" {
            continue;
        }
        assert!(
            summary.contains(&format!("]({rel})")),
            "{rel} is not in SUMMARY.md"
        );
    }
}

fn mdbook() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_default();
    let candidates = [
        PathBuf::from(&home).join(".cargo/bin/mdbook"),
        PathBuf::from("/usr/local/bin/mdbook"),
    ];
    if let Some(p) = candidates.iter().find(|p| p.exists()) {
        return p.clone();
    }
    if Command::new("mdbook").arg("--version").output().is_ok() {
        return PathBuf::from("mdbook");
    }
    panic!("mdbook is not installed: run scripts/setup (it installs mdbook from crates.io)");
}

#[test]
fn the_book_builds_without_a_warning() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(mdbook())
        .arg("build")
        .arg(root().join("docs"))
        .arg("--dest-dir")
        .arg(out_dir.path())
        .output()
        .expect("run mdbook");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "mdbook build failed:\n{stderr}");
    let bad: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert!(bad.is_empty(), "mdbook warned:\n{}", bad.join("\n"));
    // Includes were resolved: the packaged example is in the rendered page.
    let page = std::fs::read_to_string(out_dir.path().join("reference/cloud-config.html")).unwrap();
    assert!(
        page.contains("max_connections_per_ip"),
        "include not rendered"
    );
    assert!(!page.contains("{{#include"), "include left unexpanded");
}

/// (file, line, marker, block) for every ```sh block.
fn shell_blocks() -> Vec<(PathBuf, usize, String, String)> {
    let mut out = Vec::new();
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            if lines[i].trim() == "```sh" {
                let marker = lines[..i]
                    .iter()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .map(|l| l.trim().to_string())
                    .unwrap_or_default();
                let indent = lines[i].len() - lines[i].trim_start().len();
                let mut block = String::new();
                let start = i + 1;
                i += 1;
                while i < lines.len() && lines[i].trim() != "```" {
                    block.push_str(lines[i].get(indent..).unwrap_or(lines[i].trim_start()));
                    block.push('\n');
                    i += 1;
                }
                out.push((doc.clone(), start, marker, block));
            }
            i += 1;
        }
    }
    out
}

#[test]
fn every_shell_block_is_run_or_says_why_not() {
    let blocks = shell_blocks();
    assert!(
        blocks.len() >= 15,
        "only {} shell blocks found",
        blocks.len()
    );
    // Binaries first on PATH: the ones this build made.
    let bin_dir = workspace_bin("platen-agent")
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut problems = Vec::new();
    let mut ran = 0;
    for (doc, line, marker, block) in blocks {
        let at = format!("{}:{line}", doc.display());
        if let Some(why) = marker
            .strip_prefix("<!-- not-run:")
            .and_then(|r| r.strip_suffix("-->"))
        {
            if why.trim().len() < 10 {
                problems.push(format!("{at}: not-run needs a reason"));
            }
            continue;
        }
        if marker != "<!-- run -->" {
            problems.push(format!(
                "{at}: mark the block <!-- run --> or <!-- not-run: why -->"
            ));
            continue;
        }
        // In a scratch folder that sees the repository's folders by their names.
        let dir = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(root()).unwrap().flatten() {
            let name = e.file_name();
            if name != "target" && name != ".git" {
                std::os::unix::fs::symlink(e.path(), dir.path().join(&name)).unwrap();
            }
        }
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &block])
            .current_dir(dir.path())
            .env("PATH", &path)
            .output()
            .expect("bash");
        ran += 1;
        if !out.status.success() {
            problems.push(format!(
                "{at}: exit {:?}\n{block}\nstdout: {}\nstderr: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(ran >= 2, "only {ran} blocks ran");
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// A line with every run of digits made `0` (times, ports, versions, amounts vary).
fn shape(line: &str) -> String {
    let mut out = String::new();
    let mut digit = false;
    for c in line.chars() {
        if c.is_ascii_digit() {
            if !digit {
                out.push('0');
            }
            digit = true;
        } else {
            digit = false;
            out.push(c);
        }
    }
    out.trim_end().to_string()
}

#[test]
fn the_demo_output_shown_comes_from_a_real_run() {
    let shown =
        std::fs::read_to_string(root().join("docs/src/getting-started/demo-output.txt")).unwrap();
    let out = Command::new(workspace_bin("platen-demo"))
        .output()
        .expect("run the demo");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fresh = String::from_utf8_lossy(&out.stdout);
    let kinds = |t: &str| -> BTreeSet<String> { t.lines().map(shape).collect() };
    let (shown, fresh) = (kinds(&shown), kinds(&fresh));
    let missing: Vec<_> = shown.difference(&fresh).collect();
    let new: Vec<_> = fresh.difference(&shown).collect();
    assert!(
        missing.is_empty() && new.is_empty(),
        "the guide's demo output differs from a run (scripts/docs --demo writes it again)\n\
         shown but not printed now: {missing:#?}\nprinted now but not shown: {new:#?}"
    );
}

#[test]
fn the_examples_shown_are_the_packaged_files_and_pass_their_checks() {
    let cases = [
        (
            "docs/src/reference/agent-config.md",
            "packaging/agent.example.toml",
            "platen-agent",
            &["config", "check"][..],
        ),
        (
            "docs/src/reference/cloud-config.md",
            "packaging/cloud.example.toml",
            "platen-cloud",
            &["config", "check"][..],
        ),
        (
            "docs/src/reference/catalog.md",
            "packaging/catalog.example.toml",
            "platen-cloud",
            &["catalog", "check"][..],
        ),
    ];
    for (page, file, bin, check) in cases {
        let text = std::fs::read_to_string(root().join(page)).unwrap();
        assert!(
            text.contains(&format!("{{{{#include ../../../{file}}}}}")),
            "{page} does not include {file} as it is"
        );
        // Installed as the package installs it: not readable by others (the agent's
        // holds a community, and both `run` and `config check` refuse it otherwise).
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join(Path::new(file).file_name().unwrap());
        std::fs::copy(root().join(file), &copy).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o640)).unwrap();
        let out = Command::new(workspace_bin(bin))
            .args(check)
            .arg(&copy)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{bin} {check:?} {file}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
