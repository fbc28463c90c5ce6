//! Hooks: questions the hub asks the application about a connection, apart from relaying its
//! frames. Each worker thread starts its own (an `awc` client is `!Send`).
//!
//! - [`connect`]: a route's `accept_url`, asked before the upgrade: admit or refuse.
//! - [`authorize`]: `[authorization]`, asked before a connection joins channels.
//!
//! Both call the application through [`crate::backend::callout`].

pub mod authorize;
pub mod connect;
