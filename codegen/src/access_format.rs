//! Envoy's text access log formats: text with `%COMMAND%` operators, parsed once. The checker
//! refuses a format with an operator the sidecar cannot write (Envoy refuses one it does not
//! know), and the runtime writes lines from the same parse: one source file, two crates.
//!
//! Grammar, as Envoy's: `%%` is a `%`; an operator is `%NAME%`, `%NAME(ARG)%` or
//! `%NAME(ARG):LENGTH%`, where `REQ` and `RESP` take a header name and an alternative tried
//! when the first is absent (`%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%`), and `LENGTH` truncates the
//! value. Any other `%` is an error.

/// A piece of a format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Written as it is (a `%%` already made one `%`).
    Text(std::borrow::Cow<'a, str>),
    /// Replaced by a value of the request, `-` when it has none.
    Operator(Operator<'a>, Option<usize>),
}

/// An operator the sidecar writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator<'a> {
    /// When the request started, RFC 3339 in UTC with milliseconds.
    StartTime,
    /// `HTTP/1.1` or `HTTP/2`.
    Protocol,
    /// The status answered (0 when the client left before it).
    ResponseCode,
    /// Envoy's response flags.
    ResponseFlags,
    /// Milliseconds from the request's start to its response's end.
    Duration,
    /// Bytes of response body sent.
    BytesSent,
    /// The cluster the request went to.
    UpstreamCluster,
    /// The endpoint that answered, `ip:port`.
    UpstreamHost,
    /// The route taken.
    RouteName,
    /// The client's address.
    DownstreamRemoteAddress,
    /// A request header (lower case; `:method`, `:path`, `:authority` are the pseudo-headers),
    /// or its alternative when absent.
    Request(&'a str, Option<&'a str>),
    /// A response header, or its alternative when absent.
    Response(&'a str, Option<&'a str>),
}

/// The operators without an argument, by name.
pub const PLAIN: [(&str, Operator<'static>); 10] = [
    ("START_TIME", Operator::StartTime),
    ("PROTOCOL", Operator::Protocol),
    ("RESPONSE_CODE", Operator::ResponseCode),
    ("RESPONSE_FLAGS", Operator::ResponseFlags),
    ("DURATION", Operator::Duration),
    ("BYTES_SENT", Operator::BytesSent),
    ("UPSTREAM_CLUSTER", Operator::UpstreamCluster),
    ("UPSTREAM_HOST", Operator::UpstreamHost),
    ("ROUTE_NAME", Operator::RouteName),
    ("DOWNSTREAM_REMOTE_ADDRESS", Operator::DownstreamRemoteAddress),
];

/// Why a format cannot be written: `at` is the byte offset of the `%` it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatError {
    /// Where in the format.
    pub at: usize,
    /// What is wrong.
    pub message: String,
    /// What would be right, when there is more to say.
    pub help: Option<String>,
}

/// Parses a text format into its pieces.
pub fn parse(format: &str) -> Result<Vec<Piece<'_>>, FormatError> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = format;
    while let Some(start) = rest.find('%') {
        let at = format.len() - rest.len() + start;
        text.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        if let Some(tail) = after.strip_prefix('%') {
            text.push('%');
            rest = tail;
            continue;
        }
        let Some(end) = after.find('%') else {
            let help = Some("write `%%` for a percent sign".to_owned());
            return Err(FormatError { at, message: "a `%` that starts no operator".to_owned(), help });
        };
        let command = &after[..end];
        let (operator, length) = operator(command).map_err(|(message, help)| FormatError { at, message, help })?;
        if !text.is_empty() {
            pieces.push(Piece::Text(std::mem::take(&mut text).into()));
        }
        pieces.push(Piece::Operator(operator, length));
        rest = &after[end + 1..];
    }
    text.push_str(rest);
    if !text.is_empty() {
        pieces.push(Piece::Text(text.into()));
    }
    Ok(pieces)
}

/// An operator, or what is wrong with it and what would be right.
type Parsed<'a> = Result<(Operator<'a>, Option<usize>), (String, Option<String>)>;

fn operator(command: &str) -> Parsed<'_> {
    // `NAME(ARG):LENGTH`: the length follows the argument's closing parenthesis.
    let (body, length) = match command.rfind(':').filter(|at| command[..*at].ends_with(')')) {
        Some(at) => {
            let length = command[at + 1..]
                .parse::<usize>()
                .map_err(|_| (format!("`{}` is not a length in `%{command}%`", &command[at + 1..]), None))?;
            (&command[..at], Some(length))
        }
        None => (command, None),
    };
    if let Some((name, argument)) = body.strip_suffix(')').and_then(|it| it.split_once('(')) {
        let (first, alternative) = match argument.split_once('?') {
            Some((first, alternative)) => (first, Some(alternative)),
            None => (argument, None),
        };
        let valid = |header: &str| {
            let bare = header.strip_prefix(':').unwrap_or(header);
            !bare.is_empty() && bare.bytes().all(|it| it.is_ascii_alphanumeric() || b"!#$&'*+-.^_`|~".contains(&it))
        };
        if !valid(first) || alternative.is_some_and(|it| !valid(it)) {
            return Err((format!("`{argument}` is not a header name in `%{command}%`"), None));
        }
        return match name {
            "REQ" => Ok((Operator::Request(first, alternative), length)),
            "RESP" => Ok((Operator::Response(first, alternative), length)),
            _ => Err(unsupported(command)),
        };
    }
    match PLAIN.iter().find(|(name, _)| *name == body) {
        Some((_, operator)) => Ok((*operator, length)),
        None => Err(unsupported(command)),
    }
}

fn unsupported(command: &str) -> (String, Option<String>) {
    let names: Vec<String> = PLAIN.iter().map(|(name, _)| format!("`%{name}%`")).collect();
    let help = format!("the sidecar writes {}, `%REQ(header)%` and `%RESP(header)%`", names.join(", "));
    (format!("the sidecar cannot write `%{command}%`"), Some(help))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_format_parses_into_text_and_operators() {
        let pieces = parse("[%START_TIME%] \"%REQ(X-ENVOY-ORIGINAL-PATH?:PATH):20%\" %RESP(grpc-status)% 100%%").expect("valid");
        assert_eq!(
            pieces,
            [
                Piece::Text("[".into()),
                Piece::Operator(Operator::StartTime, None),
                Piece::Text("] \"".into()),
                Piece::Operator(Operator::Request("X-ENVOY-ORIGINAL-PATH", Some(":PATH")), Some(20)),
                Piece::Text("\" ".into()),
                Piece::Operator(Operator::Response("grpc-status", None), None),
                Piece::Text(" 100%".into()),
            ]
        );
    }

    #[test]
    fn operators_the_sidecar_cannot_write_are_refused_where_they_stand() {
        let error = parse("%REQ(:PATH)% %UPSTREAM_TRANSPORT_FAILURE_REASON%").expect_err("unsupported");
        assert_eq!(error.at, 13);
        assert!(error.message.contains("`%UPSTREAM_TRANSPORT_FAILURE_REASON%`"), "{}", error.message);
        assert_eq!(parse("100%").expect_err("a lone %").at, 3);
        assert!(parse("%REQ()%").is_err());
        assert!(parse("%REQ(a b)%").is_err());
        assert!(parse("%REQ(:PATH):x%").is_err());
        assert!(parse("%FILTER_STATE(x)%").is_err());
        assert_eq!(parse("").expect("empty"), []);
    }
}
