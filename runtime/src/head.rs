//! The request as route matching sees it: authority, path, query, method and headers,
//! borrowed from the request with no copies unless a value needs normalising.

use std::borrow::Cow;

use http::HeaderMap;
use http::request::Parts;

/// A read-only view of a request's head.
#[derive(Debug)]
pub struct RequestHead<'a> {
    method: &'a str,
    authority: Cow<'a, str>,
    path: &'a str,
    query: Option<&'a str>,
    headers: &'a HeaderMap,
}

impl<'a> RequestHead<'a> {
    /// The head of a request. The authority comes from the URI (HTTP/2's `:authority`, or an
    /// absolute-form HTTP/1 target) or else the `Host` header, lower-cased.
    pub fn new(parts: &'a Parts) -> RequestHead<'a> {
        let authority = parts
            .uri
            .authority()
            .map(|it| it.as_str())
            .or_else(|| parts.headers.get(http::header::HOST).and_then(|it| it.to_str().ok()))
            .unwrap_or("");
        RequestHead::from_parts(parts.method.as_str(), authority, parts.uri.path(), parts.uri.query(), &parts.headers)
    }

    /// A head from its pieces (tests, benchmarks, the interpreter).
    pub fn from_parts(
        method: &'a str,
        authority: &'a str,
        path: &'a str,
        query: Option<&'a str>,
        headers: &'a HeaderMap,
    ) -> RequestHead<'a> {
        let authority = if authority.bytes().any(|it| it.is_ascii_uppercase()) {
            Cow::Owned(authority.to_ascii_lowercase())
        } else {
            Cow::Borrowed(authority)
        };
        RequestHead { method, authority, path, query, headers }
    }

    /// The method.
    pub fn method(&self) -> &str {
        self.method
    }

    /// The authority (host and maybe port), lower-case.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The query, without the `?`.
    pub fn query(&self) -> Option<&str> {
        self.query
    }

    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.path
    }

    /// A header's value; several values are joined with `,` as Envoy joins them for matching.
    /// Bytes that are not UTF-8 read as U+FFFD, so a header is present here exactly when
    /// [`RequestHead::has_header`] says so, and matches only patterns that allow them.
    pub fn header(&self, name: &str) -> Option<Cow<'a, str>> {
        let mut values = self.headers.get_all(name).iter();
        let first = String::from_utf8_lossy(values.next()?.as_bytes());
        match values.next() {
            None => Some(first),
            Some(second) => {
                let mut joined = format!("{first},{}", String::from_utf8_lossy(second.as_bytes()));
                for value in values {
                    joined.push(',');
                    joined.push_str(&String::from_utf8_lossy(value.as_bytes()));
                }
                Some(Cow::Owned(joined))
            }
        }
    }

    /// Whether a header is present.
    pub fn has_header(&self, name: &str) -> bool {
        self.headers.contains_key(name)
    }

    /// A query parameter's value as sent (not percent-decoded, as Envoy compares it); the first
    /// occurrence wins, and a parameter without `=` has an empty value.
    pub fn query_param(&self, name: &str) -> Option<&'a str> {
        query_param(self.query?, name)
    }
}

/// A raw query parameter, as [`RequestHead::query_param`] reads it.
pub fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_value_that_is_not_ascii_is_still_present() {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-name", http::HeaderValue::from_bytes(b"caf\xc3\xa9").expect("value"));
        headers.insert("x-raw", http::HeaderValue::from_bytes(b"caf\xe9").expect("value"));
        let head = RequestHead::from_parts("GET", "a", "/", None, &headers);
        assert_eq!(head.header("x-name").as_deref(), Some("café"));
        assert_eq!(head.header("x-raw").as_deref(), Some("caf\u{fffd}"));
        assert!(head.has_header("x-raw"));
    }

    #[test]
    fn authority_comes_from_the_host_header_lower_cased() {
        let request = http::Request::builder().uri("/a?b=1").header("host", "Reviews:9080").body(()).unwrap();
        let (parts, ()) = request.into_parts();
        let head = RequestHead::new(&parts);
        assert_eq!((head.authority(), head.path(), head.query_param("b")), ("reviews:9080", "/a", Some("1")));
    }

    #[test]
    fn repeated_headers_join_with_commas() {
        let request = http::Request::builder().uri("/").header("x-a", "1").header("x-a", "2").body(()).unwrap();
        let (parts, ()) = request.into_parts();
        let head = RequestHead::new(&parts);
        assert_eq!(head.header("x-a").as_deref(), Some("1,2"));
        assert_eq!(head.header("x-b"), None);
    }

    #[test]
    fn query_parameters_are_raw() {
        assert_eq!(query_param("a=1&b=x%20y&c", "b"), Some("x%20y"));
        assert_eq!(query_param("a=1&c", "c"), Some(""));
        assert_eq!(query_param("a=1&a=2", "a"), Some("1"));
        assert_eq!(query_param("a=1", "z"), None);
    }
}
