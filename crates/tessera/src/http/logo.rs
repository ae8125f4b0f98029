//! `/web/logo`: the image of `web.logo` that the pages show, cacheable because it changes only
//! with the configuration, and unable to run anything should someone open an SVG by itself.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::not_found;
use crate::app::App;

/// Where the logo is served, under the issuer's path.
pub(super) const PATH: &str = "/web/logo";

/// A day in caches, then a revalidation by entity tag: a new logo shows within a day of a
/// restart, and most page views cost no request for it at all.
const CACHE_CONTROL: HeaderValue = HeaderValue::from_static("public, max-age=86400");

/// An SVG opened by itself is a document of this origin: `sandbox` and no sources keep any
/// script or link in it inert. An `<img>` never runs them anyway.
const CSP: HeaderValue =
    HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; sandbox");

pub(super) async fn logo(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let Some(logo) = &app.config.web.logo else {
        return not_found().await.into_response();
    };
    let mut response = if matches(&headers, &logo.etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (content_type(logo.content_type), logo.bytes.to_vec()).into_response()
    };
    let out = response.headers_mut();
    // The tag is hex between quotes: always a valid header value.
    if let Ok(etag) = HeaderValue::from_str(&logo.etag) {
        out.insert(header::ETAG, etag);
    }
    out.insert(header::CACHE_CONTROL, CACHE_CONTROL);
    out.insert(header::CONTENT_SECURITY_POLICY, CSP);
    response
}

fn content_type(media_type: &'static str) -> [(header::HeaderName, HeaderValue); 1] {
    [(header::CONTENT_TYPE, HeaderValue::from_static(media_type))]
}

/// Whether `If-None-Match` names the current tag (RFC 9110 §13.1.2: weak comparison).
fn matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim())
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use axum::body::Body;
    use axum::http::Request;

    use crate::app::testing::TestApp;

    const SVG: &str = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"8\" height=\"8\"/>";

    async fn provider_with_logo(dir: &std::path::Path) -> TestApp {
        let file = dir.join("logo.svg");
        std::fs::write(&file, SVG).unwrap();
        let file = file.display().to_string();
        TestApp::start_with(&[
            ("TESSERA_WEB__TITLE", "Example <Corp>"),
            ("TESSERA_WEB__LOGO", &file),
        ])
        .await
    }

    fn get(path: &str, if_none_match: Option<&str>) -> Request<Body> {
        let mut request = Request::get(path);
        if let Some(tag) = if_none_match {
            request = request.header("if-none-match", tag);
        }
        request.body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn the_logo_is_served_with_its_type_a_day_of_caching_and_no_way_to_run_script() {
        let dir = tempfile::tempdir().unwrap();
        let provider = provider_with_logo(dir.path()).await;
        let answer = provider.send(get("/web/logo", None)).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, SVG);
        assert_eq!(answer.header("content-type"), Some("image/svg+xml"));
        assert_eq!(
            answer.header("cache-control"),
            Some("public, max-age=86400")
        );
        assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
        let csp = answer.header("content-security-policy").unwrap();
        assert!(
            csp.contains("sandbox") && csp.contains("default-src 'none'"),
            "{csp}"
        );
        let etag = answer.header("etag").unwrap().to_owned();
        let again = provider.send(get("/web/logo", Some(&etag))).await;
        assert_eq!(again.status, 304);
        assert!(again.body.is_empty());
        assert_eq!(again.header("etag"), Some(etag.as_str()));
        let weak = format!("\"other\", W/{etag}");
        assert_eq!(
            provider.send(get("/web/logo", Some(&weak))).await.status,
            304
        );
        let changed = provider.send(get("/web/logo", Some("\"other\""))).await;
        assert_eq!(changed.status, 200);
    }

    #[tokio::test]
    async fn the_pages_carry_the_title_and_the_logo_of_the_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let provider = provider_with_logo(dir.path()).await;
        let page = provider.send(get("/logout", None)).await;
        assert_eq!(page.status, 200);
        assert!(
            page.body
                .contains("<title>Sign out · Example &lt;Corp&gt;</title>"),
            "{}",
            page.body
        );
        assert!(
            page.body
                .contains("<img class=\"logo\" src=\"/web/logo\" alt=\"\">"),
            "{}",
            page.body
        );
        let error = provider
            .send(get("/authorize?client_id=nobody", None))
            .await;
        assert_eq!(error.status, 400);
        assert!(
            error.body.contains("Example &lt;Corp&gt;</p>"),
            "{}",
            error.body
        );
    }

    #[tokio::test]
    async fn without_a_logo_there_is_neither_an_image_nor_its_route() {
        let provider = TestApp::start().await;
        assert_eq!(provider.send(get("/web/logo", None)).await.status, 404);
        let page = provider.send(get("/logout", None)).await;
        assert!(
            page.body.contains("<title>Sign out · tessera</title>"),
            "{}",
            page.body
        );
        assert!(!page.body.contains("<img"), "{}", page.body);
    }
}
