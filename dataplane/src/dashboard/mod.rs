//! `GET /dashboard` on the admin API: one self-contained page (HTML, one script, one style
//! sheet) compiled into the binary. The page reads the same admin API it is served by —
//! `/metrics`, `/endpoints`, `/config_dump` and, where the gateway has it, the streamed `/tap` —
//! and computes rates, success ratios and latency quantiles itself; see `app.js`.

/// The page.
pub const INDEX_HTML: &str = include_str!("index.html");
/// Its script: a Prometheus text parser, the panels, the refresh loop, the tap reader.
pub const APP_JS: &str = include_str!("app.js");
/// Its style sheet.
pub const APP_CSS: &str = include_str!("app.css");

/// Nothing but the gateway itself: no inline script or style, no other origin, no framing.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One asset: its content type and body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asset {
    pub content_type: &'static str,
    pub body: &'static str,
}

/// The asset at `path`, or `None` when the path is not the dashboard's.
pub fn asset(path: &str) -> Option<Asset> {
    let (content_type, body) = match path {
        "/dashboard" | "/dashboard/" | "/dashboard/index.html" => {
            ("text/html; charset=utf-8", INDEX_HTML)
        }
        "/dashboard/app.js" => ("text/javascript; charset=utf-8", APP_JS),
        "/dashboard/app.css" => ("text/css; charset=utf-8", APP_CSS),
        _ => return None,
    };
    Some(Asset { content_type, body })
}

/// Whether `path` is one of the dashboard's (for a 405 on other methods).
pub fn is_dashboard_path(path: &str) -> bool {
    asset(path).is_some()
}

/// The header fields every asset is sent with.
pub fn headers() -> Vec<(String, String)> {
    [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("cache-control", "no-store"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_its_type_and_nothing_else_answers() {
        assert!(asset("/dashboard")
            .unwrap()
            .content_type
            .starts_with("text/html"));
        assert_eq!(asset("/dashboard/").unwrap().body, INDEX_HTML);
        assert!(asset("/dashboard/app.js")
            .unwrap()
            .content_type
            .starts_with("text/javascript"));
        assert!(asset("/dashboard/app.css")
            .unwrap()
            .content_type
            .starts_with("text/css"));
        for p in [
            "/dashboard/x",
            "/dashboard/../metrics",
            "/dashboardx",
            "/app.js",
        ] {
            assert!(asset(p).is_none(), "{p}");
        }
    }

    #[test]
    fn the_page_loads_only_its_own_assets() {
        // Same origin only: no URL with a scheme or a protocol-relative one in any asset.
        for (name, text) in [("html", INDEX_HTML), ("js", APP_JS), ("css", APP_CSS)] {
            for bad in [
                "http://",
                "https://",
                "src=\"//",
                "href=\"//",
                "url(",
                "@import",
            ] {
                assert!(!text.contains(bad), "{name} contains {bad:?}");
            }
        }
        assert!(INDEX_HTML.contains("src=\"/dashboard/app.js\""));
        assert!(INDEX_HTML.contains("href=\"/dashboard/app.css\""));
        // Inline script and style would be refused by the CSP.
        assert!(!INDEX_HTML.contains("<script>") && !INDEX_HTML.contains("<style"));
        assert!(!INDEX_HTML.contains(" style=\""));
    }

    #[test]
    fn the_script_puts_data_into_the_dom_as_text_only() {
        for bad in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!APP_JS.contains(bad), "app.js uses {bad}");
        }
    }

    #[test]
    fn headers_forbid_other_origins_and_caching() {
        let h = headers();
        let get = |k: &str| h.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert!(get("content-security-policy")
            .unwrap()
            .starts_with("default-src 'self'"));
        assert_eq!(get("cache-control"), Some("no-store"));
    }
}
