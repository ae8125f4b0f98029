//! The few pages tessera shows a person: the login form, logout confirmation (the provider's
//! and the proxy's), and errors.
//! Server-rendered, no JavaScript; every interpolated value is HTML-escaped.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

/// The name and logo every page carries (`web.title`, `web.logo`), so that people recognise
/// where they type their password.
#[derive(Clone, Debug)]
pub struct Theme<'a> {
    /// The name in the header and the browser tab.
    pub title: &'a str,
    /// Where the logo is served, same origin (`img-src 'self'`); none without a logo.
    pub logo_url: Option<String>,
}

impl Theme<'_> {
    /// The pages of a process without a `web:` section, such as the proxy alone.
    pub const PLAIN: Theme<'static> = Theme {
        title: "tessera",
        logo_url: None,
    };

    /// Renders a page with headers that keep it out of frames and caches.
    pub fn page(&self, status: StatusCode, title: &str, body: &str) -> Response {
        let logo = self
            .logo_url
            .as_deref()
            .map(|url| format!("<img class=\"logo\" src=\"{}\" alt=\"\">", escape(url)))
            .unwrap_or_default();
        let html = format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>{title} · {brand}</title>\
             <style>body{{font-family:system-ui,sans-serif;max-width:24rem;margin:4rem auto;padding:0 1rem}}\
             label{{display:block;margin:.75rem 0 .25rem}}input{{width:100%;padding:.4rem;box-sizing:border-box}}\
             button{{margin-top:1rem;padding:.5rem 1.5rem}}.error{{color:#b00020}}\
             .logo{{display:block;max-width:100%;max-height:4rem}}.brand{{font-weight:600;margin:.5rem 0 0}}</style></head>\
             <body><header>{logo}<p class=\"brand\">{brand}</p></header><h1>{title}</h1>{body}</body></html>\n",
            title = escape(title),
            brand = escape(self.title),
        );
        let mut response = (status, Html(html)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self' http: https:; frame-ancestors 'none'"),
        );
        response
    }

    /// An error page for requests that must not be redirected back to the client.
    pub fn error_page(&self, status: StatusCode, message: &str) -> Response {
        self.page(
            status,
            "Sign-in error",
            &format!("<p class=\"error\">{}</p>", escape(message)),
        )
    }
}

/// A hidden form field.
pub fn hidden(name: &str, value: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
        escape(name),
        escape(value)
    )
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    async fn html(response: Response) -> String {
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn the_theme_names_the_page_and_shows_the_logo_escaped() {
        let theme = Theme {
            title: "Example <Corp> & \"Sons\"",
            logo_url: Some("/id/web/logo".into()),
        };
        let response = theme.error_page(StatusCode::BAD_REQUEST, "No <b>such</b> client.");
        let csp = response.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(csp.contains("img-src 'self'"), "{csp}");
        let page = html(response).await;
        assert!(
            page.contains(
                "<title>Sign-in error · Example &lt;Corp&gt; &amp; &quot;Sons&quot;</title>"
            ),
            "{page}"
        );
        assert!(
            page.contains("<img class=\"logo\" src=\"/id/web/logo\" alt=\"\"><p class=\"brand\">Example &lt;Corp&gt; &amp; &quot;Sons&quot;</p>"),
            "{page}"
        );
        assert!(
            page.contains("No &lt;b&gt;such&lt;/b&gt; client."),
            "{page}"
        );
        let plain = html(Theme::PLAIN.page(StatusCode::OK, "Signed out", "")).await;
        assert!(
            plain.contains("<title>Signed out · tessera</title>"),
            "{plain}"
        );
        assert!(!plain.contains("<img"), "{plain}");
    }

    #[test]
    fn markup_is_escaped() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#x27;"
        );
    }
}
