//! Provider URLs as RPC registries write them: `dubbo://10.0.1.15:20880/com.ex.Demo?k=v`,
//! `bolt://10.1.2.3:12200?k=v`, or SOFARegistry's scheme-less `10.1.0.5:12200?k=v`.

use std::collections::BTreeMap;

/// A parsed provider URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderUrl {
    /// The scheme (`dubbo`, `bolt`, `consumer`), absent for SOFARegistry's form.
    pub scheme: Option<String>,
    /// The host: an IP address (without brackets) or a name.
    pub host: String,
    /// The port.
    pub port: u16,
    /// The path without its leading `/` (Dubbo puts the interface there).
    pub path: String,
    /// Query parameters, decoded; the first of repeated keys wins.
    pub params: BTreeMap<String, String>,
}

/// Checks that every `%` starts a two-digit hex escape.
pub fn check_percent_encoding(text: &str) -> Result<(), String> {
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(offset) = bytes[at..].iter().position(|&b| b == b'%') {
        let start = at + offset;
        let escape = bytes.get(start + 1..start + 3);
        if !escape.is_some_and(|it| it.iter().all(u8::is_ascii_hexdigit)) {
            let shown: String = text[start..].chars().take(3).collect();
            return Err(format!("bad URL encoding `{shown}` at byte {start}: `%` must be followed by two hex digits"));
        }
        at = start + 3;
    }
    Ok(())
}

/// Decodes a percent-encoded string, rejecting bad escapes and non-UTF-8 results.
pub fn percent_decode(text: &str) -> Result<String, String> {
    check_percent_encoding(text)?;
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|it| it.into_owned())
        .map_err(|_| "the URL-decoded text is not UTF-8".to_owned())
}

/// Parses a provider URL, with or without a scheme.
pub fn parse_provider(text: &str) -> Result<ProviderUrl, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty provider URL".to_owned());
    }
    let has_scheme = text.contains("://");
    let full = if has_scheme { text.to_owned() } else { format!("provider://{text}") };
    let url = ::url::Url::parse(&full).map_err(|err| format!("`{text}` is not a URL: {err}"))?;
    let host = match url.host() {
        Some(::url::Host::Ipv6(ip)) => ip.to_string(),
        Some(::url::Host::Ipv4(ip)) => ip.to_string(),
        Some(::url::Host::Domain(name)) if !name.is_empty() => name.to_owned(),
        _ => return Err(format!("`{text}` has no host")),
    };
    let port = match url.port() {
        Some(0) => return Err(format!("`{text}` has port 0")),
        Some(port) => port,
        None => return Err(format!("`{text}` has no port")),
    };
    let mut params = BTreeMap::new();
    for (key, value) in url.query_pairs() {
        params.entry(key.into_owned()).or_insert_with(|| value.into_owned());
    }
    Ok(ProviderUrl {
        scheme: has_scheme.then(|| url.scheme().to_owned()),
        host,
        port,
        path: url.path().trim_start_matches('/').to_owned(),
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dubbo_urls_parse() {
        let url = parse_provider("dubbo://10.0.1.15:20880/com.ex.Demo?group=gray&methods=a,b&version=1.0.0").unwrap();
        assert_eq!(url.scheme.as_deref(), Some("dubbo"));
        assert_eq!((url.host.as_str(), url.port, url.path.as_str()), ("10.0.1.15", 20880, "com.ex.Demo"));
        assert_eq!(url.params["methods"], "a,b");
    }

    #[test]
    fn scheme_less_and_ipv6_forms_parse() {
        let url = parse_provider("10.1.0.5:12200?weight=50").unwrap();
        assert_eq!((url.scheme, url.port, url.params["weight"].as_str()), (None, 12200, "50"));
        let url = parse_provider("bolt://[fd00::5]:12200").unwrap();
        assert_eq!(url.host, "fd00::5");
    }

    #[test]
    fn missing_port_and_bad_escapes_are_errors() {
        assert!(parse_provider("dubbo://10.0.1.15/com.ex.Demo").unwrap_err().contains("no port"));
        assert!(percent_decode("dubbo%3A%2F%2Fx%G1").unwrap_err().contains("bad URL encoding"));
        assert_eq!(percent_decode("a%2Fb").unwrap(), "a/b");
    }
}
