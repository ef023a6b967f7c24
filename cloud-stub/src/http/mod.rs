//! The HTTP API ([`api`]) over the operations, its own accept loop with timeouts
//! and connection caps ([`listener`]), and its bearer tokens ([`auth`]). The only
//! layer that speaks in status codes: [`error`] maps the operations' error kinds to them.

pub mod api;
pub mod auth;
pub mod error;
pub mod listener;
