//! A minimal HTTP/1.1 client for the node's local API (plain HTTP on loopback; no TLS, no
//! redirects, one request per connection). Kept small on purpose: the CLI needs nothing more,
//! and a full HTTP client would add a second TLS stack to the tree.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Why a call failed before an HTTP answer came back.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API URL is not `http://HOST:PORT`.
    #[error("invalid API URL {0:?}: expected http://HOST:PORT")]
    Url(String),
    /// The node could not be reached.
    #[error("cannot reach the node API at {url}: {reason}")]
    Unreachable {
        /// The URL.
        url: String,
        /// The OS error.
        reason: String,
    },
    /// The answer was not HTTP or not JSON.
    #[error("unexpected answer from the node API: {0}")]
    Protocol(String),
}

/// Calls `method path` on the API at `base` (`http://127.0.0.1:7481`) with a bearer token and an
/// optional JSON body. Returns the status code and the JSON body.
pub fn call(
    base: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, serde_json::Value), ClientError> {
    let host =
        base.strip_prefix("http://").map(|h| h.trim_end_matches('/')).filter(|h| !h.is_empty() && !h.contains('/'));
    let host = host.ok_or_else(|| ClientError::Url(base.to_owned()))?;
    let unreachable = |e: std::io::Error| ClientError::Unreachable { url: base.to_owned(), reason: e.to_string() };
    let mut stream = TcpStream::connect(host).map_err(unreachable)?;
    stream.set_read_timeout(Some(Duration::from_secs(60))).map_err(unreachable)?;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).map_err(unreachable)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(unreachable)?;
    let split =
        raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| ClientError::Protocol("no header end".into()))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut payload = raw[split + 4..].to_vec();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ClientError::Protocol(head.lines().next().unwrap_or("").to_owned()))?;
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        payload = dechunk(&payload).ok_or_else(|| ClientError::Protocol("bad chunked body".into()))?;
    }
    let json = if payload.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&payload)
            .map_err(|e| ClientError::Protocol(format!("status {status}, body not JSON: {e}")))?
    };
    Ok((status, json))
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..line_end]).ok()?.split(';').next()?.trim(), 16).ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn dechunk_reassembles() {
        assert_eq!(super::dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(), b"abcde");
        assert!(super::dechunk(b"zz\r\n").is_none());
    }

    #[test]
    fn urls_are_checked() {
        assert!(matches!(super::call("https://x", "t", "GET", "/", None), Err(super::ClientError::Url(_))));
        assert!(matches!(
            super::call("http://127.0.0.1:1", "t", "GET", "/", None),
            Err(super::ClientError::Unreachable { .. })
        ));
    }
}
