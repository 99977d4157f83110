//! `/`: the viewer's orgs and their projects, to pick a board.

use axum::extract::State;
use axum::response::Html;
use maud::html;

use super::session::Viewer;
use super::{WebResult, layout};
use crate::AppState;
use crate::auth::Auth;
use crate::routes::{orgs, projects};

pub async fn page(State(state): State<AppState>, viewer: Viewer) -> WebResult<Html<String>> {
    let auth = Auth { user: viewer.user.clone(), session: viewer.credential.session() };
    let axum::Json(orgs) = orgs::list(State(state.clone()), auth, crate::json::ApiQuery(Default::default())).await?;
    let mut boards = Vec::new();
    for org in orgs.data {
        let t = viewer.tenant(&state, &org.slug).await?;
        let axum::Json(list) = projects::list(t).await?;
        boards.push((org, list.data));
    }
    Ok(layout::page(
        "Boards",
        Some(&viewer),
        html! {
            h1 { "Your boards" }
            @if boards.is_empty() {
                p { "You are not a member of any organization yet. Create one with " code { "kodel org create" } " or ask an owner to add you." }
            }
            @for (org, projects) in &boards {
                section.org {
                    h2 { (org.name) " " span.dim { (org.slug) } }
                    @if projects.is_empty() { p.dim { "No projects you can see." } }
                    ul.projects {
                        @for p in projects {
                            li { a href={ "/o/" (org.slug) "/p/" (p.key) } { strong { (p.key) } " " (p.name) } }
                        }
                    }
                }
            }
        },
    ))
}
