//! The HTTP dialects Ringcast speaks, one module each. They all run behind the same request
//! pipeline (`crate::api`): routing, app lookup, authentication, rate limits
//! (`crate::ratelimit`), body limits (`crate::http`) and error rendering (`crate::error`); a
//! dialect only validates its own request shapes and renders its own answers.
//!
//! | module | who speaks it | paths | credential |
//! |---|---|---|---|
//! | [`pusher`] | Pusher server SDKs | `/apps/{id}/events`, `/batch_events`, `/channels...`, `/users/{u}/terminate_connections` | Pusher signature |
//! | [`lattestream`] | LatteStream's REST clients | `/events`, `/batch_events`, `/apps/token`, `/auth`, `/channels` at the API root | `lsk_` API key (body `api_key`, `Bearer`, or `?api_key=` on GET) |
//! | [`relay`] | the self-hosted relay ("seed") | the same paths with other shapes, `/apps/{id}/events/batch`, `/apps/{id}/auth` | `Bearer <app secret>` |
//!
//! | [`sse`] | AltoHost's SSE clients (`EventSource`) | `GET /apps/{id}/stream?channels=` (the stream itself, in the engine: `engine/src/sse.rs`) | none for public channels; an access token (`?token=`) for private ones |
//! | [`user_socket`] | alrt's user-notification clients | `/apps/{id}/users/{user}/token`, `/apps/{id}/users/{user}/events` (HTTP); `GET /ws?token=` (the socket itself, in the engine: `engine/src/user_socket.rs`) | Pusher signature or `Bearer <app secret>`; the socket: a user token |
//!
//! See docs/api.md for every dialect's requests and answers.

pub mod lattestream;
pub mod pusher;
pub mod relay;
pub mod sse;
pub mod user_socket;
