//! The few YAML shapes of `deploy/` read with plain string handling: blocks under a `key:`
//! by indentation, list items, `key: value` pairs. `scripts/lint-deploy.sh` checks the
//! files' syntax and schemas; these only find what `deploy.rs` compares. Not a YAML crate:
//! serde_yaml is archived, and its forks (serde_yaml_ng, serde_norway) each bring a libyaml
//! translated to unsafe Rust: a large dependency for these few shapes.

pub fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

pub fn is_blank_or_comment(line: &str) -> bool {
    let trimmed = line.trim_start();
    trimmed.is_empty() || trimmed.starts_with('#')
}

/// Every block under a `key:` line: the lines after it that are indented deeper (or are
/// list items at its own indentation), comments and blank lines dropped (also inside block
/// scalars, where they do not matter to the TOML read from one).
pub fn blocks<'a>(lines: &[&'a str], key: &str) -> Vec<Vec<&'a str>> {
    let header = format!("{key}:");
    let mut found = Vec::new();
    for (at, line) in lines.iter().enumerate() {
        let code = line.split(" #").next().unwrap_or_default();
        let item = code.trim().trim_start_matches("- ");
        // `key:`, or a block scalar `key: |`.
        let matches = item == header
            || item
                .strip_prefix(header.as_str())
                .is_some_and(|rest| matches!(rest.trim(), "|" | "|-" | ">" | ">-"));
        if is_blank_or_comment(line) || !matches {
            continue;
        }
        let own = indent(line);
        found.push(
            lines[at + 1..]
                .iter()
                .take_while(|l| {
                    is_blank_or_comment(l)
                        || indent(l) > own
                        || (indent(l) == own && l.trim_start().starts_with("- "))
                })
                .filter(|l| !is_blank_or_comment(l))
                .copied()
                .collect(),
        );
    }
    found
}

pub fn block<'a>(lines: &[&'a str], key: &str) -> Vec<&'a str> {
    let mut all = blocks(lines, key);
    assert_eq!(all.len(), 1, "expected exactly one `{key}:` block");
    all.remove(0)
}

/// The block under the direct child `key:` of a block (not a `key:` deeper down, such as
/// a `depends_on:` entry naming a service).
pub fn child_block<'a>(block: &[&'a str], key: &str) -> Vec<&'a str> {
    let own = block.iter().map(|l| indent(l)).min().unwrap_or_default();
    let header = format!("{key}:");
    let at = block
        .iter()
        .position(|l| indent(l) == own && l.trim() == header)
        .unwrap_or_else(|| panic!("no direct child `{key}:`"));
    block[at + 1..]
        .iter()
        .take_while(|l| indent(l) > own)
        .copied()
        .collect()
}

/// The direct children of a block: its lines at the block's smallest indentation.
pub fn children<'a>(block: &[&'a str]) -> Vec<&'a str> {
    let Some(own) = block.iter().map(|l| indent(l)).min() else {
        return Vec::new();
    };
    block
        .iter()
        .filter(|l| indent(l) == own)
        .map(|l| l.trim())
        .collect()
}

/// `key: value` → (key, value without quotes or a trailing comment).
pub fn key_value(entry: &str) -> (String, String) {
    let (key, value) = entry.split_once(':').unwrap_or((entry, ""));
    let value = value.trim();
    let value = if let Some(quoted) = value.strip_prefix('"') {
        quoted.split('"').next().unwrap_or_default()
    } else {
        value.split(" #").next().unwrap_or_default().trim()
    };
    (key.trim().to_owned(), value.to_owned())
}

/// The values of every `key:` line of a text, comments left out.
pub fn values_of(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !is_blank_or_comment(l))
        .map(|l| key_value(l.trim().trim_start_matches("- ")))
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v)
        .collect()
}
