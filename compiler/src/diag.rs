//! Diagnostics as data: every user mistake becomes a `Diagnostic`, rendered only at the edge.
//!
//! Codes are stable: a code is never reused for another meaning, and the table in
//! mesh-specs/README.md lists every one (a test checks that it does).

use std::fmt;

use crate::source::{FileId, SourceMap, Span};

/// How bad a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The mesh cannot be compiled.
    Error,
    /// The mesh compiles, but probably not as meant.
    Warning,
}

macro_rules! codes {
    ($($variant:ident = $code:literal, $istio:expr, $summary:literal;)*) => {
        /// A stable diagnostic code.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Code {
            $(#[doc = $summary] $variant,)*
        }

        impl Code {
            /// Every code, in numeric order.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            /// The code as printed: `E0101`.
            pub fn as_str(self) -> &'static str {
                match self { $(Code::$variant => $code,)* }
            }

            /// The istioctl analyze message this code reproduces, if any.
            pub fn istio(self) -> Option<&'static str> {
                match self { $(Code::$variant => $istio,)* }
            }

            /// One line on what the code means.
            pub fn summary(self) -> &'static str {
                match self { $(Code::$variant => $summary,)* }
            }
        }
    };
}

codes! {
    Io = "E0001", None, "a file cannot be read";
    Syntax = "E0002", None, "a spec file does not follow the grammar";
    Manifest = "E0003", None, "`mesh.toml` is not a valid manifest";
    InvalidValue = "E0004", Some("IST0106"), "a value is out of range or malformed";
    DuplicateSetting = "E0005", Some("IST0106"), "a setting is given twice in one block";
    UnknownService = "E0101", Some("IST0101"), "a reference names no service of any registry";
    UnknownSubset = "E0102", Some("IST0101"), "a reference names a subset the service does not declare";
    UnknownWorkload = "E0103", Some("IST0101"), "a reference names no declared workload";
    DuplicateName = "E0104", None, "two declarations of one kind share a name";
    EmptySubset = "E0105", Some("IST0173"), "a subset's labels select no instance";
    UnknownPort = "E0106", Some("IST0101"), "a port is not a port of the service";
    PortRequired = "E0107", Some("IST0112"), "a destination on a multi-port service names no port";
    ShadowedRoute = "E0201", Some("IST0130"), "a route is never reached: an earlier route has the same match";
    ContainedRoute = "E0202", Some("IST0131"), "a route is never reached: an earlier route matches everything it matches";
    ConflictingRoutes = "E0203", Some("IST0109"), "two `routes` blocks route the same host";
    InvalidRegex = "E0204", Some("IST0122"), "a regular expression is not valid RE2";
    WeightSum = "E0205", None, "destination weights do not sum to 100 and were normalised";
    UnknownMethod = "E0206", None, "an RPC route names a method the registry does not list";
    ProtocolMatch = "E0207", None, "a match or action does not apply to the service's protocol";
    TimeoutBudget = "E0208", None, "a route's timeout ends before its retries can run";
    ProtocolMismatch = "E0209", None, "a destination speaks another protocol than its route table";
    OutOfScope = "E0210", None, "a workload's route reaches a service the workload may not call";
    MissingAction = "E0211", None, "a route has no action, or more than one";
    IneffectiveSetting = "E0212", None, "a route that answers locally has settings only forwarding uses";
    RegistryFormat = "E0301", None, "a registry snapshot cannot be parsed";
    RegistryEntry = "E0302", None, "an entry of a registry snapshot is malformed and was skipped";
    RegistryConflict = "E0303", Some("IST0170"), "registries disagree on a service's protocol or ports";
    SpecConflict = "E0304", None, "the spec and the registry disagree on a service's protocol";
    IneffectivePolicy = "E0401", Some("IST0167"), "an authorization policy or rule can never apply";
    InvalidPattern = "E0402", None, "an authorization value (IP block, path, condition key) is malformed";
    InboundConflict = "E0403", Some("IST0137"), "a workload serves two services on one port with different protocols";
    UnservedMtlsPort = "E0404", None, "an `mtls port` names a port the workload does not serve";
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A span with a message, shown under the source text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    /// What the label points at.
    pub span: Span,
    /// What it says; may be empty.
    pub message: String,
    /// Whether this is the offending item (`^^^`) or a related one (`---`).
    pub primary: bool,
}

/// One finding about the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The stable code.
    pub code: Code,
    /// One lower-case line with no trailing period.
    pub message: String,
    /// Source locations, the primary one first.
    pub labels: Vec<Label>,
    /// Extra lines: context, registry entries, the Istio analogue.
    pub notes: Vec<String>,
    /// A suggestion, if there is one.
    pub help: Option<String>,
}

impl Diagnostic {
    /// A new error.
    pub fn error(code: Code, message: impl Into<String>) -> Diagnostic {
        Diagnostic { severity: Severity::Error, code, message: message.into(), labels: Vec::new(), notes: Vec::new(), help: None }
    }

    /// A new warning.
    pub fn warning(code: Code, message: impl Into<String>) -> Diagnostic {
        Diagnostic { severity: Severity::Warning, ..Diagnostic::error(code, message) }
    }

    /// Adds the primary label.
    pub fn primary(mut self, span: Span, message: impl Into<String>) -> Diagnostic {
        self.labels.push(Label { span, message: message.into(), primary: true });
        self
    }

    /// Adds a secondary label.
    pub fn secondary(mut self, span: Span, message: impl Into<String>) -> Diagnostic {
        self.labels.push(Label { span, message: message.into(), primary: false });
        self
    }

    /// Adds a note.
    pub fn note(mut self, note: impl Into<String>) -> Diagnostic {
        self.notes.push(note.into());
        self
    }

    /// Sets the help line.
    pub fn help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    /// Whether this is an error.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// The file and offset diagnostics are sorted by: the primary label's, or none.
    fn sort_key(&self) -> (Option<(FileId, u32, u32)>, Code, &str) {
        let at = self.labels.iter().find(|it| it.primary).map(|it| (it.span.file, it.span.start, it.span.end));
        (at, self.code, &self.message)
    }
}

/// Sorts diagnostics by file and position, so output does not depend on the order checks ran in,
/// and drops exact duplicates (two checks reaching the same conclusion).
pub fn sort(diagnostics: &mut Vec<Diagnostic>) {
    diagnostics.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()).then_with(|| a.notes.cmp(&b.notes)));
    diagnostics.dedup();
}

/// Renders diagnostics as rustc does, without color, for goldens and pipes.
pub fn render_plain(sources: &SourceMap, diagnostics: &[Diagnostic]) -> String {
    let mut out = String::new();
    let config = codespan_reporting::term::Config::default();
    for diagnostic in diagnostics {
        let rendered = codespan_reporting::term::emit_into_string(&config, sources, &to_codespan(diagnostic));
        // The source map holds every file a label can name, so rendering cannot fail;
        // if it ever does, the plain message still reaches the user.
        match rendered {
            Ok(text) => out.push_str(&text),
            Err(err) => out.push_str(&format!(
                "{}[{}]: {} (cannot render: {err})\n",
                severity_word(diagnostic.severity),
                diagnostic.code,
                diagnostic.message
            )),
        }
    }
    out.push_str(&summary_line(diagnostics));
    out
}

/// Writes diagnostics to stderr, in color when stderr is a terminal.
pub fn emit_to_stderr(sources: &SourceMap, diagnostics: &[Diagnostic], color: bool) {
    use codespan_reporting::term::termcolor::{ColorChoice, StandardStream};
    use std::io::Write;
    let choice = if color { ColorChoice::Auto } else { ColorChoice::Never };
    let mut stream = StandardStream::stderr(choice);
    let config = codespan_reporting::term::Config::default();
    let styles = codespan_reporting::term::Styles::default();
    for diagnostic in diagnostics {
        let mut writer = codespan_reporting::term::StylesWriter::new(&mut stream, &styles);
        if codespan_reporting::term::emit_to_write_style(&mut writer, &config, sources, &to_codespan(diagnostic)).is_err() {
            let _ = writeln!(stream, "{}[{}]: {}", severity_word(diagnostic.severity), diagnostic.code, diagnostic.message);
        }
    }
    let _ = write!(stream, "{}", summary_line(diagnostics));
}

fn severity_word(severity: Severity) -> &'static str {
    match severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    }
}

/// `1 warning`, `2 errors`: a count and a noun that takes an `s` in the plural.
pub fn plural(n: usize, word: &str) -> String {
    if n == 1 { format!("1 {word}") } else { format!("{n} {word}s") }
}

/// `error: 2 errors and 1 warning emitted`, or nothing when there are no diagnostics.
fn summary_line(diagnostics: &[Diagnostic]) -> String {
    let errors = diagnostics.iter().filter(|it| it.is_error()).count();
    let warnings = diagnostics.len() - errors;
    match (errors, warnings) {
        (0, 0) => String::new(),
        (0, w) => format!("warning: {} emitted\n", plural(w, "warning")),
        (e, 0) => format!("error: could not compile the mesh due to {}\n", plural(e, "error")),
        (e, w) => format!("error: could not compile the mesh due to {} ({} emitted)\n", plural(e, "error"), plural(w, "warning")),
    }
}

fn to_codespan(diagnostic: &Diagnostic) -> codespan_reporting::diagnostic::Diagnostic<FileId> {
    use codespan_reporting::diagnostic as cs;
    let severity = match diagnostic.severity {
        Severity::Error => cs::Severity::Error,
        Severity::Warning => cs::Severity::Warning,
    };
    let labels = diagnostic
        .labels
        .iter()
        .map(|label| {
            let style = if label.primary { cs::LabelStyle::Primary } else { cs::LabelStyle::Secondary };
            cs::Label::new(style, label.span.file, label.span.start as usize..label.span.end as usize).with_message(&label.message)
        })
        .collect();
    let mut notes = diagnostic.notes.clone();
    if let Some(help) = &diagnostic.help {
        notes.push(format!("help: {help}"));
    }
    cs::Diagnostic::new(severity)
        .with_code(diagnostic.code.as_str())
        .with_message(&diagnostic.message)
        .with_labels(labels)
        .with_notes(notes)
}

/// Diagnostics as JSON, for `--format json`.
pub fn to_json(sources: &SourceMap, diagnostics: &[Diagnostic]) -> serde_json::Value {
    let label = |label: &Label| {
        let (line, column) = sources.line_col(label.span.file, label.span.start);
        let (end_line, end_column) = sources.line_col(label.span.file, label.span.end);
        serde_json::json!({
            "file": sources.path(label.span.file),
            "line": line,
            "column": column,
            "end_line": end_line,
            "end_column": end_column,
            "message": label.message,
            "primary": label.primary,
        })
    };
    let items: Vec<_> = diagnostics
        .iter()
        .map(|it| {
            serde_json::json!({
                "severity": it.severity,
                "code": it.code.as_str(),
                "istio": it.code.istio(),
                "message": it.message,
                "labels": it.labels.iter().map(label).collect::<Vec<_>>(),
                "notes": it.notes,
                "help": it.help,
            })
        })
        .collect();
    let errors = diagnostics.iter().filter(|it| it.is_error()).count();
    serde_json::json!({
        "errors": errors,
        "warnings": diagnostics.len() - errors,
        "diagnostics": items,
    })
}
