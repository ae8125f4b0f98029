//! A real browser for the black-box tests: headless Chromium driven over WebDriver by
//! chromedriver (Debian's, from `scripts/test-tools chromium`), for what only a browser does
//! faithfully — forms, redirects, cookies with their attributes, several tabs at once.
//!
//! Chromium trusts exactly the one server key it is given
//! (`--ignore-certificate-errors-spki-list`), not every certificate. Each [`Browser`] has its own
//! chromedriver on a free loopback port and its own profile and HOME; dropping it ends the
//! session, then kills chromedriver and every process below it by PID, so no browser outlives
//! its test. When the test fails, the drop first keeps a screenshot of the current tab in
//! `target/tmp/screenshots/` and says where.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use fantoccini::wd::WindowHandle;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::cluster::{children_of, free_port, signal, test_tools};
use crate::support::{self, PASSWORD};

/// One tab of a [`Browser`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tab(WindowHandle);

/// Headless Chromium with its own chromedriver and profile.
pub struct Browser {
    client: Client,
    chromedriver: Child,
    port: u16,
    session: String,
    /// The profile (`--user-data-dir`) and chromedriver's log.
    dir: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium that trusts the key of the certificate in
    /// `trusted_server_cert_pem` (e.g. the provider's `server.pem`) and no other untrusted one.
    pub async fn start(trusted_server_cert_pem: Option<&Path>) -> Browser {
        let trusted: Vec<&Path> = trusted_server_cert_pem.into_iter().collect();
        Browser::start_trusting(&trusted).await
    }

    /// [`Browser::start`] trusting the keys of several servers' certificates (tessera's and an
    /// upstream provider's).
    pub async fn start_trusting(trusted_server_certs_pem: &[&Path]) -> Browser {
        let (chromium, chromedriver) = chromium_binaries();
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            format!("--user-data-dir={}", dir.path().join("profile").display()),
        ];
        if !trusted_server_certs_pem.is_empty() {
            let keys: Vec<String> = trusted_server_certs_pem
                .iter()
                .map(|pem| spki_sha256(pem))
                .collect();
            args.push(format!(
                "--ignore-certificate-errors-spki-list={}",
                keys.join(",")
            ));
        }
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": chromium, "args": args },
            // A page that never loads fails the test in 30 s rather than chromedriver's 300 s.
            "timeouts": { "pageLoad": 30_000, "script": 30_000 },
        });
        let (chromedriver, port) = start_chromedriver(chromedriver, dir.path()).await;
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(serde_json::from_value(capabilities).unwrap())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("chromedriver opens a Chromium session");
        let session = client.session_id().await.unwrap().unwrap();
        Browser {
            client,
            chromedriver,
            port,
            session,
            dir,
        }
    }

    /// Loads `url` in the current tab and waits for it (an error page counts as loaded).
    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// The URL of the current tab; the address that failed when it shows an error page.
    pub async fn current_url(&self) -> String {
        self.client.current_url().await.unwrap().into()
    }

    /// The visible text of the current page.
    pub async fn body_text(&self) -> String {
        self.client
            .find(Locator::Css("body"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Types each value into the input with that `name`, then submits the form of the first one
    /// as pressing its submit button would (validation, submit event). chromedriver holds the
    /// next command until the navigation this starts has loaded.
    pub async fn fill_and_submit(&self, field_values: &[(&str, &str)]) {
        self.fill_and_submit_within("", field_values).await;
    }

    /// [`Browser::fill_and_submit`] with the inputs inside the element `scope` selects (CSS),
    /// for a page with several forms.
    pub async fn fill_and_submit_within(&self, scope: &str, field_values: &[(&str, &str)]) {
        let mut first = None;
        for (name, value) in field_values {
            let input = self
                .client
                .find(Locator::Css(&format!("{scope} input[name=\"{name}\"]")))
                .await
                .unwrap_or_else(|e| panic!("no input named {name}: {e}"));
            input.clear().await.unwrap();
            input.send_keys(value).await.unwrap();
            first.get_or_insert(input);
        }
        let input = first.expect("fill_and_submit needs a field");
        self.run_js(
            "arguments[0].form.requestSubmit()",
            vec![serde_json::to_value(input).unwrap()],
        )
        .await;
    }

    /// The cookies the current page can see (HttpOnly ones too), as name and value.
    pub async fn cookies(&self) -> Vec<(String, String)> {
        self.client
            .get_all_cookies()
            .await
            .unwrap()
            .into_iter()
            .map(|c| (c.name().to_owned(), c.value().to_owned()))
            .collect()
    }

    /// Deletes cookie `name` of the current page's site, as a person clearing it would.
    pub async fn delete_cookie(&self, name: &str) {
        self.client.delete_cookie(name).await.unwrap();
    }

    /// Opens a blank tab, without switching to it.
    pub async fn new_tab(&self) -> Tab {
        Tab(self.client.new_window(true).await.unwrap().handle)
    }

    /// Makes `tab` the current one.
    pub async fn switch_to(&self, tab: &Tab) {
        self.client.switch_to_window(tab.0.clone()).await.unwrap();
    }

    /// Every open tab.
    pub async fn tabs(&self) -> Vec<Tab> {
        self.client
            .windows()
            .await
            .unwrap()
            .into_iter()
            .map(Tab)
            .collect()
    }

    /// Runs `script` as a function body in the current page with `arguments` = `args` and
    /// returns what it returns; a returned promise is awaited (W3C WebDriver, Execute Script), so
    /// `return Promise.all(urls.map(u => fetch(u).then(r => r.status)))` loads several at once
    /// (from a page whose CSP allows it: tessera's own HTML pages say `default-src 'none'`).
    pub async fn run_js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The fantoccini client needs the test's runtime, which is busy running this drop: end
        // the session with a plain request instead, so chromedriver closes Chromium cleanly.
        if std::thread::panicking() {
            self.keep_screenshot();
        }
        let _ = request(self.port, "DELETE", &format!("/session/{}", self.session));
        let mut below = Vec::new();
        let mut parents = vec![self.chromedriver.id()];
        while let Some(pid) = parents.pop() {
            let children = children_of(pid);
            parents.extend(&children);
            below.extend(children);
        }
        let _ = self.chromedriver.kill();
        let _ = self.chromedriver.wait();
        for pid in below {
            signal("-KILL", pid);
        }
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.path().join("chromedriver.log"))
                .unwrap_or_default();
            eprintln!("---- chromedriver printed:\n{log}\n----");
        }
    }
}

impl Browser {
    /// Writes the current tab as a PNG under `target/tmp/screenshots/`, named after the test
    /// (libtest names each test's thread after it), and prints the path.
    fn keep_screenshot(&self) {
        let path = format!("/session/{}/screenshot", self.session);
        let png = request(self.port, "GET", &path).ok().and_then(|body| {
            let answer: Value = serde_json::from_str(&body).ok()?;
            STANDARD.decode(answer["value"].as_str()?).ok()
        });
        let Some(png) = png else {
            eprintln!("---- no screenshot: chromedriver did not send one");
            return;
        };
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
        let test = std::thread::current()
            .name()
            .unwrap_or("browser")
            .replace("::", "-");
        let file = dir.join(format!("{test}-{}.png", std::process::id()));
        match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&file, png)) {
            Ok(()) => eprintln!("---- screenshot of the failing page: {}", file.display()),
            Err(e) => eprintln!("---- cannot keep the screenshot {}: {e}", file.display()),
        }
    }
}

/// The Chromium and chromedriver binaries `scripts/test-tools chromium` provides.
fn chromium_binaries() -> (&'static Path, &'static Path) {
    static BINARIES: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    let (chromium, chromedriver) = BINARIES.get_or_init(|| {
        let mut paths = test_tools(&["chromium"]).into_iter();
        let chromium = paths.next().expect("test-tools prints chromium's path");
        let chromedriver = paths.next().expect("then chromedriver's");
        (chromium, chromedriver)
    });
    (chromium, chromedriver)
}

/// Starts chromedriver on a free loopback port (another one if the port was taken in the
/// meantime) and waits until its `/status` says it is ready.
async fn start_chromedriver(binary: &Path, dir: &Path) -> (Child, u16) {
    for _ in 0..5 {
        let port = free_port();
        let log = std::fs::File::create(dir.join("chromedriver.log")).unwrap();
        let mut child = Command::new(binary)
            .arg(format!("--port={port}"))
            // Chromium's crash handler and caches live under HOME (the handler detaches from
            // the browser, so its files are all that could outlive the test): keep them here.
            .env("HOME", dir)
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_CACHE_HOME")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("chromedriver starts");
        for _ in 0..200 {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if ready(port).await {
                return (child, port);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    let log = std::fs::read_to_string(dir.join("chromedriver.log")).unwrap_or_default();
    panic!("chromedriver did not become ready:\n{log}");
}

/// Whether chromedriver on `port` answers `/status` with `ready: true`.
async fn ready(port: u16) -> bool {
    let status = tokio::task::spawn_blocking(move || request(port, "GET", "/status"));
    status.await.unwrap().is_ok_and(|body| {
        serde_json::from_str::<Value>(&body).is_ok_and(|v| v["value"]["ready"] == true)
    })
}

/// One plain HTTP/1.1 request without a body to chromedriver; the response body as text.
/// (chromedriver keeps the connection open whatever the request says: read `Content-Length`.)
fn request(port: u16, method: &str, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut reader = BufReader::new(stream);
    let mut length = 0;
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
        line.clear();
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// The base64 SHA-256 of the SubjectPublicKeyInfo of the first certificate in a PEM file, the
/// form `--ignore-certificate-errors-spki-list` takes.
fn spki_sha256(pem: &Path) -> String {
    let pem = std::fs::read(pem).unwrap();
    let der = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .expect("a certificate in the PEM file")
        .unwrap();
    let cert = webpki::EndEntityCert::try_from(&der).unwrap();
    STANDARD.encode(Sha256::digest(cert.subject_public_key_info()))
}

#[tokio::test]
async fn chromium_logs_in_through_the_provider_form() {
    let server = support::Server::start().await;
    let browser = Browser::start(Some(&server.dir.path().join("server.pem"))).await;
    browser
        .goto(&server.url(
            "/authorize?client_id=demo&response_type=code&scope=openid\
             &redirect_uri=http%3A%2F%2F127.0.0.1%3A8000%2Fcallback&state=xyz",
        ))
        .await;
    assert!(
        browser.body_text().await.contains("Sign in"),
        "the login form is shown over the dev certificate: {}",
        browser.body_text().await
    );
    browser
        .fill_and_submit(&[("username", "dev"), ("password", PASSWORD)])
        .await;
    let url = browser.current_url().await;
    assert!(
        url.starts_with("http://127.0.0.1:8000/callback?code="),
        "the browser ends at the client's callback: {url}"
    );
    assert_eq!(support::query_param(&url, "state").as_deref(), Some("xyz"));
}
