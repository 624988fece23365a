//! RE2, as Envoy and Istio mean it, in Rust's `regex` dialect.
//!
//! Route regexes are written in RE2 syntax and must match the whole value. Rust's `regex`
//! crate is close to RE2 but not equal: it accepts constructs RE2 rejects (class set
//! operations, nested classes, counts above 1000, stacked repetitions) and its `\d`, `\w`,
//! `\s` and `\b` are Unicode-aware where RE2's are ASCII. [`to_rust`] rejects the first
//! kind and rewrites the second, and anchors the result, so that the compiler's checks, the
//! reference interpreter and the generated sidecar all match exactly what Envoy would.

use regex_syntax::ast::{self, Ast, ClassSet, ClassSetItem};

/// RE2's largest repetition count.
const MAX_REPEAT: u32 = 1000;

/// Translates an RE2 pattern into an anchored Rust `regex` pattern with the same meaning,
/// or explains why the pattern is not valid RE2.
pub fn to_rust(pattern: &str) -> Result<String, String> {
    let parsed = ast::parse::ParserBuilder::new().nest_limit(64).build().parse(pattern).map_err(|err| err.kind().to_string())?;
    let mut splices: Vec<(usize, usize, String)> = Vec::new();
    walk(&parsed, false, &mut splices)?;
    // The pattern parsed on its own, so its parentheses balance and the group below is sound.
    splices.sort_by_key(|it| it.0);
    let mut out = String::with_capacity(pattern.len() + 16);
    out.push_str("^(?:");
    let mut at = 0;
    for (start, end, replacement) in splices {
        out.push_str(&pattern[at..start]);
        out.push_str(&replacement);
        at = end;
    }
    out.push_str(&pattern[at..]);
    out.push_str(")$");
    Ok(out)
}

fn walk(node: &Ast, repeated: bool, splices: &mut Vec<(usize, usize, String)>) -> Result<(), String> {
    match node {
        Ast::Empty(_) | Ast::Literal(_) | Ast::Dot(_) | Ast::ClassUnicode(_) => Ok(()),
        Ast::Flags(flags) => check_flags(&flags.flags),
        Ast::Assertion(assertion) => {
            let ascii = match assertion.kind {
                ast::AssertionKind::WordBoundary => "(?-u:\\b)",
                ast::AssertionKind::NotWordBoundary => "(?-u:\\B)",
                ast::AssertionKind::StartLine
                | ast::AssertionKind::EndLine
                | ast::AssertionKind::StartText
                | ast::AssertionKind::EndText => return Ok(()),
                _ => return Err("this word-boundary assertion is not RE2".to_owned()),
            };
            splices.push((assertion.span.start.offset, assertion.span.end.offset, ascii.to_owned()));
            Ok(())
        }
        Ast::ClassPerl(class) => {
            splices.push((class.span.start.offset, class.span.end.offset, ascii_class(class)));
            Ok(())
        }
        Ast::ClassBracketed(class) => walk_set(&class.kind, splices),
        Ast::Repetition(repetition) => {
            if repeated {
                return Err("a repetition operator cannot follow another one in RE2".to_owned());
            }
            if let ast::RepetitionKind::Range(range) = &repetition.op.kind {
                let (ast::RepetitionRange::Exactly(n) | ast::RepetitionRange::AtLeast(n) | ast::RepetitionRange::Bounded(_, n)) = range;
                if *n > MAX_REPEAT {
                    return Err(format!("RE2 allows repetition counts up to {MAX_REPEAT}, not {n}"));
                }
            }
            walk(&repetition.ast, true, splices)
        }
        Ast::Group(group) => {
            if let Some(flags) = group.flags() {
                check_flags(flags)?;
            }
            walk(&group.ast, false, splices)
        }
        Ast::Alternation(alternation) => alternation.asts.iter().try_for_each(|it| walk(it, false, splices)),
        Ast::Concat(concat) => concat.asts.iter().try_for_each(|it| walk(it, false, splices)),
    }
}

fn walk_set(set: &ClassSet, splices: &mut Vec<(usize, usize, String)>) -> Result<(), String> {
    match set {
        ClassSet::BinaryOp(_) => Err("class set operations (`&&`, `--`, `~~`) are not RE2".to_owned()),
        ClassSet::Item(item) => walk_item(item, splices),
    }
}

fn walk_item(item: &ClassSetItem, splices: &mut Vec<(usize, usize, String)>) -> Result<(), String> {
    match item {
        ClassSetItem::Empty(_) | ClassSetItem::Literal(_) | ClassSetItem::Range(_) | ClassSetItem::Ascii(_) | ClassSetItem::Unicode(_) => {
            Ok(())
        }
        ClassSetItem::Perl(class) => {
            splices.push((class.span.start.offset, class.span.end.offset, ascii_item(class)));
            Ok(())
        }
        ClassSetItem::Bracketed(_) => Err("a bracketed class inside a class is not RE2; escape the `[`".to_owned()),
        ClassSetItem::Union(union) => union.items.iter().try_for_each(|it| walk_item(it, splices)),
    }
}

/// RE2's ASCII meaning of a Perl class, as a whole class.
fn ascii_class(class: &ast::ClassPerl) -> String {
    match (class.kind.clone(), class.negated) {
        // RE2's `\s` is `[\t\n\f\r ]`: POSIX `space` without the vertical tab.
        (ast::ClassPerlKind::Space, false) => "[\\t\\n\\x0C\\r ]".to_owned(),
        (ast::ClassPerlKind::Space, true) => "[^\\t\\n\\x0C\\r ]".to_owned(),
        _ => format!("[{}]", ascii_item(class)),
    }
}

/// RE2's ASCII meaning of a Perl class, as an item inside brackets.
fn ascii_item(class: &ast::ClassPerl) -> String {
    let name = match class.kind {
        ast::ClassPerlKind::Digit => "digit",
        ast::ClassPerlKind::Space if !class.negated => return "\\t\\n\\x0C\\r ".to_owned(),
        // A negated set cannot be spelled inside brackets; POSIX `space` differs only by `\v`.
        ast::ClassPerlKind::Space => "space",
        ast::ClassPerlKind::Word => "word",
    };
    if class.negated { format!("[:^{name}:]") } else { format!("[:{name}:]") }
}

fn check_flags(flags: &ast::Flags) -> Result<(), String> {
    for item in &flags.items {
        if let ast::FlagsItemKind::Flag(flag) = &item.kind {
            let letter = match flag {
                ast::Flag::Unicode => 'u',
                ast::Flag::CRLF => 'R',
                ast::Flag::IgnoreWhitespace => 'x',
                _ => continue,
            };
            return Err(format!("the flag `{letter}` is not RE2"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, value: &str) -> bool {
        regex::Regex::new(&to_rust(pattern).expect("valid RE2")).expect("valid Rust").is_match(value)
    }

    #[test]
    fn patterns_match_the_whole_value() {
        assert!(matches("/v[0-9]+", "/v12"));
        assert!(!matches("/v[0-9]+", "/v12/x"));
        assert!(matches("a|b", "b"));
        assert!(!matches("a|b", "ab"));
    }

    #[test]
    fn unbalanced_groups_cannot_escape_the_anchors() {
        assert!(to_rust("/admin)|(?:/x").is_err());
        assert!(to_rust("(unclosed").is_err());
    }

    #[test]
    fn perl_classes_and_boundaries_are_ascii_as_in_re2() {
        assert!(matches("\\d+", "123"));
        assert!(!matches("\\d+", "١٢"));
        assert!(matches("[\\d_]+", "1_2"));
        assert!(!matches("\\w+", "é"));
        assert!(matches("\\D", "x"));
        assert!(matches("[^\\s]+", "ab"));
        assert!(matches("[a\\S]+", "a-b"));
        assert!(!matches("[a\\S]+", "a b"));
        assert!(matches("\\S+", "ab"));
        assert!(!matches("\\S", " "));
        assert!(matches("a\\s b", "a\t b"));
        assert!(matches(".*\\bx\\b.*", "a x b"));
        assert!(matches("\\pL+", "éa"));
    }

    #[test]
    fn constructs_re2_rejects_are_errors() {
        assert!(to_rust("[a&&b]").unwrap_err().contains("not RE2"));
        assert!(to_rust("[a--b]").is_err());
        assert!(to_rust("[[a-z]]").is_err());
        assert!(to_rust("a{1001}").unwrap_err().contains("1000"));
        assert!(to_rust("a{2,1001}").is_err());
        assert!(to_rust("x*+").is_err());
        assert!(to_rust("(?x)a b").is_err());
        assert!(to_rust("a{1000}").is_ok());
        assert!(to_rust("(?i)abc").is_ok());
        assert!(to_rust("(?:x*)+").is_ok());
    }
}
