//! The cluster token: one secret per cluster that every caller of every
//! component must present (ARCHITECTURE §14).
//!
//! - gRPC: the `authorization: Bearer <token>` metadata of every call, checked
//!   by [`GuardLayer`] in front of every service of a server, so a method
//!   added later is covered without anyone remembering to.
//! - REST: the same header on every route under `/api` (`rest::auth`).
//! - The worker socket: the token in the worker's hello.
//!
//! Processes find the token, in order: given explicitly (a flag or
//! [`crate::ConnectOptions::token`]); known for the address they connect to
//! (a local cluster this process started, or the record `shoal up` and
//! `shoal head` write, mode 0600); `SHOAL_TOKEN_FILE`; `SHOAL_TOKEN`. Workers
//! and entrypoint drivers get it from their raylet in `SHOAL_TOKEN`.
//!
//! A token is never logged, never put in a status, event or error message:
//! [`Token`]'s `Debug` prints a placeholder and it has no `Display`.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use crate::error::Error;

/// Environment variable holding the token.
pub const ENV_TOKEN: &str = "SHOAL_TOKEN";
/// Environment variable naming a file that holds the token.
pub const ENV_TOKEN_FILE: &str = "SHOAL_TOKEN_FILE";

/// What a caller without the token is told (it names no secret).
pub const UNAUTHENTICATED: &str = "this cluster requires its token: pass it with --token-file or SHOAL_TOKEN \
     (clients on the machine of a local cluster find it by themselves, `shoal token` prints it; on Kubernetes \
     it is in the TaskCluster's token Secret)";

/// A cluster's secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Arc<str>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// A token from text (surrounding whitespace dropped). It must be
    /// non-empty printable ASCII without spaces, so it fits an HTTP header.
    pub fn new(text: &str) -> Result<Token, Error> {
        let t = text.trim();
        if t.is_empty() {
            return Err(Error::Invalid("the cluster token is empty".into()));
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::Invalid("the cluster token must be printable ASCII without spaces".into()));
        }
        Ok(Token(t.into()))
    }

    /// A new random token: 32 bytes from the kernel's CSPRNG, in hex.
    pub fn generate() -> Result<Token, Error> {
        let mut bytes = [0u8; 32];
        let mut f = std::fs::File::open("/dev/urandom").map_err(|e| Error::io("opening /dev/urandom", e))?;
        std::io::Read::read_exact(&mut f, &mut bytes).map_err(|e| Error::io("reading /dev/urandom", e))?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Token(hex.into()))
    }

    /// The token in the file at `path`.
    pub fn from_file(path: &Path) -> Result<Token, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading the token file {}", path.display()), e))?;
        Token::new(&text).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
    }

    /// Writes the token to `path`, readable by this user only (mode 0600).
    pub fn write_file(&self, path: &Path) -> Result<(), Error> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        f.write_all(self.0.as_bytes()).map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }

    /// The secret itself, for the few places that must hand it on (a
    /// child's environment, a header).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `given` is this token, in time independent of where they differ.
    pub fn matches(&self, given: &[u8]) -> bool {
        constant_time_eq(given, self.0.as_bytes())
    }

    /// Whether an `Authorization` header value carries this token as a bearer token.
    pub fn matches_bearer(&self, header: &[u8]) -> bool {
        let Ok(value) = std::str::from_utf8(header) else { return false };
        let Some((scheme, given)) = value.trim().split_once(' ') else { return false };
        scheme.eq_ignore_ascii_case("bearer") && self.matches(given.trim().as_bytes())
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

/// Compares in time independent of where the inputs differ (the length of
/// the expected token is not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= std::hint::black_box(x ^ y);
    }
    diff == 0
}

/// The token the environment gives: `SHOAL_TOKEN_FILE`, else `SHOAL_TOKEN`.
pub fn from_env() -> Result<Option<Token>, Error> {
    if let Some(f) = std::env::var_os(ENV_TOKEN_FILE).filter(|f| !f.is_empty()) {
        return Token::from_file(Path::new(&f)).map(Some);
    }
    match std::env::var(ENV_TOKEN) {
        Ok(t) if !t.trim().is_empty() => {
            Token::new(&t).map(Some).map_err(|e| Error::Invalid(format!("{ENV_TOKEN}: {e}")))
        }
        _ => Ok(None),
    }
}

/// Tokens of the clusters this process started, by the addresses of their
/// components (see [`remember`]).
static KNOWN: Mutex<Vec<(String, Token)>> = Mutex::new(Vec::new());

/// Records that `addresses` (gRPC `host:port` or REST `http://host:port`)
/// belong to a cluster with `token`, so this process's clients find it.
pub fn remember(addresses: &[String], token: &Token) {
    let mut known = KNOWN.lock().unwrap_or_else(|p| p.into_inner());
    for a in addresses.iter().filter(|a| !a.is_empty()) {
        let a = normalize(a);
        known.retain(|(k, _)| *k != a);
        known.push((a, token.clone()));
    }
}

/// Forgets what [`remember`] recorded for `addresses`.
pub fn forget(addresses: &[String]) {
    let gone: Vec<String> = addresses.iter().map(|a| normalize(a)).collect();
    KNOWN.lock().unwrap_or_else(|p| p.into_inner()).retain(|(k, _)| !gone.contains(k));
}

fn normalize(addr: &str) -> String {
    addr.trim().trim_start_matches("http://").trim_start_matches("https://").trim_end_matches('/').to_string()
}

/// The token to present to `addr` when none is given: the one known for
/// that address, else the environment's.
pub fn for_address(addr: &str) -> Result<Option<Token>, Error> {
    let a = normalize(addr);
    if let Some((_, t)) = KNOWN.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|(k, _)| *k == a) {
        return Ok(Some(t.clone()));
    }
    if let Some(rec) = crate::discovery::find() {
        if rec.addresses().iter().any(|k| normalize(k) == a) {
            if let Some(t) = rec.token.as_deref() {
                return Token::new(t).map(Some);
            }
        }
    }
    from_env()
}

/// Adds the token to every call of a gRPC client.
#[derive(Clone, Debug)]
pub struct Credentials {
    header: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Credentials {
    /// Credentials presenting `token` (none: calls go without).
    pub fn new(token: Option<&Token>) -> Credentials {
        // A token is printable ASCII (checked by `Token::new`), so it parses.
        let header = token.and_then(|t| t.bearer().parse().ok()).map(|mut v: tonic::metadata::MetadataValue<_>| {
            v.set_sensitive(true);
            v
        });
        Credentials { header }
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    }
}

/// A gRPC request body limit for one method: what a caller can make the
/// server buffer in a call. Streaming requests are bounded per message by
/// the service's decoding limit instead.
pub fn request_limit(path: &str) -> Option<usize> {
    use crate::net::MAX_MESSAGE_BYTES as VALUE;
    const CONTROL: usize = 16 << 20;
    const RECORDS: usize = 64 << 20;
    Some(match path.strip_prefix("/shoal.v1.") {
        // Values travel in these: as large as one object may be.
        Some("Raylet/Put" | "Raylet/ExecuteTasks" | "Raylet/ReportResults") => VALUE,
        // Streams: bounded per message.
        Some("Raylet/Session" | "Gcs/Heartbeat") => return None,
        // Job specs, key-value entries, task events and log chunks.
        Some("Gcs/RegisterJob" | "Gcs/KvPut" | "Gcs/ReportTaskEvents" | "Gcs/AppendJobLog") => RECORDS,
        // Ids, small records and queries.
        Some(
            "Raylet/GetObjects"
            | "Raylet/WaitObjects"
            | "Raylet/GetObjectStatus"
            | "Raylet/UpdateBorrows"
            | "Raylet/PullObject"
            | "Raylet/FreeObjects"
            | "Raylet/NodeStats"
            | "Raylet/CancelTask"
            | "Gcs/RegisterNode"
            | "Gcs/GetNodes"
            | "Gcs/FinishJob"
            | "Gcs/ListJobs"
            | "Gcs/KvGet"
            | "Gcs/KvDel"
            | "Gcs/KvList",
        ) => CONTROL,
        // Unknown methods answer UNIMPLEMENTED; nothing of theirs is read.
        _ => 4 << 10,
    })
}

/// Checks the token of every request to a gRPC server (all its services)
/// and bounds each request body by [`request_limit`].
#[derive(Clone, Debug)]
pub struct GuardLayer {
    token: Option<Token>,
}

impl GuardLayer {
    /// A guard requiring `token` (none: calls are not authenticated).
    pub fn new(token: Option<Token>) -> GuardLayer {
        GuardLayer { token }
    }
}

impl<S> tower_layer::Layer<S> for GuardLayer {
    type Service = Guarded<S>;
    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded { inner, token: self.token.clone() }
    }
}

/// A gRPC service behind a [`GuardLayer`].
#[derive(Clone, Debug)]
pub struct Guarded<S> {
    inner: S,
    token: Option<Token>,
}

type Body = tonic::body::Body;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S> tower_service::Service<http::Request<Body>> for Guarded<S>
where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if let Some(token) = &self.token {
            let ok = req.headers().get(http::header::AUTHORIZATION).is_some_and(|v| token.matches_bearer(v.as_bytes()));
            if !ok {
                let status = tonic::Status::unauthenticated(UNAUTHENTICATED);
                return Box::pin(std::future::ready(Ok(status.into_http())));
            }
        }
        let path = req.uri().path().to_string();
        let req = match request_limit(&path) {
            Some(limit) => req.map(|body| {
                use http_body_util::BodyExt;
                Body::new(http_body_util::Limited::new(body, limit).map_err(move |e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        tonic::Status::resource_exhausted(format!("a {path} request is larger than {limit} bytes"))
                    } else {
                        tonic::Status::from_error(e)
                    }
                }))
            }),
            None => req,
        };
        Box::pin(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let t = Token::new("s3cret").unwrap();
        assert!(t.matches_bearer(b"Bearer s3cret"));
        assert!(t.matches_bearer(b"bearer s3cret "));
        assert!(!t.matches_bearer(b"Bearer s3cres"));
        assert!(!t.matches_bearer(b"Bearer s3cre"));
        assert!(!t.matches_bearer(b"Basic s3cret"));
        assert!(!t.matches_bearer(b"s3cret"));
        assert!(!t.matches_bearer(&[0xff, b' ', b's']));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    #[test]
    fn tokens_are_random_header_safe_and_never_printed() {
        let (a, b) = (Token::generate().unwrap(), Token::generate().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 64);
        assert_eq!(format!("{a:?}"), "Token(<redacted>)");
        assert!(Token::new("  ").is_err());
        assert!(Token::new("two words").is_err());
        assert_eq!(Token::new(" abc\n").unwrap().expose(), "abc");
        let c = Credentials::new(Some(&a));
        assert!(!format!("{c:?}").contains(a.expose()), "credentials print no secret");
    }

    #[test]
    fn every_grpc_method_has_a_request_limit_of_its_own() {
        // A new RPC must be given a limit here: the fallback is for paths
        // that do not exist.
        for m in shoal_proto::METHODS {
            let limit = request_limit(m.path);
            if m.client_streaming {
                assert_eq!(limit, None, "{} streams: its messages are bounded one by one", m.path);
            } else {
                assert!(limit.is_some_and(|l| l > 4 << 10), "{} has no request limit of its own", m.path);
            }
        }
    }

    #[test]
    fn a_token_file_is_private_and_read_back() {
        let path = std::env::temp_dir().join(format!("shoal-token-test-{}", fastrand::u64(..)));
        let t = Token::generate().unwrap();
        t.write_file(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(Token::from_file(&path).unwrap(), t);
        std::fs::write(&path, "\n").unwrap();
        let e = Token::from_file(&path).unwrap_err().to_string();
        assert!(e.contains("empty") && e.contains(&path.display().to_string()), "{e}");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn addresses_a_process_started_are_known_with_or_without_a_scheme() {
        let t = Token::generate().unwrap();
        remember(&["127.0.0.1:1".into(), "http://127.0.0.1:2".into()], &t);
        assert_eq!(for_address("http://127.0.0.1:1").unwrap(), Some(t.clone()));
        assert_eq!(for_address("127.0.0.1:2").unwrap(), Some(t.clone()));
        forget(&["127.0.0.1:1".into(), "127.0.0.1:2".into()]);
        assert_ne!(for_address("127.0.0.1:1").unwrap(), Some(t));
    }
}
