//! The `web:` section: the name and logo the login, logout and error pages carry, so that people
//! recognise where they type their corporate password (as Dex's theme does).

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::Invalid;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawWeb {
    /// The name on every page (heading and browser tab); unset: `tessera`.
    title: Option<String>,
    /// A PNG or SVG file shown above the title, served at `{issuer}/web/logo`.
    logo: Option<String>,
}

/// What the pages look like.
#[derive(Clone, Debug)]
pub struct Web {
    /// The name on every page.
    pub title: String,
    /// The logo, read once at start.
    pub logo: Option<Logo>,
}

impl Default for Web {
    fn default() -> Self {
        Web {
            title: DEFAULT_TITLE.into(),
            logo: None,
        }
    }
}

/// A logo image, read whole at start: a file that disappears later cannot break the pages.
#[derive(Clone)]
pub struct Logo {
    /// The image.
    pub bytes: Arc<[u8]>,
    /// `image/png` or `image/svg+xml`, from the bytes, not the file name.
    pub content_type: &'static str,
    /// A strong entity tag (RFC 9110 §8.8.3): the first bytes of the image's SHA-256.
    pub etag: String,
}

impl std::fmt::Debug for Logo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logo")
            .field("bytes", &self.bytes.len())
            .field("content_type", &self.content_type)
            .finish_non_exhaustive()
    }
}

const DEFAULT_TITLE: &str = "tessera";
/// Longer titles would wrap the heading into a paragraph; 64 fits any company's name.
const MAX_TITLE_CHARS: usize = 64;
/// A login page logo needs a few kilobytes; anything this large is a mistake.
const MAX_LOGO_BYTES: u64 = 1024 * 1024;
const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

pub(super) fn validate(raw: RawWeb, base: &Path) -> Result<Web, Invalid> {
    let title = match raw.title {
        None => DEFAULT_TITLE.to_owned(),
        Some(title) => {
            let title = title.trim();
            if title.is_empty() || title.chars().count() > MAX_TITLE_CHARS {
                return Err((
                    "web.title".into(),
                    format!("must be 1 to {MAX_TITLE_CHARS} characters"),
                ));
            }
            if title.chars().any(char::is_control) {
                return Err(("web.title".into(), "must be one line of text".into()));
            }
            title.to_owned()
        }
    };
    let logo = raw.logo.map(|file| logo(&base.join(file))).transpose()?;
    Ok(Web { title, logo })
}

/// Reads and checks the logo file; the error names `web.logo` and the file.
fn logo(path: &Path) -> Result<Logo, Invalid> {
    let invalid = |message: String| ("web.logo".to_owned(), message);
    let size = std::fs::metadata(path)
        .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?
        .len();
    if size > MAX_LOGO_BYTES {
        return Err(invalid(format!(
            "{} is {size} bytes; a logo must be at most 1 MiB",
            path.display()
        )));
    }
    let bytes =
        std::fs::read(path).map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
    let content_type = image_type(&bytes).ok_or_else(|| {
        invalid(format!(
            "{} is neither a PNG nor an SVG image",
            path.display()
        ))
    })?;
    let etag = format!("\"{}\"", hex::encode(&Sha256::digest(&bytes)[..12]));
    Ok(Logo {
        bytes: bytes.into(),
        content_type,
        etag,
    })
}

/// The image's media type, from its content: the PNG signature, or SVG markup.
fn image_type(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(PNG_SIGNATURE) {
        return Some("image/png");
    }
    let text = std::str::from_utf8(bytes).ok()?;
    text.contains("<svg").then_some("image/svg+xml")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    fn raw(title: Option<&str>, logo: Option<&str>) -> RawWeb {
        RawWeb {
            title: title.map(str::to_owned),
            logo: logo.map(str::to_owned),
        }
    }

    #[test]
    fn without_the_section_the_pages_say_tessera_and_show_no_logo() {
        let web = validate(RawWeb::default(), Path::new(".")).unwrap();
        assert_eq!(web.title, "tessera");
        assert!(web.logo.is_none());
    }

    #[test]
    fn a_png_or_svg_logo_is_read_with_its_type_from_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let png = [PNG_SIGNATURE, b"rest of the image"].concat();
        std::fs::write(dir.path().join("logo.img"), &png).unwrap();
        std::fs::write(
            dir.path().join("logo.svg"),
            "<?xml version=\"1.0\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\"/>",
        )
        .unwrap();
        let web = validate(raw(Some(" Example Corp "), Some("logo.img")), dir.path()).unwrap();
        assert_eq!(web.title, "Example Corp");
        let logo = web.logo.unwrap();
        assert_eq!(logo.content_type, "image/png");
        assert_eq!(&*logo.bytes, png.as_slice());
        assert_eq!(logo.etag.len(), 26, "{}", logo.etag);
        let web = validate(raw(None, Some("logo.svg")), dir.path()).unwrap();
        assert_eq!(web.logo.unwrap().content_type, "image/svg+xml");
    }

    #[test]
    fn a_missing_or_foreign_logo_and_a_bad_title_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("logo.gif"), b"GIF89a....").unwrap();
        let (key, said) = validate(raw(None, Some("missing.png")), dir.path()).unwrap_err();
        assert_eq!(key, "web.logo");
        assert!(said.contains("missing.png"), "{said}");
        let (key, said) = validate(raw(None, Some("logo.gif")), dir.path()).unwrap_err();
        assert_eq!(key, "web.logo");
        assert!(
            said.ends_with("is neither a PNG nor an SVG image"),
            "{said}"
        );
        for title in ["", "   ", "two\nlines", &"x".repeat(65)] {
            let (key, _) = validate(raw(Some(title), None), dir.path()).unwrap_err();
            assert_eq!(key, "web.title", "{title:?}");
        }
    }
}
