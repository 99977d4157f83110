//! The page shell every page shares, and the error page.

use axum::http::StatusCode;
use axum::response::Html;
use maud::{DOCTYPE, Markup, html};

use super::assets;
use super::session::Viewer;

/// A whole page: `title` in the tab, `viewer` in the header (with sign-out), `body` in main.
pub fn page(title: &str, viewer: Option<&Viewer>, body: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · Kodel" }
                    link rel="stylesheet" href=(assets::url("app.css"));
                    script type="module" src=(assets::url("app.js")) {}
                }
                body {
                    header.top {
                        a.brand href="/" { "Kodel" }
                        @if let Some(v) = viewer {
                            span.who { (v.user.email) }
                            form method="post" action="/logout" {
                                input type="hidden" name="csrf" value=(v.csrf());
                                button.link type="submit" { "Sign out" }
                            }
                        }
                    }
                    main { (body) }
                }
            }
        }
        .into_string(),
    )
}

pub fn error_page(status: StatusCode, message: &str) -> Html<String> {
    page(
        status.canonical_reason().unwrap_or("Error"),
        None,
        html! {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("Error")) }
            p.error role="alert" { (message) }
            p { a href="/" { "Back to your boards" } }
        },
    )
}
