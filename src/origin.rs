//! Which `Origin` and `Host` header values a listener accepts: the defence against cross-site
//! requests (a web page posting to the push API) and against DNS rebinding (a page whose name
//! resolves to 127.0.0.1 reading a loopback listener). Pure values, built once from the config
//! and matched per request; nothing here knows HTTP or the push API, so the WebSocket handshake
//! can use the same policies.

use std::net::{Ipv4Addr, Ipv6Addr};

/// A pattern or header value that is not of the form these policies understand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}`: {reason}")]
pub struct PatternError {
    /// The value as given.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

fn pattern_error(value: &str, reason: &str) -> PatternError {
    PatternError {
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

/// How an allowed origin's host is matched.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// Exactly this host (lowercase).
    Exact(String),
    /// Any host that ends in `.suffix`, with at least one label before it (`*.example.com`
    /// matches `a.example.com` and `a.b.example.com`, not `example.com`).
    Subdomain(String),
}

/// One allowed origin: scheme, host pattern and port (the scheme's default when not given).
#[derive(Debug, Clone, PartialEq, Eq)]
struct OriginPattern {
    scheme: String,
    host: HostPattern,
    port: Option<u16>,
}

/// The parts of a serialized origin (`scheme://host[:port]`), lowercased, with the scheme's
/// default port filled in for http and https.
struct OriginParts<'a> {
    scheme: String,
    host: &'a str,
    port: Option<u16>,
}

/// Split `scheme://host[:port]`; `None` when the text is not of that form (a path, a user
/// part, an empty host or a bad port).
fn split_origin(text: &str) -> Option<OriginParts<'_>> {
    let (scheme, authority) = text.split_once("://")?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok || authority.contains(['/', '?', '#', '@']) {
        return None;
    }
    let (host, port) = split_host(authority)?;
    if host.is_empty() {
        return None;
    }
    let scheme = scheme.to_ascii_lowercase();
    let port = port.or(match scheme.as_str() {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    });
    Some(OriginParts { scheme, host, port })
}

/// Split `host[:port]` or `[v6]:port` into the host (brackets kept) and the port; `None` for a
/// malformed port or bracket.
fn split_host(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, rest) = if authority.starts_with('[') {
        let end = authority.find(']')? + 1;
        authority.split_at(end)
    } else {
        match authority.find(':') {
            Some(colon) => authority.split_at(colon),
            None => (authority, ""),
        }
    };
    let port = match rest {
        "" => None,
        _ => {
            let digits = rest.strip_prefix(':')?;
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some(digits.parse().ok()?)
        }
    };
    Some((host, port))
}

/// The origins whose requests are allowed: exact origins (`https://app.example.com`) and
/// subdomain patterns (`https://*.example.com`). An empty policy allows no origin at all.
/// Matching is case-insensitive and treats `:443` on https (`:80` on http) as no port, as
/// browsers serialize origins without their default port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginPolicy {
    allowed: Vec<OriginPattern>,
}

impl OriginPolicy {
    /// Build the policy from its patterns; the error names the first pattern that is not
    /// `scheme://host[:port]` or `scheme://*.domain[:port]`.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, PatternError> {
        let allowed = patterns
            .iter()
            .map(|p| Self::pattern(p.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(Self { allowed })
    }

    fn pattern(text: &str) -> Result<OriginPattern, PatternError> {
        if text.ends_with('/') {
            return Err(pattern_error(
                text,
                "an origin has no path: drop the trailing `/`",
            ));
        }
        let parts = split_origin(text).ok_or_else(|| {
            pattern_error(
                text,
                "expected an origin such as https://app.example.com or https://*.example.com",
            )
        })?;
        let host = parts.host.to_ascii_lowercase();
        let host = match host.strip_prefix("*.") {
            Some(suffix) if !suffix.is_empty() && !suffix.contains('*') => {
                HostPattern::Subdomain(suffix.to_owned())
            }
            _ if host.contains('*') => {
                return Err(pattern_error(
                    text,
                    "`*` may only stand for the leftmost labels, as in https://*.example.com",
                ))
            }
            _ => HostPattern::Exact(host),
        };
        Ok(OriginPattern {
            scheme: parts.scheme,
            host,
            port: parts.port,
        })
    }

    /// Whether a request with this `Origin` header value is allowed. `null` and malformed
    /// values never are.
    pub fn allows(&self, origin: &str) -> bool {
        let Some(parts) = split_origin(origin.trim()) else {
            return false;
        };
        let host = parts.host.to_ascii_lowercase();
        self.allowed.iter().any(|pattern| {
            pattern.scheme == parts.scheme
                && pattern.port == parts.port
                && match &pattern.host {
                    HostPattern::Exact(exact) => *exact == host,
                    HostPattern::Subdomain(suffix) => host
                        .strip_suffix(suffix.as_str())
                        .and_then(|label| label.strip_suffix('.'))
                        .is_some_and(|label| !label.is_empty()),
                }
        })
    }
}

/// Why a request's `Origin` was refused by an [`OriginRule`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginRefusal {
    /// The rule requires an `Origin` header (`require_origin`) and the request carries none.
    #[error("an `Origin` header is required here (require_origin)")]
    Missing,
    /// The `Origin` is present and neither listed nor (without a list) the page's own.
    #[error("origin `{origin}` is not allowed: add it to {key}")]
    Foreign {
        /// The refused header value.
        origin: String,
        /// The config key whose list refused it.
        key: String,
    },
}

/// Which browser origins a listener accepts, as one config list decides: the listed origins
/// (exact and `*.domain` patterns, and `*` for any origin where the rule honours it), or, with
/// no list configured, only a page's own origin (its host and port are the request's `Host`).
/// A request without `Origin` comes from a program, not a browser page, and passes unless the
/// rule requires the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginRule {
    /// The listed origins; `None` when no list is configured (same origin only).
    listed: Option<OriginPolicy>,
    /// Whether `*` was listed (and honoured): every origin passes.
    any: bool,
    /// Whether a request without an `Origin` header is refused.
    require: bool,
    /// The config key the list comes from, named in refusals (`server.allowed_origins`).
    key: String,
}

impl OriginRule {
    /// Build the rule from an optional list. `*` means any origin when `honour_any` is set and
    /// is refused otherwise. The error carries the index of the first bad entry.
    pub fn new<S: AsRef<str>>(
        list: Option<&[S]>,
        honour_any: bool,
        require: bool,
        key: &str,
    ) -> Result<Self, (usize, PatternError)> {
        let mut any = false;
        let mut patterns = Vec::new();
        for (i, entry) in list.unwrap_or_default().iter().enumerate() {
            let entry = entry.as_ref();
            if entry == "*" {
                if !honour_any {
                    return Err((
                        i,
                        pattern_error(entry, "the push API never allows every origin"),
                    ));
                }
                any = true;
            } else {
                OriginPolicy::new(&[entry]).map_err(|e| (i, e))?;
                patterns.push(entry);
            }
        }
        Ok(Self {
            listed: list.map(|_| OriginPolicy::new(&patterns).expect("each entry was checked")),
            any,
            require,
            key: key.to_owned(),
        })
    }

    /// The same rule read from another key (a route's list inherited by the push API).
    pub fn without_any(mut self, key: &str) -> Self {
        self.any = false;
        self.key = key.to_owned();
        self
    }

    /// Check a request's `Origin` header values against the rule; `host` is its `Host`
    /// header, which a page's own origin matches when no list is configured.
    pub fn check<'a>(
        &self,
        origins: impl IntoIterator<Item = &'a str>,
        host: Option<&str>,
    ) -> Result<(), OriginRefusal> {
        let mut seen = false;
        for origin in origins {
            seen = true;
            let allowed = self.any
                || match &self.listed {
                    Some(policy) => policy.allows(origin),
                    None => host.is_some_and(|host| same_origin(origin, host)),
                };
            if !allowed {
                return Err(OriginRefusal::Foreign {
                    origin: origin.to_owned(),
                    key: self.key.clone(),
                });
            }
        }
        if self.require && !seen {
            return Err(OriginRefusal::Missing);
        }
        Ok(())
    }
}

/// Whether `origin` names the host and port of the `Host` header `host` (a `Host` without a
/// port means the origin scheme's default port).
pub(crate) fn same_origin(origin: &str, host: &str) -> bool {
    let (Some(origin), Some((host, port))) = (split_origin(origin.trim()), split_host(host.trim()))
    else {
        return false;
    };
    let port = port.or(match origin.scheme.as_str() {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    });
    origin.host.eq_ignore_ascii_case(host) && origin.port == port
}

/// The `Host` header values a listener answers. On a loopback listener only loopback names
/// (`127.0.0.0/8` literals, `[::1]`, `localhost`) and the configured names are allowed, so a
/// page on another name that resolves to 127.0.0.1 (DNS rebinding) is refused; on any other
/// listener the configured names, when there are some, and anything otherwise. The port of a
/// `Host` value is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPolicy {
    /// Whether loopback names are allowed and, with `allowed` empty, the only ones.
    loopback: bool,
    /// Configured host names and IP literals, lowercase, without port.
    allowed: Vec<String>,
}

impl HostPolicy {
    /// Build the policy for a listener; the error names the first entry that is not a host
    /// name or IP literal without port.
    pub fn new<S: AsRef<str>>(
        listener_is_loopback: bool,
        allowed: &[S],
    ) -> Result<Self, PatternError> {
        let allowed = allowed
            .iter()
            .map(|entry| {
                let entry = entry.as_ref();
                match split_host(entry) {
                    Some((host, None))
                        if !host.is_empty()
                            && !host.contains(['/', '*', '@'])
                            && !host.contains(char::is_whitespace) =>
                    {
                        Ok(host.to_ascii_lowercase())
                    }
                    Some((_, Some(_))) => Err(pattern_error(
                        entry,
                        "give the host name without a port (any port is accepted)",
                    )),
                    _ => Err(pattern_error(
                        entry,
                        "expected a host name or IP literal such as push.internal or 10.0.0.5",
                    )),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            loopback: listener_is_loopback,
            allowed,
        })
    }

    /// Whether a request with this `Host` header value is answered.
    pub fn allows(&self, host_header: &str) -> bool {
        if !self.loopback && self.allowed.is_empty() {
            return true;
        }
        let Some((host, _)) = split_host(host_header.trim()) else {
            return false;
        };
        let host = host.to_ascii_lowercase();
        (self.loopback && is_loopback_name(&host)) || self.allowed.contains(&host)
    }
}

/// `localhost`, an IPv4 literal in 127.0.0.0/8, or `[::1]`.
fn is_loopback_name(host: &str) -> bool {
    if host == "localhost" {
        return true;
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback());
    }
    host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins(patterns: &[&str]) -> OriginPolicy {
        OriginPolicy::new(patterns).unwrap()
    }

    #[test]
    fn an_empty_origin_policy_allows_nothing() {
        let policy = origins(&[]);
        assert!(!policy.allows("https://app.example.com"));
        assert!(!policy.allows("null"));
    }

    #[test]
    fn exact_origins_match_scheme_host_and_port() {
        let policy = origins(&["https://app.example.com", "http://localhost:3000"]);
        assert!(policy.allows("https://app.example.com"));
        assert!(policy.allows("HTTPS://App.Example.com"));
        assert!(policy.allows("https://app.example.com:443"));
        assert!(policy.allows("http://localhost:3000"));
        assert!(!policy.allows("http://app.example.com"));
        assert!(!policy.allows("https://app.example.com:8443"));
        assert!(!policy.allows("https://app.example.com.evil.net"));
        assert!(!policy.allows("https://evil.app.example.com"));
        assert!(!policy.allows("http://localhost"));
        assert!(!policy.allows("http://localhost:3001"));
        assert!(!policy.allows("null"));
        assert!(!policy.allows("https://app.example.com/path"));
    }

    #[test]
    fn subdomain_patterns_need_a_label_before_the_domain() {
        let policy = origins(&["https://*.example.com"]);
        assert!(policy.allows("https://a.example.com"));
        assert!(policy.allows("https://a.b.example.com"));
        assert!(!policy.allows("https://example.com"));
        assert!(!policy.allows("https://.example.com"));
        assert!(!policy.allows("https://evilexample.com"));
        assert!(!policy.allows("https://a.example.com.evil.net"));
        assert!(!policy.allows("http://a.example.com"));
    }

    #[test]
    fn malformed_origin_patterns_are_refused() {
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://",
            "https://*",
            "https://a.*.example.com",
            "*",
            "https://app.example.com:http",
            "https://user@app.example.com",
        ] {
            let err = OriginPolicy::new(&[bad]).unwrap_err();
            assert_eq!(err.value, bad);
        }
    }

    #[test]
    fn a_loopback_listener_answers_loopback_names_only() {
        let policy = HostPolicy::new::<&str>(true, &[]).unwrap();
        for good in [
            "127.0.0.1",
            "127.0.0.1:8081",
            "127.0.0.2:9",
            "127.255.0.1",
            "localhost",
            "LOCALHOST:8081",
            "[::1]",
            "[::1]:8081",
        ] {
            assert!(policy.allows(good), "{good}");
        }
        for bad in [
            "evil.example.com",
            "evil.example.com:8081",
            "10.0.0.5",
            "128.0.0.1",
            "[::2]",
            "localhost.evil.net",
            "127.0.0.1.evil.net",
            "127.0.0.1:x",
            "",
        ] {
            assert!(!policy.allows(bad), "{bad}");
        }
    }

    #[test]
    fn configured_hosts_add_to_loopback_and_restrict_other_listeners() {
        let local = HostPolicy::new(true, &["Push.Internal"]).unwrap();
        assert!(local.allows("push.internal:8081"));
        assert!(local.allows("127.0.0.1"));
        assert!(!local.allows("other.internal"));

        let open = HostPolicy::new::<&str>(false, &[]).unwrap();
        assert!(open.allows("anything.example.com"));

        let public = HostPolicy::new(false, &["push.internal", "10.0.0.5", "[fd00::1]"]).unwrap();
        assert!(public.allows("push.internal"));
        assert!(public.allows("10.0.0.5:8081"));
        assert!(public.allows("[fd00::1]:8081"));
        assert!(!public.allows("127.0.0.1"));
        assert!(!public.allows("evil.example.com"));
    }

    #[test]
    fn malformed_host_entries_are_refused() {
        for bad in [
            "push.internal:8081",
            "",
            "http://push.internal",
            "*.internal",
        ] {
            let err = HostPolicy::new(true, &[bad]).unwrap_err();
            assert_eq!(err.value, bad);
        }
    }

    fn rule(list: Option<&[&str]>, require: bool) -> OriginRule {
        OriginRule::new(list, true, require, "server.allowed_origins").unwrap()
    }

    #[test]
    fn without_a_list_only_the_pages_own_origin_passes() {
        let rule = rule(None, false);
        assert!(rule
            .check(["http://127.0.0.1:8080"], Some("127.0.0.1:8080"))
            .is_ok());
        assert!(rule
            .check(["https://Hub.Example.com"], Some("hub.example.com"))
            .is_ok());
        assert!(rule
            .check(["http://hub.example.com"], Some("hub.example.com:80"))
            .is_ok());
        let refused = rule.check(["http://evil.example"], Some("127.0.0.1:8080"));
        assert_eq!(
            refused.unwrap_err().to_string(),
            "origin `http://evil.example` is not allowed: add it to server.allowed_origins"
        );
        assert!(rule
            .check(["http://127.0.0.1:8081"], Some("127.0.0.1:8080"))
            .is_err());
        assert!(rule
            .check(["https://hub.example.com"], Some("hub.example.com:80"))
            .is_err());
        assert!(rule.check(["null"], Some("127.0.0.1:8080")).is_err());
        assert!(rule.check(["http://127.0.0.1:8080"], None).is_err());
        assert!(
            rule.check([], None).is_ok(),
            "no Origin: not a browser page"
        );
    }

    #[test]
    fn a_list_replaces_the_same_origin_default() {
        let rule = rule(
            Some(&["https://*.example.com", "http://localhost:3000"]),
            false,
        );
        assert!(rule
            .check(["https://app.example.com"], Some("ws.example.net"))
            .is_ok());
        assert!(rule.check(["http://localhost:3000"], None).is_ok());
        assert!(rule
            .check(["http://ws.example.net"], Some("ws.example.net"))
            .is_err());
        assert!(rule
            .check(["https://app.example.com", "http://evil.example"], None)
            .is_err());
        let none =
            OriginRule::new::<&str>(Some(&[]), true, false, "routes[0].allowed_origins").unwrap();
        assert!(none.check(["http://a.example"], Some("a.example")).is_err());
        assert!(none.check([], None).is_ok());
    }

    #[test]
    fn a_star_allows_every_origin_where_honoured() {
        let any = rule(Some(&["*"]), false);
        assert!(any.check(["http://evil.example"], None).is_ok());
        let err = OriginRule::new(
            Some(&["https://a.example", "*"]),
            false,
            false,
            "push.allowed_origins",
        )
        .unwrap_err();
        assert_eq!(err.0, 1);
        let inherited = any.without_any("push.allowed_origins");
        assert!(inherited.check(["http://evil.example"], None).is_err());
        let err = OriginRule::new(Some(&["app.example.com"]), true, false, "x").unwrap_err();
        assert_eq!((err.0, err.1.value.as_str()), (0, "app.example.com"));
    }

    #[test]
    fn a_required_origin_refuses_requests_without_one() {
        let rule = rule(Some(&["https://app.example.com"]), true);
        assert_eq!(rule.check([], None).unwrap_err(), OriginRefusal::Missing);
        assert!(rule.check(["https://app.example.com"], None).is_ok());
        assert!(rule
            .check([], None)
            .unwrap_err()
            .to_string()
            .contains("require_origin"));
    }
}
