//! The spec language: the pest grammar (`mesh.pest`), its AST, and parse errors as diagnostics.

pub mod ast;
mod errors;
mod parser;
#[cfg(test)]
mod tests;

use pest::Parser as _;

use crate::diag::Diagnostic;
use crate::source::FileId;

#[derive(pest_derive::Parser)]
#[grammar = "syntax/mesh.pest"]
struct MeshParser;

/// Parses one spec file. Returns `None` (and one diagnostic) when the text does not follow the
/// grammar; otherwise the AST and any value errors (ranges, units, duplicates).
pub fn parse(file: FileId, text: &str, diagnostics: &mut Vec<Diagnostic>) -> Option<ast::File> {
    match MeshParser::parse(Rule::file, text) {
        Ok(mut pairs) => {
            let root = pairs.next().expect("grammar: one file");
            Some(parser::Builder { file, diagnostics }.file(root))
        }
        Err(err) => {
            diagnostics.push(errors::to_diagnostic(file, text, err));
            None
        }
    }
}
