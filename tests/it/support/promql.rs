//! What a PromQL expression reads: the metric names of its selectors, the labels each
//! selector matches on, and the labels it groups by. Enough of the grammar for dashboard
//! queries (functions, aggregations, binary operators, matchers, ranges, Grafana's
//! `$variables`); not a validator: `scripts/lint-deploy.sh` parses the same queries with
//! promtool where it can install it.

use std::collections::BTreeSet;

/// One `metric{label="value", …}` in an expression.
#[derive(Debug, PartialEq, Eq)]
pub struct Selector {
    /// The metric name, exactly as written (`rpc_server_call_duration_seconds_bucket`).
    pub metric: String,
    /// The label names its matchers use.
    pub labels: BTreeSet<String>,
}

/// What an expression reads.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reads {
    /// Every selector, in order.
    pub selectors: Vec<Selector>,
    /// Labels named by `by`, `without`, `on`, `ignoring`, `group_left`, `group_right`.
    pub grouping: BTreeSet<String>,
}

#[derive(Debug, PartialEq, Eq)]
enum Token {
    Ident(String),
    Str,
    Open,
    Close,
    OpenBrace,
    CloseBrace,
    Other,
}

/// Keywords that are neither functions nor metric names.
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "Inf", "NaN",
];
/// Aggregation operators: `sum by (le) (…)` puts the grouping between name and parenthesis.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
/// Keywords followed by a parenthesised list of label names.
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn tokens(expr: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            _ if c.is_whitespace() => i += 1,
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += if chars[i] == '\\' && c != '`' { 2 } else { 1 };
                }
                if i >= chars.len() {
                    return Err(format!("unterminated string in {expr}"));
                }
                i += 1;
                out.push(Token::Str);
            }
            // Ranges and subqueries (`[5m]`, `[$__rate_interval]`, `[1h:5m]`) hold no names.
            '[' => {
                let end = chars[i..]
                    .iter()
                    .position(|&c| c == ']')
                    .ok_or_else(|| format!("unterminated [ in {expr}"))?;
                i += end + 1;
            }
            // A Grafana variable outside a string, e.g. `$__interval`: not a name.
            '$' => {
                i += 1;
                if chars.get(i) == Some(&'{') {
                    while i < chars.len() && chars[i] != '}' {
                        i += 1;
                    }
                    i += 1;
                } else {
                    while i < chars.len() && is_ident(chars[i]) {
                        i += 1;
                    }
                }
                out.push(Token::Other);
            }
            _ if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                // Numbers and durations (`0.99`, `1e3`, `5m` after offset).
                while i < chars.len() && (is_ident(chars[i]) || chars[i] == '.') {
                    i += 1;
                }
                out.push(Token::Other);
            }
            _ if is_ident_start(c) => {
                let start = i;
                while i < chars.len() && is_ident(chars[i]) {
                    i += 1;
                }
                out.push(Token::Ident(chars[start..i].iter().collect()));
            }
            '(' => {
                out.push(Token::Open);
                i += 1;
            }
            ')' => {
                out.push(Token::Close);
                i += 1;
            }
            '{' => {
                out.push(Token::OpenBrace);
                i += 1;
            }
            '}' => {
                out.push(Token::CloseBrace);
                i += 1;
            }
            _ => {
                out.push(Token::Other);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// The metrics and labels `expr` reads; an error for what this reader does not follow
/// (a selector without a metric name, an unterminated string or bracket).
pub fn reads(expr: &str) -> Result<Reads, String> {
    let tokens = tokens(expr)?;
    let mut reads = Reads::default();
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Token::Ident(word) if GROUPING.contains(&word.as_str()) => {
                i += 1;
                if tokens.get(i) == Some(&Token::Open) {
                    i += 1;
                    while i < tokens.len() && tokens[i] != Token::Close {
                        if let Token::Ident(label) = &tokens[i] {
                            reads.grouping.insert(label.clone());
                        }
                        i += 1;
                    }
                }
            }
            Token::Ident(word)
                if KEYWORDS.contains(&word.as_str()) || AGGREGATIONS.contains(&word.as_str()) => {}
            // A function or an aggregation.
            Token::Ident(_) if tokens.get(i + 1) == Some(&Token::Open) => {}
            Token::Ident(metric) => {
                let mut labels = BTreeSet::new();
                if tokens.get(i + 1) == Some(&Token::OpenBrace) {
                    i += 2;
                    while i < tokens.len() && tokens[i] != Token::CloseBrace {
                        if let Token::Ident(label) = &tokens[i] {
                            labels.insert(label.clone());
                        }
                        i += 1;
                    }
                }
                reads.selectors.push(Selector {
                    metric: metric.clone(),
                    labels,
                });
            }
            Token::OpenBrace => return Err(format!("a selector without a metric name in {expr}")),
            _ => {}
        }
        i += 1;
    }
    Ok(reads)
}

#[test]
fn reads_names_labels_and_grouping() {
    let found = reads(
        r#"histogram_quantile(0.99, sum by (le, rpc_method) (rate(rpc_server_call_duration_seconds_bucket{rpc_grpc_status_code!="0",instance=~"$instance"}[$__rate_interval])))
           / on (rpc_method) group_left sum(rate(other_total[5m] offset 1h)) > bool 0.5 and up"#,
    )
    .expect("parses");
    let metrics: Vec<&str> = found.selectors.iter().map(|s| s.metric.as_str()).collect();
    assert_eq!(
        metrics,
        [
            "rpc_server_call_duration_seconds_bucket",
            "other_total",
            "up"
        ]
    );
    assert_eq!(
        found.selectors[0].labels,
        BTreeSet::from(["rpc_grpc_status_code".to_owned(), "instance".to_owned()])
    );
    assert!(found.selectors[1].labels.is_empty());
    assert_eq!(
        found.grouping,
        BTreeSet::from(["le".to_owned(), "rpc_method".to_owned()])
    );
    assert!(reads(r#"{__name__="x"}"#).is_err());
    assert!(reads(r#"x{a="b}"#).is_err());
}
