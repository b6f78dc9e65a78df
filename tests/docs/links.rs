//! The Markdown files' relative links: each names a file or directory of the repository,
//! and each `#anchor` a heading of the file it names (as GitHub spells heading anchors).
//! Sections move between README.md and docs/; a link left pointing at the old place fails
//! here instead of in a reader's browser.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The repository's own Markdown files (not the vendored ones), relative to its root.
fn markdown_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = [
        "README.md",
        "ARCHITECTURE.md",
        "BENCHMARKS.md",
        "SECURITY.md",
        "clients/typescript/README.md",
        "deploy/README.md",
        "fuzz/README.md",
    ]
    .into_iter()
    .map(PathBuf::from)
    .collect();
    for entry in std::fs::read_dir(repo().join("docs")).expect("docs/") {
        let path = entry.expect("directory entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path.strip_prefix(repo()).expect("in the repo").to_owned());
        }
    }
    files.sort();
    files
}

/// The lines of `text` outside ``` fences.
fn prose(text: &str) -> impl Iterator<Item = &str> {
    let mut fenced = false;
    text.lines().filter(move |line| {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            return false;
        }
        !fenced
    })
}

/// GitHub's anchor for a heading: lower case, spaces to `-`, punctuation other than `-`
/// and `_` dropped; a repeated heading gets `-1`, `-2`, ….
fn anchors(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in prose(text) {
        let Some(heading) = line
            .strip_prefix('#')
            .map(|rest| rest.trim_start_matches('#'))
            .and_then(|rest| rest.strip_prefix(' '))
        else {
            continue;
        };
        let slug: String = heading
            .trim()
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        let mut unique = slug.clone();
        let mut n = 0;
        while found.contains(&unique) {
            n += 1;
            unique = format!("{slug}-{n}");
        }
        found.insert(unique);
    }
    found
}

/// The targets of the `](target)` links in the prose of `text`.
fn links(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    for line in prose(text) {
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            if let Some(end) = rest.find(')') {
                targets.push(rest[..end].to_owned());
                rest = &rest[end..];
            }
        }
    }
    targets
}

#[test]
fn relative_links_and_anchors_resolve() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for file in markdown_files() {
        let text = std::fs::read_to_string(repo().join(&file))
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let resolved = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap_or(Path::new("")).join(path)
            };
            let full = repo().join(&resolved);
            if !full.exists() {
                problems.push(format!("{}: {target}: no such file", file.display()));
                continue;
            }
            if anchor.is_empty() {
                continue;
            }
            let heading_anchors = std::fs::read_to_string(&full)
                .map(|t| anchors(&t))
                .unwrap_or_default();
            if !heading_anchors.contains(anchor) {
                problems.push(format!(
                    "{}: {target}: no heading #{anchor} in {} (has {heading_anchors:?})",
                    file.display(),
                    resolved.display()
                ));
            }
        }
    }
    assert!(checked >= 30, "links read: {checked}");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn anchors_are_spelled_as_github_spells_them() {
    let text = "# Gateways: Envoy ext_authz\n## Following the network's events\n```\n# not a heading\n```\n## Notes\n## Notes\n";
    let found = anchors(text);
    for anchor in [
        "gateways-envoy-ext_authz",
        "following-the-networks-events",
        "notes",
        "notes-1",
    ] {
        assert!(found.contains(anchor), "{anchor} in {found:?}");
    }
    assert_eq!(found.len(), 4, "{found:?}");
    assert_eq!(links("see [a](b.md#c) and [d](e/)"), ["b.md#c", "e/"]);
}
