//! HTTP/1.1 for the API: a sans-IO request parser ([`request`]), responses ([`response`]) and
//! the keep-alive connection loop ([`connection`]).

pub mod body_budget;
pub mod connection;
pub mod request;
pub mod response;

pub use body_budget::{BodyBudget, BodyPermit};
pub use connection::{serve, Handler, Timeouts};
pub use request::{Limits, Progress, Request, RequestHead, RequestReader};
pub use response::Response;
