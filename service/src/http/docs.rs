//! `GET /docs`: the OpenAPI document (`/openapi.json`) in Swagger UI, for people. The page,
//! its initialiser and Swagger UI itself (`service/assets/docs/`, vendored from the npm
//! package `swagger-ui-dist`, version in its README) are compiled into the binary: nothing
//! is fetched from elsewhere, at build or run time. No token is needed to load them;
//! "Authorize" in the page takes one for trying requests out.
//!
//! The content security policy allows this origin alone, and `data:` images besides: Swagger
//! UI's style sheet draws some of its icons with them. That is all it needs (checked in a
//! browser with every operation, model and the authorisation dialog open and requests
//! tried out): no inline script (the initialiser is a file of its own), no inline style,
//! no `eval`.

use axum::response::Response;

const PAGE: &str = include_str!("../../assets/docs.html");
const SCRIPT: &str = include_str!("../../assets/docs.js");
const BUNDLE: &str = include_str!("../../assets/docs/swagger-ui-bundle.js");
const STYLE: &str = include_str!("../../assets/docs/swagger-ui.css");

const POLICY: &str = "default-src 'self'; img-src 'self' data:; base-uri 'none'; \
                      form-action 'none'; frame-ancestors 'none'";

/// The paths of the page and its assets, as the page names them.
pub const PAGE_PATH: &str = "/docs";
pub const SCRIPT_PATH: &str = "/docs/docs.js";
pub const BUNDLE_PATH: &str = "/docs/swagger-ui-bundle.js";
pub const STYLE_PATH: &str = "/docs/swagger-ui.css";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    super::static_asset(content_type, POLICY, body)
}

#[utoipa::path(get, path = "/docs", tag = "ui", operation_id = "docs_page",
    responses((status = 200, description = "Swagger UI over `/openapi.json`", content_type = "text/html")))]
pub async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

#[utoipa::path(get, path = "/docs/docs.js", tag = "ui", operation_id = "docs_script",
    responses((status = 200, description = "The page's initialiser", content_type = "text/javascript")))]
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

#[utoipa::path(get, path = "/docs/swagger-ui-bundle.js", tag = "ui", operation_id = "docs_bundle",
    responses((status = 200, description = "Swagger UI", content_type = "text/javascript")))]
pub async fn bundle() -> Response {
    asset("text/javascript; charset=utf-8", BUNDLE)
}

#[utoipa::path(get, path = "/docs/swagger-ui.css", tag = "ui", operation_id = "docs_style",
    responses((status = 200, description = "Swagger UI's style sheet", content_type = "text/css")))]
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}
