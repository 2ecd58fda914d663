//! Who may call the API and how: cross-site requests refused, optional bearer tokens, bounded
//! waits (request deadline, concurrent-request cap). Each check is an axum middleware that
//! [`super::api::router`] wires in front of the routes; each refusal is a JSON error
//! ([`ApiError`]) with its own code.
//!
//! A browser sends a cross-site `POST` with `Content-Type: text/plain` (or a form type) without
//! asking first (no CORS preflight), so a web page could book through the user's machine.
//! Two rules close that: a `POST` body must be `application/json` (which a browser only sends
//! cross-site after a preflight this server never approves), and a request whose `Origin` is
//! not explicitly allowed is refused before any handler runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, ORIGIN, TRANSFER_ENCODING, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use super::api::ApiError;

/// The environment variable holding API tokens, comma-separated (beside `--auth-tokens FILE`).
pub const TOKENS_ENV: &str = "CLICKSTAY_API_TOKENS";

/// The bearer tokens that may call `/v1` (at least one).
#[derive(Clone)]
pub struct Tokens(Arc<Vec<Vec<u8>>>);

impl std::fmt::Debug for Tokens {
    /// Never prints a token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} token(s))", self.0.len())
    }
}

impl Tokens {
    /// The tokens of `file` (one per line; blank lines and lines starting with `#` skipped)
    /// and of `env_value` (the content of [`TOKENS_ENV`], comma-separated); `None` when neither
    /// is given. A source given but holding no token is an error, not "no authentication".
    pub fn load(file: Option<&Path>, env_value: Option<&str>) -> Result<Option<Self>> {
        let mut tokens = Vec::new();
        if let Some(file) = file {
            let text =
                std::fs::read_to_string(file).with_context(|| format!("cannot read tokens file {}", file.display()))?;
            let before = tokens.len();
            let lines = text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#'));
            tokens.extend(lines.map(String::from));
            if tokens.len() == before {
                bail!("tokens file {} holds no token (one per line)", file.display());
            }
        }
        if let Some(value) = env_value {
            let before = tokens.len();
            tokens.extend(value.split(',').map(str::trim).filter(|token| !token.is_empty()).map(String::from));
            if tokens.len() == before {
                bail!("{TOKENS_ENV} is set but holds no token (comma-separated)");
            }
        }
        if let Some(bad) = tokens.iter().find(|token| token.chars().any(|c| c.is_whitespace() || c.is_control())) {
            bail!("an API token contains white space or a control character ({} bytes long)", bad.len());
        }
        Ok((!tokens.is_empty()).then(|| Self(Arc::new(tokens.into_iter().map(String::into_bytes).collect()))))
    }

    /// True when `presented` is one of the tokens. Every token is compared in full, whatever
    /// matches, so the time taken does not tell how much of a guess was right.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        self.0.iter().fold(false, |found, token| found | constant_time_eq(token, presented))
    }
}

/// Compares `expected` with `presented` in time that depends only on `expected.len()`.
fn constant_time_eq(expected: &[u8], presented: &[u8]) -> bool {
    let mut difference = (expected.len() != presented.len()) as u8;
    for (index, byte) in expected.iter().enumerate() {
        let other = presented.get(index).copied().unwrap_or(!*byte);
        difference |= std::hint::black_box(byte ^ other);
    }
    std::hint::black_box(difference) == 0
}

/// The checks of [`guard`]: allowed origins and the tokens (none: no authentication).
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Origins (`scheme://host[:port]`, as a browser sends them) whose requests are served.
    pub allow_origins: Vec<String>,
    pub tokens: Option<Tokens>,
}

impl Access {
    /// Refuses the configuration a server on `listen` must not run with: reachable from other
    /// machines and no token, so anyone who can reach the port could book and cancel.
    pub fn check_listen(&self, listen: std::net::SocketAddr) -> Result<()> {
        if self.tokens.is_none() && !listen.ip().is_loopback() {
            bail!(
                "refusing to listen on {listen} without authentication: it is not a loopback address, so anyone who \
                 can reach it could book and cancel reservations. Give API tokens (--auth-tokens FILE or \
                 {TOKENS_ENV}=TOKEN,...) or listen on a loopback address such as 127.0.0.1"
            );
        }
        Ok(())
    }
}

/// Refuses, in this order: an `Origin` not allowed (403), a `POST` body that is not JSON
/// (415), and on `/v1/...` a missing or wrong bearer token when tokens are set (401).
pub async fn guard(State(access): State<Arc<Access>>, request: Request, next: Next) -> Response {
    if let Some(origin) = request.headers().get(ORIGIN)
        && !access.allow_origins.iter().any(|allowed| origin.as_bytes() == allowed.as_bytes())
    {
        let shown = String::from_utf8_lossy(origin.as_bytes()).chars().take(100).collect::<String>();
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            format!("requests from origin `{shown}` are not allowed (see serve --allow-origin)"),
        )
        .into_response();
    }
    if request.method() == Method::POST && !json_or_no_body(request.headers()) {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "a request body must be JSON, sent with Content-Type: application/json",
        )
        .into_response();
    }
    if let Some(tokens) = &access.tokens
        && request.uri().path().starts_with("/v1/")
        && !bearer_of(request.headers()).is_some_and(|token| tokens.accepts(token))
    {
        let mut response = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this server requires an API token: send Authorization: Bearer TOKEN",
        )
        .into_response();
        response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    next.run(request).await
}

/// True when the request has no body and no content type, or declares `application/json`
/// (parameters such as `; charset=utf-8` allowed).
fn json_or_no_body(headers: &HeaderMap) -> bool {
    match headers.get(CONTENT_TYPE) {
        Some(value) => {
            let essence = value.as_bytes().split(|b| *b == b';').next().unwrap_or_default();
            essence.trim_ascii().eq_ignore_ascii_case(b"application/json")
        }
        None => {
            let empty = headers.get(CONTENT_LENGTH).is_none_or(|length| length.as_bytes() == b"0");
            empty && !headers.contains_key(TRANSFER_ENCODING)
        }
    }
}

/// The token of an `Authorization: Bearer TOKEN` header.
fn bearer_of(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| token.trim_ascii())
}

/// Bounds on what one request may take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request still unanswered after this answers 503 `timeout`.
    pub request_timeout: Duration,
    /// Requests served at once; one more answers 503 `busy` at once.
    pub max_concurrent: usize,
}

/// Defaults of [`Limits`] (the flags of `rooms serve` show them).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_CONCURRENT: usize = 1024;

impl Default for Limits {
    fn default() -> Self {
        Self { request_timeout: DEFAULT_REQUEST_TIMEOUT, max_concurrent: DEFAULT_MAX_CONCURRENT }
    }
}

/// What [`limit`] shares between requests.
#[derive(Clone)]
pub struct Bounds {
    request_timeout: Duration,
    permits: Arc<Semaphore>,
    max_concurrent: usize,
}

impl From<Limits> for Bounds {
    fn from(limits: Limits) -> Self {
        Self {
            request_timeout: limits.request_timeout,
            permits: Arc::new(Semaphore::new(limits.max_concurrent)),
            max_concurrent: limits.max_concurrent,
        }
    }
}

/// Answers 503 `busy` when [`Limits::max_concurrent`] requests are already being served, and
/// 503 `timeout` when the handler has not answered within [`Limits::request_timeout`] (the
/// handler's future is dropped then).
pub async fn limit(State(bounds): State<Bounds>, request: Request, next: Next) -> Response {
    let Ok(_permit) = bounds.permits.clone().try_acquire_owned() else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            format!("the server is already serving {} requests; retry shortly", bounds.max_concurrent),
        )
        .into_response();
    };
    match tokio::time::timeout(bounds.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(timeout = ?bounds.request_timeout, "request timed out");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                format!("no answer within the request timeout of {:?}; retry later", bounds.request_timeout),
            )
            .into_response()
        }
    }
}

/// The tokens named by `serve`'s flags and the environment.
pub fn tokens_from(file: Option<&PathBuf>) -> Result<Option<Tokens>> {
    let env_value = std::env::var(TOKENS_ENV).ok();
    Tokens::load(file.map(PathBuf::as_path), env_value.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_in_full() {
        let tokens = Tokens::load(None, Some("alpha, beta-2")).unwrap().unwrap();
        assert!(tokens.accepts(b"alpha"));
        assert!(tokens.accepts(b"beta-2"));
        for wrong in [&b""[..], b"alph", b"alphaa", b"beta", b"ALPHA", b"alpha,beta-2"] {
            assert!(!tokens.accepts(wrong), "{:?}", String::from_utf8_lossy(wrong));
        }
    }

    #[test]
    fn empty_token_sources_are_errors_and_absent_ones_mean_no_authentication() {
        assert!(Tokens::load(None, None).unwrap().is_none());
        assert!(Tokens::load(None, Some(" , ")).is_err());
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "# only a comment\n\n").unwrap();
        assert!(Tokens::load(Some(file.path()), None).is_err());
        std::fs::write(file.path(), "# ops\n t1 \n\nt2\n").unwrap();
        let tokens = Tokens::load(Some(file.path()), None).unwrap().unwrap();
        assert!(tokens.accepts(b"t1") && tokens.accepts(b"t2") && !tokens.accepts(b"# ops"));
    }

    #[test]
    fn content_types_and_bearer_headers() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (key, value) in pairs {
                map.insert(*key, HeaderValue::from_static(value));
            }
            map
        };
        assert!(json_or_no_body(&headers(&[])));
        assert!(json_or_no_body(&headers(&[("content-length", "0")])));
        assert!(json_or_no_body(&headers(&[("content-type", "Application/JSON; charset=utf-8")])));
        assert!(!json_or_no_body(&headers(&[("content-type", "text/plain")])));
        assert!(!json_or_no_body(&headers(&[("content-length", "12")])));
        assert!(!json_or_no_body(&headers(&[("transfer-encoding", "chunked")])));
        assert_eq!(bearer_of(&headers(&[("authorization", "bearer  tok ")])), Some(&b"tok"[..]));
        assert_eq!(bearer_of(&headers(&[("authorization", "Basic dG9r")])), None);
    }

    #[test]
    fn only_loopback_listens_without_tokens() {
        let open = Access::default();
        assert!(open.check_listen("127.0.0.1:8080".parse().unwrap()).is_ok());
        assert!(open.check_listen("[::1]:8080".parse().unwrap()).is_ok());
        let refused = open.check_listen("0.0.0.0:8080".parse().unwrap()).unwrap_err().to_string();
        assert!(refused.contains("not a loopback address") && refused.contains("--auth-tokens"), "{refused}");
        let tokens = Tokens::load(None, Some("t")).unwrap();
        assert!(Access { tokens, ..Access::default() }.check_listen("0.0.0.0:8080".parse().unwrap()).is_ok());
    }
}
