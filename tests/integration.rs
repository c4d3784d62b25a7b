//! banjo's one integration-test binary.
//!
//! Tests that need root (network namespaces, nftables, journal files) print
//! why they skip when run without it. Every nftables change happens inside
//! a network namespace the test creates; the host's firewall is never
//! touched.

// A test binary: a panic is the failure report, helpers need no docs.
#![allow(clippy::unwrap_used, clippy::new_without_default, missing_docs)]

mod util;

mod check;
mod config;
mod conformance;
mod control;
mod daemon;
mod journal;
mod package;
mod postfix;
