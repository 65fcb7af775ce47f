//! Authentication pieces: `WWW-Authenticate` challenges, basic credentials, token responses
//! and the token cache.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::Deserialize;

use super::Credentials;

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    /// Lowercased: "basic", "bearer".
    pub scheme: String,
    /// Parameter names lowercased.
    pub params: HashMap<String, String>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

/// Parses a `WWW-Authenticate` value (RFC 7235): one or more challenges, each a scheme and
/// comma-separated `name=value` or `name="quoted value"` parameters.
pub(crate) fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    let b = header.as_bytes();
    let mut i = 0;
    let is_token = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&c);
    while i < b.len() {
        // Skip separators.
        while i < b.len() && (b[i] == b',' || b[i].is_ascii_whitespace()) {
            i += 1;
        }
        let start = i;
        while i < b.len() && is_token(b[i]) {
            i += 1;
        }
        if start == i {
            // Garbage: skip a byte so the loop ends.
            i += 1;
            continue;
        }
        let word = &header[start..i];
        let mut j = i;
        while j < b.len() && b[j] == b' ' {
            j += 1;
        }
        if j < b.len() && b[j] == b'=' {
            // A parameter of the current challenge (token68 values like "abc==" land here
            // too, harmlessly).
            j += 1;
            while j < b.len() && b[j] == b' ' {
                j += 1;
            }
            let mut value = String::new();
            if j < b.len() && b[j] == b'"' {
                j += 1;
                while j < b.len() && b[j] != b'"' {
                    if b[j] == b'\\' && j + 1 < b.len() {
                        j += 1;
                    }
                    // Copy one UTF-8 character.
                    let ch_len = utf8_len(b[j]);
                    value.push_str(header.get(j..j + ch_len).unwrap_or(""));
                    j += ch_len;
                }
                j += 1; // closing quote
            } else {
                let vs = j;
                while j < b.len() && b[j] != b',' && !b[j].is_ascii_whitespace() {
                    j += 1;
                }
                value.push_str(&header[vs..j]);
            }
            if let Some(c) = out.last_mut() {
                c.params.insert(word.to_ascii_lowercase(), value);
            }
            i = j;
        } else {
            out.push(Challenge {
                scheme: word.to_ascii_lowercase(),
                params: HashMap::new(),
            });
        }
    }
    out
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

/// `Basic base64(user:pass)`.
pub(crate) fn basic_header(c: &Credentials) -> String {
    format!("Basic {}", encode_basic(c))
}

/// base64(user:pass), as in auth headers and `auth.json`.
pub(crate) fn encode_basic(c: &Credentials) -> String {
    BASE64.encode(format!("{}:{}", c.username, c.password))
}

/// Inverse of [`encode_basic`].
pub(crate) fn decode_basic(s: &str) -> Result<Credentials, String> {
    let raw = BASE64
        .decode(s.trim())
        .map_err(|e| format!("auth is not base64: {e}"))?;
    let text = String::from_utf8(raw).map_err(|_| "auth is not utf-8".to_string())?;
    let (user, pass) = text
        .split_once(':')
        .ok_or_else(|| "auth is not user:password".to_string())?;
    Ok(Credentials {
        username: user.to_string(),
        password: pass.to_string(),
    })
}

/// A token server's answer (docker token spec; `access_token` is the OAuth2 name).
#[derive(Debug, Deserialize)]
pub(crate) struct TokenResponse {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    /// Seconds; the spec's default is 60.
    #[serde(default)]
    pub expires_in: Option<u64>,
}

impl TokenResponse {
    pub fn into_token(self) -> Option<(String, Duration)> {
        let t = self
            .token
            .filter(|t| !t.is_empty())
            .or(self.access_token.filter(|t| !t.is_empty()))?;
        Some((t, Duration::from_secs(self.expires_in.unwrap_or(60).max(1))))
    }
}

/// What we learned about the registry's authentication, shared by clones of a client.
#[derive(Default)]
pub(crate) struct AuthState {
    /// The registry asked for Basic: send credentials up front from now on.
    pub basic: bool,
    /// Bearer tokens by (repository, scope).
    tokens: HashMap<(String, String), (String, Instant)>,
}

/// Tokens are dropped this long before they expire, so a request does not race expiry.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);

impl AuthState {
    pub fn insert_token(&mut self, repository: &str, scope: &str, token: String, ttl: Duration) {
        let now = Instant::now();
        let expires = now
            + ttl
                .saturating_sub(EXPIRY_MARGIN)
                .max(Duration::from_secs(1));
        self.tokens.retain(|_, (_, exp)| *exp > now);
        self.tokens.insert(
            (repository.to_string(), scope.to_string()),
            (token, expires),
        );
    }

    /// A live token for `repository`, preferring the pull scope.
    pub fn token_for(&self, repository: &str) -> Option<&str> {
        let now = Instant::now();
        let pull = pull_scope(repository);
        let live = |((r, _), (_, exp)): &(&(String, String), &(String, Instant))| {
            r == repository && *exp > now
        };
        self.tokens
            .iter()
            .filter(live)
            .find(|((_, s), _)| *s == pull)
            .or_else(|| self.tokens.iter().find(live))
            .map(|(_, (t, _))| t.as_str())
    }
}

/// The scope asked of a token server to pull from `repository`.
pub(crate) fn pull_scope(repository: &str) -> String {
    format!("repository:{repository}:pull")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenge() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c[0].param("service"), Some("registry.docker.io"));
        assert_eq!(c[0].param("scope"), Some("repository:library/busybox:pull"));
    }

    #[test]
    fn parses_several_challenges_and_escapes() {
        let c = parse_challenges(
            r#"Basic realm="Registry \"x\", y", Bearer realm=https://a/t, service=s"#,
        );
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].param("realm"), Some(r#"Registry "x", y"#));
        assert_eq!(c[1].scheme, "bearer");
        assert_eq!(c[1].param("realm"), Some("https://a/t"));
        assert_eq!(c[1].param("service"), Some("s"));
        assert!(parse_challenges("").is_empty());
        assert_eq!(parse_challenges("Basic")[0].scheme, "basic");
    }

    #[test]
    fn basic_round_trip() {
        let c = Credentials {
            username: "user".into(),
            password: "p:ss wörd".into(),
        };
        assert_eq!(decode_basic(&encode_basic(&c)).unwrap(), c);
        assert_eq!(basic_header(&c), format!("Basic {}", encode_basic(&c)));
        assert!(decode_basic("!!!").is_err());
        assert!(decode_basic(&BASE64.encode("nocolon")).is_err());
    }

    #[test]
    fn token_cache_per_repository() {
        let mut s = AuthState::default();
        s.insert_token(
            "a/b",
            &pull_scope("a/b"),
            "t1".into(),
            Duration::from_secs(300),
        );
        s.insert_token(
            "c/d",
            "repository:c/d:pull,push",
            "t2".into(),
            Duration::from_secs(300),
        );
        assert_eq!(s.token_for("a/b"), Some("t1"));
        assert_eq!(s.token_for("c/d"), Some("t2"));
        assert_eq!(s.token_for("e/f"), None);
        let r: TokenResponse = serde_json::from_str(r#"{"access_token":"x"}"#).unwrap();
        assert_eq!(
            r.into_token().unwrap(),
            ("x".to_string(), Duration::from_secs(60))
        );
        let r: TokenResponse = serde_json::from_str(r#"{"token":""}"#).unwrap();
        assert!(r.into_token().is_none());
    }
}
