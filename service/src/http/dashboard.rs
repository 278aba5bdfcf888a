//! `GET /`: the dashboard, one static page and its script and style sheet, compiled into
//! the binary (no build step, nothing fetched from elsewhere).
//!
//! The page needs no token to load: it is the same for everyone and holds no data. It
//! takes the token from the URL fragment (`/#token=…`, which the browser never sends) or
//! asks for it, keeps it in `sessionStorage`, reads `/health` and `/health/actors` (open)
//! and follows `GET /ws/events` with the token as a subprotocol.
//!
//! Every answer carries a content security policy that allows nothing but this origin
//! (and websockets back to it): no inline script or style, no other host, no framing.

use axum::response::Response;

const PAGE: &str = include_str!("../../assets/dashboard.html");
const SCRIPT: &str = include_str!("../../assets/dashboard.js");
const STYLE: &str = include_str!("../../assets/dashboard.css");

/// Only this origin; `connect-src` adds websockets, which `'self'` does not cover in
/// every browser.
const POLICY: &str = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self'; \
                      base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The path of the script and of the style sheet, as the page names them.
pub const SCRIPT_PATH: &str = "/dashboard.js";
pub const STYLE_PATH: &str = "/dashboard.css";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    super::static_asset(content_type, POLICY, body)
}

#[utoipa::path(get, path = "/", tag = "ui", operation_id = "dashboard_page",
    summary = "The dashboard (give it a token as `/#token=…`)",
    responses((status = 200, description = "The page", content_type = "text/html")))]
pub async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

#[utoipa::path(get, path = "/dashboard.js", tag = "ui", operation_id = "dashboard_script",
    responses((status = 200, description = "The dashboard's script", content_type = "text/javascript")))]
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

#[utoipa::path(get, path = "/dashboard.css", tag = "ui", operation_id = "dashboard_style",
    responses((status = 200, description = "The dashboard's style sheet", content_type = "text/css")))]
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}
