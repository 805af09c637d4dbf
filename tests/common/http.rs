//! A minimal HTTP/1.1 client for the web workspace and chromedriver: one request a connection,
//! cookies kept by the caller, bodies read to the end (Content-Length or chunked).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// An answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Every `Set-Cookie` as (name, value).
    pub fn cookies(&self) -> Vec<(String, String)> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .filter_map(|(_, v)| v.split(';').next()?.split_once('=').map(|(a, b)| (a.to_owned(), b.to_owned())))
            .collect()
    }
}

/// Sends one request to `base` (`http://127.0.0.1:PORT`).
pub fn request(base: &str, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Answer {
    let host = base.trim_start_matches("http://").trim_end_matches('/');
    let s = TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    exchange(s, host, method, path, headers, body).unwrap()
}

/// Sends one request over TLS to `host` (`127.0.0.1:PORT`) as `config` says (roots, a client
/// certificate or none), the server named `server_name`; `Err` if the handshake fails.
pub fn request_tls(
    host: &str,
    config: std::sync::Arc<rustls::ClientConfig>,
    server_name: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<Answer, String> {
    let tcp = TcpStream::connect(host).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut tcp = tcp;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
    }
    // TLS 1.3: a refused client certificate shows at the first read, as the server's alert.
    exchange(rustls::StreamOwned::new(conn, tcp), host, method, path, headers, body)
}

fn exchange<S: Read + Write>(
    mut s: S,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<Answer, String> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {host}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    s.flush().map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line: {line:?}"))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let find = |n: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.clone());
    let mut bytes = Vec::new();
    if let Some(n) = find("content-length") {
        bytes.resize(n.parse().map_err(|_| "a bad content-length".to_owned())?, 0);
        r.read_exact(&mut bytes).map_err(|e| e.to_string())?;
    } else if find("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        loop {
            line.clear();
            r.read_line(&mut line).map_err(|e| e.to_string())?;
            let n = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).map_err(|e| e.to_string())?;
            bytes.extend_from_slice(&chunk[..n]);
        }
    } else {
        r.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    }
    Ok(Answer { status, headers, body: String::from_utf8_lossy(&bytes).into_owned() })
}

/// Form-encodes pairs.
pub fn form(pairs: &[(&str, &str)]) -> String {
    pairs.iter().map(|(k, v)| format!("{k}={}", liaison::encoding::percent(v))).collect::<Vec<_>>().join("&")
}

/// Signs in to the workspace at `web` over HTTP: the form (its own CSRF cookie), then the post.
pub fn sign_in(web: &str, name: &str, password: &str, code: &str) -> Answer {
    let page = request(web, "GET", "/signin", &[], None);
    assert_eq!(page.status, 200);
    let (_, pre) = page.cookies().into_iter().find(|(k, _)| k == "liaison_signin").unwrap();
    let csrf = input_value(&page.body, "csrf").unwrap();
    assert_eq!(csrf, pre);
    let body = form(&[("csrf", &csrf), ("name", name), ("password", password), ("code", code)]);
    let cookie = format!("liaison_signin={pre}");
    request(
        web,
        "POST",
        "/signin",
        &[("Cookie", &cookie), ("Content-Type", "application/x-www-form-urlencoded")],
        Some(&body),
    )
}

/// The value of the first `name="NAME" value="..."` input in a page.
pub fn input_value(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\""))?;
    let rest = &html[at..];
    let v = rest.find("value=\"")? + 7;
    let end = rest[v..].find('"')?;
    Some(rest[v..v + end].to_owned())
}
