//! `GET /`: the status page, one self-contained HTML document (inline CSS
//! and script, no external assets, works offline) that fetches
//! `/api/status` every 1.5 s and renders it, keeping the last five minutes
//! of request and error rates per listener for its charts.
//!
//! The document is static: it holds no state, so it is served without the
//! bearer token (the Host/Origin guard still applies); every number comes
//! from `/api/status`, which needs the token when one is set. The script
//! builds the page through the DOM from text only, and the
//! Content-Security-Policy allows no script but its own (by hash), no
//! connection but to this endpoint, and no external resource at all.

use std::sync::OnceLock;

/// The page.
pub(super) const HTML: &str = include_str!("page.html");

/// The `Content-Security-Policy` of the page: its one inline script by
/// SHA-256, inline styles, fetches to its own origin only.
pub(super) fn csp() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        let script = script_text(HTML);
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, script.as_bytes());
        format!(
            "default-src 'none'; script-src 'sha256-{}'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
            base64(digest.as_ref())
        )
    })
}

/// The text between the page's `<script>` and `</script>`.
fn script_text(html: &str) -> &str {
    let start = html.find("<script>").map_or(0, |i| i + "<script>".len());
    let end = html[start..]
        .find("</script>")
        .map_or(html.len(), |i| start + i);
    &html[start..end]
}

/// Standard base64 with padding (for the CSP hash source).
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_4648_test_vectors() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), coded);
        }
    }

    #[test]
    fn the_page_has_one_script_and_loads_nothing_from_elsewhere() {
        assert_eq!(HTML.matches("<script").count(), 1);
        assert!(script_text(HTML).contains("fetch(\"/api/status\""));
        for external in ["http://", "https://", "src=", "@import", "url("] {
            let hits: Vec<_> = HTML
                .match_indices(external)
                .filter(|(i, _)| !HTML[*i..].starts_with("http://www.w3.org/2000/svg"))
                .collect();
            assert!(hits.is_empty(), "{external}: {hits:?}");
        }
        assert!(!script_text(HTML).contains("innerHTML"));
    }
}
