//! Building gRPC servers and channels the same way everywhere: TCP_NODELAY on
//! every connection, HTTP/2 windows large enough to stream objects at memory
//! speed over loopback, message limits that admit large values, the cluster
//! token checked on every call a server gets (`crate::auth::GuardLayer`)
//! and presented on every call a channel makes.

use std::net::SocketAddr;
use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Endpoint, Server};

use crate::auth::{Credentials, GuardLayer, Token};
use crate::error::Error;

/// A channel presenting the cluster token on every call.
pub type Channel = InterceptedService<tonic::transport::Channel, Credentials>;

/// A server whose every service is behind the token check.
pub type GuardedServer = Server<tower_layer::Stack<GuardLayer, tower_layer::Identity>>;

/// Most concurrent HTTP/2 streams (calls) one connection may open.
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Largest header block a caller may send.
const MAX_HEADER_LIST: u32 = 16 << 10;

/// Largest gRPC message accepted: puts and gets of single large values travel
/// as one message, so this is generous. Object transfers between raylets use
/// chunks far below it.
pub const MAX_MESSAGE_BYTES: usize = 1 << 31;

const STREAM_WINDOW: u32 = 16 << 20;
const CONNECTION_WINDOW: u32 = 64 << 20;
/// HTTP/2 frames up to 1 MiB (the default 16 KiB cuts a 100 MiB transfer
/// into 6,400 frames).
const MAX_FRAME: u32 = 1 << 20;

/// A server builder with shoal's transport settings, requiring `token` of
/// every call (none: calls are not authenticated).
pub fn server(token: Option<&Token>) -> GuardedServer {
    Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_max_header_list_size(MAX_HEADER_LIST)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .layer(GuardLayer::new(token.cloned()))
}

/// An endpoint for `addr` (`host:port` or `http://host:port`) with shoal's settings.
pub fn endpoint(addr: &str) -> Result<Endpoint, Error> {
    let uri = if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let ep =
        Endpoint::from_shared(uri).map_err(|e| Error::Connect { addr: addr.to_string(), reason: e.to_string() })?;
    Ok(ep
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true))
}

/// Connects now, failing fast when nothing listens; every call presents `token`.
pub async fn connect(addr: &str, token: Option<&Token>) -> Result<Channel, Error> {
    let ch = endpoint(addr)?
        .connect()
        .await
        .map_err(|e| Error::Connect { addr: addr.to_string(), reason: error_chain(&e) })?;
    Ok(InterceptedService::new(ch, Credentials::new(token)))
}

/// A channel that connects on first use (and reconnects after failures);
/// every call presents `token`.
pub fn connect_lazy(addr: &str, token: Option<&Token>) -> Result<Channel, Error> {
    Ok(InterceptedService::new(endpoint(addr)?.connect_lazy(), Credentials::new(token)))
}

/// Binds a TCP listener on `host:port` (port 0 picks a free one) and returns
/// it with the address actually bound.
pub async fn bind(host: &str, port: u16) -> Result<(tokio::net::TcpListener, SocketAddr), Error> {
    let listener = tokio::net::TcpListener::bind((host, port))
        .await
        .map_err(|e| Error::io(format!("cannot listen on {host}:{port}"), e))?;
    let addr = listener.local_addr().map_err(|e| Error::io("local_addr", e))?;
    Ok((listener, addr))
}

/// A listener as a stream of connections with TCP_NODELAY set, for tonic.
pub fn incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> + Send + 'static {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|s| {
            // Small messages must not wait for Nagle's algorithm.
            let _ = s.set_nodelay(true);
        })
    })
}

/// The address others reach a process listening on `host` at: the host
/// itself, or 127.0.0.1 for a wildcard.
pub fn advertise_ip(host: &str) -> String {
    match host {
        "0.0.0.0" | "::" | "" => "127.0.0.1".to_string(),
        h => h.to_string(),
    }
}

/// The full `source()` chain of an error on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A raylet client with shoal's message limits.
pub(crate) fn raylet_client(channel: Channel) -> shoal_proto::v1::raylet_client::RayletClient<Channel> {
    shoal_proto::v1::raylet_client::RayletClient::new(channel)
        .max_decoding_message_size(crate::net::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(crate::net::MAX_MESSAGE_BYTES)
}
