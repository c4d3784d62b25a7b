//! banjo's one integration-test binary.
//!
//! Tests that need root (network namespaces, nftables, journal files) print
//! why they skip when run without it. Every nftables change happens inside
//! a network namespace the test creates; the host's firewall is never
//! touched.

mod util;

mod config;
mod daemon;
