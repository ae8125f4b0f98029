//! The loopback redirect of a native app's login (RFC 8252 §7.3): a listener on 127.0.0.1 with
//! a port of the system's choosing, waiting for the browser to come back with the authorization
//! response. It speaks just enough HTTP/1.1 for that (one request per connection, answered and
//! closed), so the plugin links no HTTP server.
//!
//! Only a `GET /callback` carrying the `state` of this login ends the wait: a stale tab or a
//! forged request is told so and the wait goes on. Each connection is served on its own task,
//! so a browser's idle pre-connection never holds up the real request.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tessera_core::token::constant_time_eq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// The path the browser comes back to.
const CALLBACK_PATH: &str = "/callback";
/// How long a connection may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a request head that is read; a browser's is a few hundred bytes.
const MAX_HEAD: usize = 16 * 1024;

/// A listener on 127.0.0.1 for one login's redirect.
#[derive(Debug)]
pub(crate) struct LoopbackRedirect {
    listener: TcpListener,
    port: u16,
}

impl LoopbackRedirect {
    /// Listens on 127.0.0.1, on a port the system picks.
    pub(crate) async fn bind() -> Result<LoopbackRedirect> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("cannot listen on 127.0.0.1 for the login redirect")?;
        let port = listener
            .local_addr()
            .context("cannot read the loopback listener's port")?
            .port();
        Ok(LoopbackRedirect { listener, port })
    }

    /// The `redirect_uri` of the authorization request.
    pub(crate) fn uri(&self) -> String {
        format!("http://127.0.0.1:{}{CALLBACK_PATH}", self.port)
    }

    /// Waits at most `limit` for the browser to come back with `state`; the response's
    /// parameters.
    pub(crate) async fn wait(
        &self,
        state: &str,
        limit: Duration,
    ) -> Result<HashMap<String, String>> {
        match tokio::time::timeout(limit, self.serve(state.into())).await {
            Ok(answer) => answer,
            Err(_) => bail!(
                "no browser came back within {}s; run the command again",
                limit.as_secs()
            ),
        }
    }

    /// Answers every connection until one brings this login's response.
    async fn serve(&self, state: Arc<str>) -> Result<HashMap<String, String>> {
        let (found, mut answers) = mpsc::channel(1);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let (stream, _) = accepted.map_err(|_| {
                        anyhow!("the login listener stopped unexpectedly; run the command again")
                    })?;
                    tokio::spawn(answer(stream, Arc::clone(&state), found.clone()));
                }
                Some(params) = answers.recv() => return Ok(params),
            }
        }
    }
}

/// Reads one request, answers it, and passes on the login's response if it is one.
async fn answer(
    mut stream: TcpStream,
    state: Arc<str>,
    found: mpsc::Sender<HashMap<String, String>>,
) {
    let Ok(Some(head)) = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await else {
        return;
    };
    let reply = Reply::to(&head, &state);
    // The browser only shows the page; a browser that went away changes nothing.
    let _ = stream
        .write_all(&reply.http(head.starts_with("HEAD ")))
        .await;
    let _ = stream.shutdown().await;
    if let Reply::Answered { params, .. } = reply {
        let _ = found.try_send(params);
    }
}

/// The request head (up to the empty line), or `None` when the peer sends none.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::with_capacity(1024);
    let mut buffer = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = stream.read(&mut buffer).await.ok()?;
        if read == 0 || head.len() + read > MAX_HEAD {
            return None;
        }
        head.extend_from_slice(&buffer[..read]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// What the listener answers a request.
#[derive(Debug, PartialEq)]
enum Reply {
    /// This login's response: thank the browser, hand the parameters on.
    Answered {
        /// The provider sent an error.
        failed: bool,
        /// The response's parameters.
        params: HashMap<String, String>,
    },
    /// A callback with another `state`: a stale tab or a forged request.
    OtherLogin,
    /// Not the callback path.
    NotFound,
    /// The callback path with another method than GET or HEAD.
    MethodNotAllowed,
}

impl Reply {
    /// The reply to a request whose head is `head`, for the login with `state`.
    fn to(head: &str, state: &str) -> Reply {
        let mut request_line = head.lines().next().unwrap_or_default().split(' ');
        let method = request_line.next().unwrap_or_default();
        let target = request_line.next().unwrap_or_default();
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        if path != CALLBACK_PATH {
            return Reply::NotFound;
        }
        if method != "GET" && method != "HEAD" {
            return Reply::MethodNotAllowed;
        }
        let params: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let ours = params
            .get("state")
            .is_some_and(|s| constant_time_eq(s.as_bytes(), state.as_bytes()));
        if !ours {
            return Reply::OtherLogin;
        }
        Reply::Answered {
            failed: params.contains_key("error"),
            params,
        }
    }

    /// The HTTP/1.1 response, without its body to a HEAD request.
    fn http(&self, head_only: bool) -> Vec<u8> {
        let (status, extra, body) = self.parts();
        let content_type = if body.is_empty() {
            ""
        } else {
            "content-type: text/html; charset=utf-8\r\n"
        };
        let mut response = format!(
            "HTTP/1.1 {status}\r\n{content_type}{extra}content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        if !head_only {
            response.extend_from_slice(body.as_bytes());
        }
        response
    }

    /// The status line's end, any further header lines, and the body.
    fn parts(&self) -> (&'static str, &'static str, String) {
        match self {
            Reply::Answered { failed: false, .. } => (
                "200 OK",
                "",
                page("<p>Signed in. You can close this window and return to the terminal.</p>"),
            ),
            Reply::Answered { failed: true, .. } => (
                "200 OK",
                "",
                page("<p>Sign-in failed; the terminal says why. You can close this window.</p>"),
            ),
            Reply::OtherLogin => (
                "400 Bad Request",
                "",
                "<p>This sign-in link is not the one tessera is waiting for. Use the latest link.</p>"
                    .to_owned(),
            ),
            Reply::NotFound => ("404 Not Found", "", String::new()),
            Reply::MethodNotAllowed => (
                "405 Method Not Allowed",
                "allow: GET,HEAD\r\n",
                String::new(),
            ),
        }
    }
}

/// A whole page around `text`.
fn page(text: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>tessera</title></head><body>{text}</body></html>"
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    const STATE: &str = "state-of-this-login";

    fn get(target: &str) -> String {
        format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    }

    #[test]
    fn only_a_get_of_the_callback_with_this_logins_state_is_the_answer() {
        let answered = Reply::to(&get("/callback?code=c&state=state-of-this-login"), STATE);
        let Reply::Answered { failed, params } = answered else {
            panic!("{answered:?}");
        };
        assert!(!failed);
        assert_eq!(params["code"], "c");
        let error = Reply::to(
            &get("/callback?error=access_denied&state=state-of-this-login"),
            STATE,
        );
        assert!(matches!(error, Reply::Answered { failed: true, .. }));
        for (head, reply) in [
            (get("/callback?code=c&state=stale"), Reply::OtherLogin),
            (get("/callback?code=c"), Reply::OtherLogin),
            (get("/favicon.ico"), Reply::NotFound),
            (get("/callback/?state=state-of-this-login"), Reply::NotFound),
            (
                "POST /callback?state=state-of-this-login HTTP/1.1\r\n\r\n".into(),
                Reply::MethodNotAllowed,
            ),
            (String::new(), Reply::NotFound),
        ] {
            assert_eq!(Reply::to(&head, STATE), reply, "{head:?}");
        }
    }

    #[test]
    fn replies_are_whole_http_responses() {
        let text = String::from_utf8(Reply::OtherLogin.http(false)).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(text.contains("content-type: text/html; charset=utf-8\r\n"));
        assert!(text.ends_with("Use the latest link.</p>"));
        let head = String::from_utf8(Reply::OtherLogin.http(true)).unwrap();
        assert!(head.ends_with("\r\n\r\n"), "{head}");
        let not_allowed = String::from_utf8(Reply::MethodNotAllowed.http(false)).unwrap();
        assert!(not_allowed.contains("allow: GET,HEAD\r\ncontent-length: 0\r\n"));
    }

    /// Sends `request` on a new connection and reads the whole answer.
    async fn exchange(uri: &str, request: &str) -> String {
        let address = uri
            .trim_start_matches("http://")
            .trim_end_matches(CALLBACK_PATH);
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn the_wait_ends_with_this_logins_response_and_outlasts_idle_and_stale_requests() {
        let redirect = LoopbackRedirect::bind().await.unwrap();
        let uri = redirect.uri();
        let browser = async {
            // A pre-connection that never sends a request must not hold anything up.
            let address = uri
                .trim_start_matches("http://")
                .trim_end_matches(CALLBACK_PATH);
            let _idle = TcpStream::connect(address).await.unwrap();
            let stale = exchange(&uri, &get("/callback?code=old&state=stale")).await;
            assert!(stale.starts_with("HTTP/1.1 400 "), "{stale}");
            let missing = exchange(&uri, &get("/favicon.ico")).await;
            assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
            let done = exchange(&uri, &get("/callback?code=new&state=state-of-this-login")).await;
            assert!(done.starts_with("HTTP/1.1 200 OK\r\n"), "{done}");
            assert!(done.contains("Signed in."), "{done}");
        };
        let (params, ()) = tokio::join!(redirect.wait(STATE, Duration::from_secs(20)), browser);
        assert_eq!(params.unwrap()["code"], "new");
    }

    #[tokio::test]
    async fn a_browser_that_never_comes_back_ends_the_wait_with_the_command_to_rerun() {
        let redirect = LoopbackRedirect::bind().await.unwrap();
        let error = redirect
            .wait(STATE, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "no browser came back within 0s; run the command again"
        );
    }
}
