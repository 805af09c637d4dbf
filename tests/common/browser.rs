//! A real browser for the web workspace's tests: Debian's Chromium, headless, driven through
//! chromedriver with the W3C WebDriver protocol (JSON over HTTP: the same protocol fantoccini
//! and thirtyfour speak, in the hundred lines the tests need, without their HTTP client stack).
//!
//! If Chromium or chromedriver is missing, it is installed (`apt-get install chromium
//! chromium-driver`, as `.ci/run` does first): the browser tests never skip themselves.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::cluster::free_tcp;
use super::http::request;

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Installs Chromium and chromedriver from Debian's packages if either is missing.
pub fn ensure_installed() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists() {
            return;
        }
        let root = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false);
        let apt = |args: &[&str]| {
            let mut c = if root { Command::new("apt-get") } else { Command::new("sudo") };
            if !root {
                c.arg("apt-get");
            }
            c.args(args).env("DEBIAN_FRONTEND", "noninteractive").stdout(Stdio::null()).status().map(|s| s.success())
        };
        let ok = apt(&["install", "-y", "-qq", "chromium", "chromium-driver"]).unwrap_or(false)
            || (apt(&["update", "-qq"]).unwrap_or(false)
                && apt(&["install", "-y", "-qq", "chromium", "chromium-driver"]).unwrap_or(false));
        assert!(
            ok && Path::new(CHROMEDRIVER).exists(),
            "the browser tests need Debian's chromium and chromium-driver, and installing them failed: \
             run `apt-get install chromium chromium-driver` (as .ci/run does)"
        );
    });
}

/// A headless Chromium session.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub fn start() -> Self {
        ensure_installed();
        let port = free_tcp();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = tempfile::tempdir().unwrap();
        // The flags this machine needs (it has no network but loopback) and a fresh profile.
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1400,900".into(),
            "--autoplay-policy=no-user-gesture-required".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let mut b = Self { driver, base, session: String::new(), _profile: profile };
        let v = b.call("POST", "/session", Some(caps));
        b.session = v["sessionId"].as_str().expect("a WebDriver session").to_owned();
        b
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let text = body.map(|b| b.to_string());
        let a = request(&self.base, method, path, &[("Content-Type", "application/json")], text.as_deref());
        let v: Value = serde_json::from_str(&a.body).unwrap_or(Value::Null);
        assert!(a.status < 300, "WebDriver {method} {path}: {} {}", a.status, a.body);
        v["value"].clone()
    }

    fn s(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    pub fn goto(&self, url: &str) {
        self.call("POST", &self.s("/url"), Some(json!({"url": url})));
    }

    pub fn url(&self) -> String {
        self.call("GET", &self.s("/url"), None).as_str().unwrap_or("").to_owned()
    }

    /// The element a CSS selector finds, if any.
    pub fn try_find(&self, css: &str) -> Option<String> {
        let text = json!({"using": "css selector", "value": css}).to_string();
        let a = request(&self.base, "POST", &self.s("/element"), &[("Content-Type", "application/json")], Some(&text));
        if a.status >= 300 {
            return None;
        }
        let v: Value = serde_json::from_str(&a.body).ok()?;
        v["value"].as_object()?.values().next()?.as_str().map(str::to_owned)
    }

    /// The element a CSS selector finds, waiting up to `within` for it.
    pub fn find(&self, css: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(e) = self.try_find(css) {
                return e;
            }
            assert!(Instant::now() < deadline, "no element {css} on {}:\n{}", self.url(), self.source());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css, Duration::from_secs(10));
        self.call("POST", &self.s(&format!("/element/{e}/clear")), Some(json!({})));
        self.call("POST", &self.s(&format!("/element/{e}/value")), Some(json!({"text": text})));
    }

    /// Sets a field's value as a script would (dates, selects) and tells the page it changed.
    pub fn set_value(&self, css: &str, value: &str) {
        self.find(css, Duration::from_secs(10));
        let js = format!(
            "var e = document.querySelector({}); e.value = {}; \
             e.dispatchEvent(new Event('input', {{bubbles: true}})); \
             e.dispatchEvent(new Event('change', {{bubbles: true}})); return e.value;",
            serde_json::to_string(css).unwrap(),
            serde_json::to_string(value).unwrap()
        );
        assert_eq!(self.script(&js), Value::String(value.to_owned()), "{css} takes {value}");
    }

    pub fn click(&self, css: &str) {
        let e = self.find(css, Duration::from_secs(10));
        self.call("POST", &self.s(&format!("/element/{e}/click")), Some(json!({})));
    }

    pub fn text(&self, css: &str) -> String {
        let e = self.find(css, Duration::from_secs(10));
        self.call("GET", &self.s(&format!("/element/{e}/text")), None).as_str().unwrap_or("").to_owned()
    }

    pub fn source(&self) -> String {
        self.call("GET", &self.s("/source"), None).as_str().unwrap_or("").to_owned()
    }

    /// Runs a script in the page and returns its value.
    pub fn script(&self, js: &str) -> Value {
        self.call("POST", &self.s("/execute/sync"), Some(json!({"script": js, "args": []})))
    }

    /// Waits until a script returns true.
    pub fn wait_true(&self, what: &str, js: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while self.script(js) != Value::Bool(true) {
            if Instant::now() >= deadline {
                let text = self.script("return document.body.innerText;");
                panic!("{what}: not true within {within:?}; the page reads:\n{}", text.as_str().unwrap_or(""));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Saves a PNG screenshot of the page.
    pub fn screenshot(&self, to: &Path) {
        use base64::Engine as _;
        let b64 = self.call("GET", &self.s("/screenshot"), None);
        let png = base64::engine::general_purpose::STANDARD.decode(b64.as_str().unwrap()).unwrap();
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(to, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = request(&self.base, "DELETE", &self.s(""), &[], None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Where the documentation's screenshots go.
pub fn docs_dir() -> PathBuf {
    super::root().join("docs")
}
