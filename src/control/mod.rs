//! The control socket: how `banjo status`, `ban`, `unban`, `reload` and
//! `stats` talk to the running daemon.
//!
//! One request per connection, one JSON object per line each way. The
//! daemon answers inside its poll loop, so a request sees exactly the
//! state the pipeline has, with no locks. Who may ask what is decided by
//! the peer's credentials (SO_PEERCRED): root may do everything; members
//! of the configured `socket_group` may only read (`status`, `stats`).

mod client;
mod server;

pub use client::request;
pub use server::{Peer, Server};

use serde::{Deserialize, Serialize};

/// Version of the protocol, sent in every response.
pub const PROTOCOL: u32 = 1;

/// A request to the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// Counts per jail; with `jail`, also that jail's banned addresses.
    Status {
        /// One jail, or every jail.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        jail: Option<String>,
    },
    /// Bans addresses by hand.
    Ban {
        /// The jail whose sets get the addresses.
        jail: String,
        /// The addresses.
        ips: Vec<String>,
        /// A duration (`1h`, `-1`), instead of the jail's bantime.
        #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
        duration: Option<String>,
    },
    /// Lifts bans by hand.
    Unban {
        /// The addresses.
        ips: Vec<String>,
        /// Only in this jail; every jail when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        jail: Option<String>,
    },
    /// Re-reads the configuration (as SIGHUP does), answering with the
    /// error if it is refused.
    Reload,
    /// Counters since start.
    Stats,
}

impl Request {
    /// Whether the request changes nothing (allowed for `socket_group`).
    pub fn is_read_only(&self) -> bool {
        matches!(self, Request::Status { .. } | Request::Stats)
    }
}

/// The daemon's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// [`PROTOCOL`].
    pub protocol: u32,
    /// Whether the request succeeded.
    pub ok: bool,
    /// Why not, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The result, when `ok` is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl Response {
    /// A success carrying `data`.
    pub fn ok(data: serde_json::Value) -> Response {
        Response {
            protocol: PROTOCOL,
            ok: true,
            error: None,
            data: Some(data),
        }
    }

    /// A failure.
    pub fn error(message: impl Into<String>) -> Response {
        Response {
            protocol: PROTOCOL,
            ok: false,
            error: Some(message.into()),
            data: None,
        }
    }
}

/// A control-socket failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be created or reached.
    #[error("{path}: {what}: {source}")]
    Socket {
        /// The socket path.
        path: std::path::PathBuf,
        /// The step.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The other side sent something that is not the protocol.
    #[error("bad message on the control socket: {0}")]
    Protocol(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_stable_json() {
        let r = Request::Ban {
            jail: "postfix".into(),
            ips: vec!["192.0.2.1".into()],
            duration: Some("1h".into()),
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"command":"ban","jail":"postfix","ips":["192.0.2.1"],"for":"1h"}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        assert_eq!(
            serde_json::to_string(&Request::Status { jail: None }).unwrap(),
            r#"{"command":"status"}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"command":"shutdown"}"#).is_err());
        assert!(Request::Stats.is_read_only());
        assert!(!Request::Reload.is_read_only());
    }
}
