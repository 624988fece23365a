//! Pest errors as diagnostics: the one place that turns `pest::error::Error` into a `Diagnostic`.

use pest::error::{Error, ErrorVariant, InputLocation};

use super::Rule;
use crate::diag::{Code, Diagnostic};
use crate::source::{FileId, Span};

/// Converts a parse error, naming what was expected in the language's own words.
pub(super) fn to_diagnostic(file: FileId, text: &str, err: Error<Rule>) -> Diagnostic {
    let at = match err.location {
        InputLocation::Pos(pos) => pos,
        InputLocation::Span((start, _)) => start,
    };
    let word_len =
        text[at.min(text.len())..].chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '-').map(char::len_utf8).sum::<usize>();
    let end = if word_len > 0 { at + word_len } else { next_char_boundary(text, at) };
    let found = describe_found(text, at);
    if text[at.min(text.len())..].starts_with('"') {
        let line_end = text[at..].find('\n').map_or(text.len(), |it| at + it);
        let line_end = if text[..line_end].ends_with('\r') { line_end - 1 } else { line_end };
        match string_problem(&text[at + 1..line_end]) {
            Some(StringProblem::Open) => {
                return Diagnostic::error(Code::Syntax, "this string is not closed before the end of its line")
                    .primary(Span::new(file, at..line_end), "")
                    .help("end it with `\"` (a string cannot span lines)");
            }
            Some(StringProblem::Escape(start, escape)) => {
                let start = at + 1 + start;
                return Diagnostic::error(Code::Syntax, format!("`{escape}` is not an escape a string may hold"))
                    .primary(Span::new(file, start..start + escape.len()), "")
                    .help("the escapes are `\\\"`, `\\\\`, `\\n`, `\\t`, `\\r` and `\\u{…}` (1 to 6 hex digits)");
            }
            None => {}
        }
    }
    let mut keywords = Vec::new();
    let message = match &err.variant {
        ErrorVariant::ParsingError { positives, .. } => {
            let mut expected: Vec<String> =
                positives.iter().flat_map(|it| rule_name(*it).split(" | ").map(str::to_owned).collect::<Vec<_>>()).collect();
            expected.sort();
            expected.dedup();
            keywords = expected.iter().filter_map(|it| it.strip_prefix('`')?.strip_suffix('`')).map(str::to_owned).collect();
            match expected.len() {
                0 => format!("unexpected {found}"),
                1 => format!("expected {}, found {found}", expected[0]),
                _ => {
                    let last = expected.pop().expect("at least two");
                    format!("expected {} or {last}, found {found}", expected.join(", "))
                }
            }
        }
        ErrorVariant::CustomError { message } => message.clone(),
    };
    let diagnostic = Diagnostic::error(Code::Syntax, message).primary(Span::new(file, at..end), "");
    // pest names the rules it expected, never a literal `}`: where the file ends, or a new
    // item starts, inside a block, say which block was left open.
    // Only where a statement (a keyword) could have come, and the file as a whole leaves a
    // block open: a keyword in the wrong block, or a value missing at the end, is not that.
    let word = &text[at.min(text.len())..(at + word_len).min(text.len())];
    let ends_a_block = (at >= text.len() || ITEM_KEYWORDS.contains(&word)) && !keywords.is_empty() && unclosed_brace(text).is_some();
    match unclosed_brace(&text[..at.min(text.len())]) {
        Some(open) if ends_a_block && matches!(err.variant, ErrorVariant::ParsingError { .. }) => diagnostic
            .secondary(Span::new(file, open..open + 1), "this `{` is not closed")
            .help(format!("close the block with `}}` before {found}")),
        // A word of three letters or more that is a few edits from a keyword expected there.
        _ => match (word.len() >= 3).then(|| closest_keyword(word, &keywords)).flatten() {
            Some(keyword) => diagnostic.help(format!("did you mean `{keyword}`?")),
            None => diagnostic,
        },
    }
}

/// The expected keyword a misspelt `word` is closest to, within an edit per three letters; a
/// word that is a keyword itself, in the wrong place, only one edit away (`workload` where
/// `workloads` belongs), since `tls` is not a misspelt `to`.
fn closest_keyword<'a>(word: &str, keywords: &'a [String]) -> Option<&'a str> {
    let is_keyword = Rule::all_rules().iter().any(|rule| format!("{rule:?}").strip_prefix("kw_") == Some(word));
    let limit = if is_keyword { 1 } else { (word.chars().count() / 3).max(1) };
    keywords
        .iter()
        .map(|it| (crate::check::levenshtein(word, it), it.as_str()))
        .filter(|(distance, _)| (1..=limit).contains(distance))
        .min()
        .map(|(_, keyword)| keyword)
}

/// What is wrong with a string whose opening quote is just before `rest` (the rest of its
/// line), if anything.
#[derive(Debug, PartialEq, Eq)]
enum StringProblem<'a> {
    /// No closing quote on the line.
    Open,
    /// An escape the grammar does not know, and where it starts in `rest`.
    Escape(usize, &'a str),
}

fn string_problem(rest: &str) -> Option<StringProblem<'_>> {
    let mut chars = rest.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '\\' => {
                let next = chars.next().map(|(_, c)| c);
                let valid = match next {
                    None => return Some(StringProblem::Open),
                    Some('"' | '\\' | 'n' | 't' | 'r') => true,
                    Some('u') => {
                        let digits: Vec<char> = rest[at + 2..].chars().skip(1).take_while(char::is_ascii_hexdigit).collect();
                        rest[at + 2..].starts_with('{') && (1..=6).contains(&digits.len()) && rest[at + 3 + digits.len()..].starts_with('}')
                    }
                    _ => false,
                };
                if !valid {
                    let end = next.map_or(at + 1, |c| at + 1 + c.len_utf8());
                    return Some(StringProblem::Escape(at, &rest[at..end]));
                }
            }
            '"' => return None,
            _ => {}
        }
    }
    Some(StringProblem::Open)
}

/// The keywords that start an item of a file (the grammar's `item`).
const ITEM_KEYWORDS: [&str; 5] = ["service", "routes", "authorization", "workload", "telemetry"];

/// Where the innermost `{` of `text` that no `}` closes is, strings and comments aside.
fn unclosed_brace(text: &str) -> Option<usize> {
    let mut open = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            '{' => open.push(at),
            '}' => {
                open.pop();
            }
            '"' => {
                // To the closing quote, an escape's character skipped; a string ends at a
                // line's end at the latest.
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' | '\n' => break,
                        _ => {}
                    }
                }
            }
            '#' => while chars.next_if(|(_, c)| *c != '\n').is_some() {},
            '/' if chars.peek().is_some_and(|(_, c)| *c == '/') => while chars.next_if(|(_, c)| *c != '\n').is_some() {},
            _ => {}
        }
    }
    open.pop()
}

fn next_char_boundary(text: &str, at: usize) -> usize {
    text[at.min(text.len())..].chars().next().map_or(at, |c| at + c.len_utf8())
}

fn describe_found(text: &str, at: usize) -> String {
    let rest = &text[at.min(text.len())..];
    let word: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '-').take(40).collect();
    match rest.chars().next() {
        None => "end of file".to_owned(),
        Some(_) if !word.is_empty() => format!("`{word}`"),
        Some('"') => "a string".to_owned(),
        Some(c) if c.is_whitespace() => "whitespace".to_owned(),
        Some(c) => format!("`{c}`"),
    }
}

/// How a rule is named in "expected ..." messages; ` | ` separates several names.
fn rule_name(rule: Rule) -> String {
    let name = format!("{rule:?}");
    if let Some(keyword) = name.strip_prefix("kw_") {
        return format!("`{keyword}`");
    }
    let text = match rule {
        Rule::EOI => "end of file",
        Rule::file | Rule::item | Rule::service | Rule::routes | Rule::authorization | Rule::workload | Rule::telemetry => {
            return ITEM_KEYWORDS.map(|it| format!("`{it}`")).join(" | ");
        }
        Rule::ident | Rule::dotted | Rule::name => "a name",
        Rule::string => "a string",
        Rule::int => "an integer",
        Rule::number => "a number",
        Rule::duration => "a duration such as `250ms` or `1.5s`",
        Rule::percent => "a percentage such as `10%`",
        Rule::rate => "a rate such as `100/s`",
        Rule::value | Rule::value_list | Rule::word => "a value",
        Rule::name_list => "a list of names",
        Rule::protocol => "a protocol (http, http2, grpc, bolt, dubbo, tcp, auto)",
        Rule::lb_algorithm => "a load balancer (round_robin, random, least_request, ring_hash, maglev)",
        Rule::tls_mode => "a TLS mode (disable, simple, mutual, istio_mutual)",
        Rule::mtls_mode => "an mTLS mode (strict, permissive, disable)",
        Rule::rpc_listener_mode => "`auto` or `per_protocol`",
        Rule::authz_verb => "an action (allow, deny, audit)",
        Rule::match_kind => "`exact`, `prefix` or `regex`",
        Rule::string_match => "a value to match",
        Rule::label | Rule::label_key => "a label `key = \"value\"`",
        Rule::setting | Rule::setting_key => "a setting",
        Rule::route => "`route`",
        Rule::star => "`*`",
        Rule::condition | Rule::cond_authority | Rule::cond_path | Rule::cond_method | Rule::cond_header | Rule::cond_query => {
            "a condition"
        }
        Rule::present => "`present`",
        Rule::header_stmt => "`request_header` | `response_header`",
        Rule::dest_option | Rule::mirror_option => "`subset` | `port` | `weight`",
        Rule::absent => "`absent`",
        _ => return format!("`{}`", name.replace('_', " ")),
    };
    text.to_owned()
}
