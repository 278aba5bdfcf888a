//! The one place routes are registered: [`Routes`] adds each to its axum router and
//! records it, with the access it needs, in a table. The router's middleware and the
//! OpenAPI document's security both follow that access, and a test compares the table
//! with the document both ways, so a route cannot be added without being documented.

use axum::handler::Handler;
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Router;

use super::AppState;
use crate::config::Scope;
use crate::operations;

/// The HTTP methods the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
        }
    }

    fn filter(self) -> MethodFilter {
        match self {
            Self::Get => MethodFilter::GET,
            Self::Post => MethodFilter::POST,
            Self::Put => MethodFilter::PUT,
            Self::Delete => MethodFilter::DELETE,
        }
    }
}

impl From<operations::Method> for Method {
    fn from(method: operations::Method) -> Self {
        match method {
            operations::Method::Post => Self::Post,
            operations::Method::Put => Self::Put,
        }
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token.
    Open,
    /// A bearer token with this scope.
    Scope(Scope),
}

impl Access {
    /// The scope's name as tokens carry it in the config.
    pub fn scope_name(self) -> Option<&'static str> {
        match self {
            Self::Open => None,
            Self::Scope(scope) => Some(scope.name()),
        }
    }
}

/// One registered route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: Method,
    /// In axum's and OpenAPI's common syntax: `/raw_data_package/{id}/finalize`.
    pub path: &'static str,
    pub access: Access,
}

/// Routes of one access, and the table of what was registered.
pub struct Routes {
    pub(super) router: Router<AppState>,
    pub(super) access: Access,
    /// Whether the handlers check the token themselves (`/ws/events`, which also takes it
    /// as a subprotocol); otherwise the router puts the access's middleware in front.
    pub(super) checked_by_handler: bool,
    table: Vec<Route>,
}

impl Routes {
    pub fn new(access: Access) -> Self {
        Self {
            router: Router::new(),
            access,
            checked_by_handler: false,
            table: Vec::new(),
        }
    }

    /// Routes whose handlers check `access` themselves.
    pub fn checked_by_handler(access: Access) -> Self {
        Self {
            checked_by_handler: true,
            ..Self::new(access)
        }
    }

    /// `handler` answers `method` at `path`.
    pub fn add<H, T>(self, method: Method, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.add_method_router(method, path, on(method.filter(), handler))
    }

    pub fn get<H, T>(self, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.add(Method::Get, path, handler)
    }

    pub fn post<H, T>(self, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.add(Method::Post, path, handler)
    }

    pub fn delete<H, T>(self, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.add(Method::Delete, path, handler)
    }

    /// `route` must answer `method` alone (as [`on`] with its filter does).
    pub fn add_method_router(
        mut self,
        method: Method,
        path: &'static str,
        route: MethodRouter<AppState>,
    ) -> Self {
        self.router = self.router.route(path, route);
        self.table.push(Route {
            method,
            path,
            access: self.access,
        });
        self
    }

    pub fn table(&self) -> &[Route] {
        &self.table
    }
}
