//! A small upstream for the proxy tests, in the test process on 127.0.0.1:0: every path echoes
//! the request (method, path, headers) as JSON, `/ws` is a websocket echo, `/stream` answers
//! three chunks 300 ms apart. It counts the requests it served.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

/// A running echo upstream.
pub struct Upstream {
    pub address: SocketAddr,
    served: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// Starts serving on a free loopback port.
    pub async fn start() -> Upstream {
        let served = Arc::new(AtomicUsize::new(0));
        let app = Router::new()
            .route("/ws", get(websocket))
            .route("/stream", get(stream))
            .fallback(echo)
            .with_state(Arc::clone(&served));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Upstream {
            address,
            served,
            task,
        }
    }

    /// `http://ADDRESS`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// How many requests it has answered.
    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

async fn echo(State(served): State<Arc<AtomicUsize>>, request: Request) -> axum::Json<Value> {
    served.fetch_add(1, Ordering::SeqCst);
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in request.headers() {
        headers
            .entry(name.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    axum::Json(json!({
        "method": request.method().as_str(),
        "path": request.uri().path_and_query().map(|p| p.as_str()),
        "version": format!("{:?}", request.version()),
        "headers": headers,
    }))
}

async fn websocket(State(served): State<Arc<AtomicUsize>>, upgrade: WebSocketUpgrade) -> Response {
    served.fetch_add(1, Ordering::SeqCst);
    upgrade.on_upgrade(echo_messages)
}

async fn echo_messages(mut socket: WebSocket) {
    while let Some(Ok(message)) = socket.recv().await {
        let reply = match message {
            Message::Text(text) => Message::Text(format!("echo: {text}").into()),
            Message::Binary(bytes) => Message::Binary(bytes),
            Message::Close(_) => break,
            _ => continue,
        };
        if socket.send(reply).await.is_err() {
            break;
        }
    }
}

async fn stream(State(served): State<Arc<AtomicUsize>>) -> impl IntoResponse {
    served.fetch_add(1, Ordering::SeqCst);
    let chunks = futures_util::stream::unfold(0, |i| async move {
        if i == 3 {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Some((Ok::<_, std::io::Error>(format!("chunk {i}\n")), i + 1))
    });
    Body::from_stream(chunks)
}
